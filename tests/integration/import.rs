//! `switchyard import`: the nginx examples in `config/examples/` import to the TOML committed
//! beside them, and those configs pass `check` and serve real MCP sessions; untranslated
//! directives are listed; malformed nginx input gets `FILE:LINE`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard::config::LoadedConfig;
use switchyard::control::server::Proxy;
use switchyard::tools::backend::BackendArgs;
use tokio_util::sync::CancellationToken;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples")
}

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn scratch(test: &str) -> TempDir {
    TempDir::new(&format!("import-{test}"))
}

#[test]
fn examples_import_to_the_committed_toml_and_list_what_they_leave_out() {
    for (name, untranslated) in [
        (
            "mcp-guide",
            &["worker_processes", "X-Real-IP", "proxy_send_timeout"][..],
        ),
        ("mcp-guide-balanced", &["events", "X-Real-IP"][..]),
        (
            "multi-service",
            &["gzip on", "access_log", "location ~"][..],
        ),
    ] {
        let nginx = examples().join(format!("{name}.nginx.conf"));
        let (code, stdout, stderr) = switchyard(&["import", nginx.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {stderr}");
        let committed = std::fs::read_to_string(examples().join(format!("{name}.toml"))).unwrap();
        assert_eq!(
            stdout, committed,
            "{name}: regenerate config/examples/{name}.toml"
        );
        for directive in untranslated {
            assert!(
                stderr.contains(directive),
                "{name}: {directive} not listed: {stderr}"
            );
            assert!(
                stdout.contains(directive),
                "{name}: {directive} not in the header"
            );
        }
    }
}

#[test]
fn malformed_nginx_input_names_file_and_line() {
    let dir = scratch("malformed");
    for (text, expected) in [
        (
            "http {\n    server {\n        listen 80;\n",
            "broken.conf:2: unexpected end of file",
        ),
        (
            "http {\n    listen 80\n}\n",
            "broken.conf:3: unexpected \"}\"",
        ),
        (
            "http {\n  include missing/*.conf;\n  include nowhere.conf;\n}\n",
            "broken.conf:3: include `nowhere.conf`",
        ),
        (
            "http {\n  server_name \"open;\n}\n",
            "broken.conf:2: unterminated",
        ),
    ] {
        let path = dir.join("broken.conf");
        std::fs::write(&path, text).unwrap();
        let (code, stdout, stderr) = switchyard(&["import", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{text:?}");
        assert!(stdout.is_empty());
        assert!(stderr.starts_with(expected), "{text:?}: {stderr}");
    }
}

/// A reference backend that accepts `mcp.example.com` as its Host (the guide sends `$host`).
async fn reference_backend(name: &str, stop: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut args = BackendArgs::new(name);
    args.allowed_hosts = vec!["mcp.example.com".into()];
    tokio::spawn(switchyard::tools::backend::run(
        listener,
        args,
        stop.clone(),
    ));
    address
}

/// One JSON-RPC answer from a response that is either JSON or an SSE stream carrying it.
async fn answer(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.starts_with('{'))
        .unwrap_or(&text);
    serde_json::from_str(json).unwrap()
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "import-test", "version": "1"}}})
}

fn server_status(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "server_status", "arguments": {}}})
}

/// A Streamable HTTP session through `base`: initialize, then three calls; the owner's name.
async fn streamable(client: &reqwest::Client, base: &str) -> String {
    let post = |body: Value, session: Option<String>| {
        let mut request = client
            .post(format!("{base}/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let response = post(initialize(1), None).await.unwrap();
    assert_eq!(response.status(), 200);
    let session = session_of(&response);
    drop(response);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        post(initialized, Some(session.clone()))
            .await
            .unwrap()
            .status(),
        202
    );
    let mut owners = std::collections::HashSet::new();
    for id in 2..5 {
        let result = answer(
            post(server_status(id), Some(session.clone()))
                .await
                .unwrap(),
        )
        .await;
        let status: Value =
            serde_json::from_str(result["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
        owners.insert(status["name"].as_str().unwrap().to_string());
    }
    assert_eq!(owners.len(), 1, "{owners:?}");
    owners.into_iter().next().unwrap()
}

/// A legacy HTTP+SSE session through `base`: the stream on `/sse`, the POSTs on the endpoint it
/// names; the owner's name.
async fn legacy(client: &reqwest::Client, base: &str) -> String {
    let session = open_legacy(client, base).await;
    let mut events = session.events;
    let post_url = reqwest::Url::parse(base)
        .unwrap()
        .join(&session.endpoint)
        .unwrap();
    let mut owner = None;
    for (id, message) in [(1, initialize(1)), (2, server_status(2))] {
        let accepted = client
            .post(post_url.clone())
            .json(&message)
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status(), 202);
        let mut buffer = String::new();
        let reply = loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            let found = buffer
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|v| v["id"] == id);
            if let Some(found) = found {
                break found;
            }
        };
        if id == 2 {
            let status: Value =
                serde_json::from_str(reply["result"]["content"][0]["text"].as_str().unwrap())
                    .unwrap();
            owner = Some(status["name"].as_str().unwrap().to_string());
        }
    }
    owner.unwrap()
}

/// The imported MCP-guide layouts, pointed at three reference backends on loopback, pass
/// `check` and serve Streamable HTTP and legacy sessions over TLS; port 80 redirects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_guide_imports_serve_real_sessions() {
    let stop = CancellationToken::new();
    let mut backends = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        backends.push(reference_backend(name, &stop).await);
    }
    for layout in ["mcp-guide", "mcp-guide-balanced"] {
        let mut toml = std::fs::read_to_string(examples().join(format!("{layout}.toml"))).unwrap();
        for (index, address) in backends.iter().enumerate() {
            toml = toml.replace(&format!("127.0.0.1:300{}", index + 1), &address.to_string());
        }
        let toml = toml
            .replace("0.0.0.0:443", "127.0.0.1:0")
            .replace("0.0.0.0:80", "127.0.0.1:0");
        let dir = scratch(layout);
        std::fs::create_dir_all(dir.join("ssl")).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["mcp.example.com".into()]).unwrap();
        let pem = certified.cert.pem();
        std::fs::write(dir.join("ssl/mcp.example.com.crt"), &pem).unwrap();
        std::fs::write(
            dir.join("ssl/mcp.example.com.key"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        let path = dir.join("switchyard.toml");
        std::fs::write(&path, &toml).unwrap();

        let (code, stdout, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{layout}: {stderr}");
        assert!(
            stdout.contains("route     mcp.example.com/sse: mcp.example.com, prefix /sse"),
            "{stdout}"
        );

        let shutdown = CancellationToken::new();
        let proxy = Proxy::start_loaded(LoadedConfig::load(&path).unwrap(), shutdown.clone())
            .await
            .unwrap();
        let (redirect, https) = (proxy.listeners()[0], proxy.listeners()[1]);
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let client = reqwest::Client::builder()
            .no_proxy()
            .resolve("mcp.example.com", loopback)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let base = format!("https://mcp.example.com:{}", https.port());
        let names = ["node-1", "node-2", "node-3"];
        for _ in 0..3 {
            let owner = streamable(&client, &base).await;
            assert!(names.contains(&owner.as_str()), "{owner}");
            let owner = legacy(&client, &base).await;
            assert!(names.contains(&owner.as_str()), "{owner}");
        }
        let moved = client
            .get(format!(
                "http://mcp.example.com:{}/mcp?x=1",
                redirect.port()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(moved.status(), 301);
        assert_eq!(
            moved.headers()["location"],
            "https://mcp.example.com/mcp?x=1"
        );
        shutdown.cancel();
        proxy.wait().await;
    }
    stop.cancel();
}

/// The multi-service example: each location's route reaches its own pool, with its Host policy
/// and prefix handling; the included file's service too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_service_import_routes_each_service() {
    let mut toml = std::fs::read_to_string(examples().join("multi-service.toml")).unwrap();
    let mut backends = Vec::new();
    for port in [3101, 3102, 3201, 3202, 3203, 3301, 3401] {
        let backend = TestBackend::start(&format!("b{port}")).await;
        toml = toml.replace(&format!("127.0.0.1:{port}"), &backend.address.to_string());
        backends.push(backend);
    }
    let proxy = TestProxy::start(&toml.replace("0.0.0.0:8080", "127.0.0.1:0")).await;
    let port = proxy.address.port();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let client = reqwest::Client::builder()
        .no_proxy()
        .resolve("tools.example.com", loopback)
        .resolve("notion.example.com", loopback)
        .resolve("eu.slack.example.com", loopback)
        .build()
        .unwrap();
    let tools = format!("http://tools.example.com:{port}");
    for (path, pool) in [
        ("/github", ["b3101", "b3102"]),
        ("/jira", ["b3201", "b3202"]),
    ] {
        for _ in 0..4 {
            let session = new_session(&client, &format!("{tools}{path}/mcp")).await;
            let owner = session.split('-').next().unwrap();
            assert!(pool.contains(&owner), "{path}: {owner}");
        }
    }
    let github = client
        .get(format!("{tools}/github/name"))
        .send()
        .await
        .unwrap();
    assert_eq!(github.headers()["x-accel-buffering"], "no");
    let notion: Value = client
        .get(format!("http://notion.example.com:{port}/headers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(notion["host"], "notion.internal");
    let slack = get_text_with(&client, &format!("http://eu.slack.example.com:{port}/name")).await;
    assert_eq!(slack, "b3401");
    let lost = client
        .get(format!("{tools}/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        lost.status(),
        404,
        "tools.example.com has routes only for its two prefixes"
    );
}

async fn get_text_with(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}
