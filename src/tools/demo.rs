//! `switchyard demo`: the whole system on one machine with one command — two blue and two green
//! reference backends, the proxy in front of them (plain HTTP, and HTTPS with a self-signed
//! certificate made at start), and a printed walk-through.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LoadedConfig};
use crate::control::server::Proxy;
use crate::tools::backend::{self, BackendArgs};

/// Command-line options of `switchyard demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Plain-HTTP listener of the proxy (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// HTTPS listener of the proxy (self-signed certificate; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub tls_listen: SocketAddr,
    /// Admin listener (/status, /metrics, POST /reload; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Where to write the generated config, certificate and key (default: a new temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a reference backend: {0}")]
    Backend(#[from] backend::BackendError),
    #[error("cannot make the self-signed certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the generated configuration is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start the proxy: {0}")]
    Proxy(#[from] crate::control::server::StartError),
    #[error("cannot find a free port on {address}: {source}")]
    Port {
        address: SocketAddr,
        source: std::io::Error,
    },
}

const FLEET: [(&str, &str); 4] = [
    ("blue", "blue-1"),
    ("blue", "blue-2"),
    ("green", "green-1"),
    ("green", "green-2"),
];

/// Runs the demo until `shutdown` is cancelled, then drains the proxy and stops the backends.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> Result<(), DemoError> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Write {
        path: dir.clone(),
        source,
    })?;

    let backends_stop = CancellationToken::new();
    let mut backends = tokio::task::JoinSet::new();
    let mut fleet = Vec::new();
    for (pool, name) in FLEET {
        let address = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| backend::BackendError::Bind { address, error })?;
        let bound = listener.local_addr().map_err(backend::BackendError::Io)?;
        fleet.push((pool, name, bound));
        backends.spawn(backend::run(
            listener,
            BackendArgs::new(name),
            backends_stop.clone(),
        ));
    }

    let (cert, key) = write_certificate(&dir)?;
    let listen = concrete(args.listen)?;
    let tls_listen = concrete(args.tls_listen)?;
    let admin = concrete(args.admin)?;
    let config_path = dir.join("switchyard.toml");
    let text = config_text(&fleet, listen, tls_listen, admin, &cert, &key);
    std::fs::write(&config_path, &text).map_err(|source| DemoError::Write {
        path: config_path.clone(),
        source,
    })?;
    let ready = LoadedConfig::from_config(Config::parse(&text, &config_path)?)?;
    let proxy = Proxy::start_loaded(ready, shutdown.clone()).await?;
    let listeners = proxy.listeners().to_vec();
    let admin = proxy.admin().unwrap_or(admin);
    println!(
        "{}",
        walkthrough(&fleet, &listeners, admin, &config_path, &cert)
    );

    proxy.wait().await;
    backends_stop.cancel();
    while let Some(joined) = backends.join_next().await {
        if let Ok(Err(error)) = joined {
            tracing::warn!(%error, "a demo backend stopped with an error");
        }
    }
    println!("switchyard demo stopped; files left in {}", dir.display());
    Ok(())
}

/// Port 0 becomes a free port now, because the config file must name real ports: listeners
/// cannot change on reload, and the demo's reload re-reads the file.
fn concrete(address: SocketAddr) -> Result<SocketAddr, DemoError> {
    if address.port() != 0 {
        return Ok(address);
    }
    std::net::TcpListener::bind(address)
        .and_then(|listener| listener.local_addr())
        .map_err(|source| DemoError::Port { address, source })
}

fn write_certificate(dir: &Path) -> Result<(PathBuf, PathBuf), DemoError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    for (path, pem) in [
        (&cert, certified.cert.pem()),
        (&key, certified.signing_key.serialize_pem()),
    ] {
        std::fs::write(path, pem).map_err(|source| DemoError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok((cert, key))
}

fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

fn config_text(
    fleet: &[(&str, &str, SocketAddr)],
    listen: SocketAddr,
    tls_listen: SocketAddr,
    admin: SocketAddr,
    cert: &Path,
    key: &Path,
) -> String {
    let mut text = String::from(
        "# Written by `switchyard demo`. To flip new work from blue to green, change `active`\n\
         # below and reload: curl -X POST http://ADMIN/reload\n\n",
    );
    let _ = writeln!(text, "[[listener]]\nbind = \"{listen}\"\n");
    let _ = writeln!(
        text,
        "[[listener]]\nbind = \"{tls_listen}\"\ntls = {{ cert = {}, key = {} }}\n",
        toml_string(cert),
        toml_string(key)
    );
    let _ = writeln!(text, "[admin]\nbind = \"{admin}\"\n");
    for pool in ["blue", "green"] {
        let members: Vec<String> = fleet
            .iter()
            .filter(|(p, _, _)| *p == pool)
            .map(|(_, name, address)| format!("\"{address}\", # {name}"))
            .collect();
        let _ = writeln!(
            text,
            "[pools.{pool}]\nbackends = [\n    {}\n]\n",
            members.join("\n    ")
        );
    }
    text.push_str("[routing]\nactive = \"blue\"\n\n[timeouts]\ndrain = \"5s\"\n");
    text
}

fn walkthrough(
    fleet: &[(&str, &str, SocketAddr)],
    listeners: &[SocketAddr],
    admin: SocketAddr,
    config: &Path,
    cert: &Path,
) -> String {
    let mut out =
        String::from("switchyard demo is running.\n\nBackends (reference MCP servers):\n");
    for (pool, name, address) in fleet {
        let _ = writeln!(out, "  {pool:<5} {name:<8} http://{address}/mcp");
    }
    let plain = listeners.first().copied();
    let _ = writeln!(out, "\nProxy:");
    if let Some(plain) = plain {
        let _ = writeln!(out, "  MCP (HTTP)   http://{plain}/mcp   (also /sse, /ws)");
    }
    let https = listeners.get(1).copied();
    match https {
        Some(https) => {
            let _ = writeln!(
                out,
                "  MCP (HTTPS)  https://localhost:{}/mcp   (self-signed: {})",
                https.port(),
                cert.display()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  (HTTPS listener not available in this build; certificate written to {})",
                cert.display()
            );
        }
    }
    let _ = writeln!(
        out,
        "  Admin        http://{admin}/status  /metrics  POST /reload"
    );
    let _ = writeln!(out, "  Config       {}", config.display());

    let (scheme, target, curl_tls) = match (https, plain) {
        (Some(https), _) => (
            "https",
            format!("localhost:{}", https.port()),
            format!(" --cacert {}", cert.display()),
        ),
        (None, Some(plain)) => ("http", plain.to_string(), String::new()),
        (None, None) => ("http", "127.0.0.1:8080".to_string(), String::new()),
    };
    let url = format!("{scheme}://{target}/mcp");
    let headers =
        "-H 'content-type: application/json' -H 'accept: application/json, text/event-stream'";
    let _ = writeln!(
        out,
        "\nTry an MCP session with curl:\n\n\
         \x20 # 1. initialize; the proxy hands back the session id\n\
         \x20 SID=$(curl -s{curl_tls} -D - -o /dev/null {url} {headers} \\\n\
         \x20   -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}' \\\n\
         \x20   | tr -d '\\r' | awk -F': ' 'tolower($1)==\"mcp-session-id\" {{print $2}}')\n\
         \x20 # 2. finish the handshake\n\
         \x20 curl -s{curl_tls} {url} {headers} -H \"mcp-session-id: $SID\" \\\n\
         \x20   -d '{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}}'\n\
         \x20 # 3. call echo, then server_status to see which backend owns the session\n\
         \x20 curl -s{curl_tls} {url} {headers} -H \"mcp-session-id: $SID\" \\\n\
         \x20   -d '{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":\"hello\"}}}}}}'\n\
         \x20 curl -s{curl_tls} {url} {headers} -H \"mcp-session-id: $SID\" \\\n\
         \x20   -d '{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{{\"name\":\"server_status\",\"arguments\":{{}}}}}}'\n"
    );
    let _ = writeln!(
        out,
        "Flip from blue to green: edit `active = \"blue\"` to `active = \"green\"` in\n\
         \x20 {}\n\
         and reload:  curl -X POST http://{admin}/reload\n\
         New sessions then go to green; the session above stays on its blue owner until it ends.\n\n\
         Press Ctrl-C to stop.",
        config.display()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_valid() {
        let dir = std::env::temp_dir().join(format!("switchyard-demo-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = write_certificate(&dir).unwrap();
        let fleet = [
            ("blue", "blue-1", "127.0.0.1:3001".parse().unwrap()),
            ("green", "green-1", "127.0.0.1:3101".parse().unwrap()),
        ];
        let text = config_text(
            &fleet,
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
            "127.0.0.1:9901".parse().unwrap(),
            &cert,
            &key,
        );
        let config = Config::parse(&text, Path::new("demo.toml")).unwrap();
        assert_eq!(config.listeners.len(), 2);
        assert!(config.listeners[1].tls.is_some());
        assert!(text.contains("active = \"blue\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
