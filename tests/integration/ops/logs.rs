//! The proxy's logs, from the binary run as a child process: JSON access lines carry their
//! fields and never a raw session id, and the log level comes from the config unless `RUST_LOG`
//! overrides it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::write_config;
use crate::support::*;

/// The proxy as a child process logging JSON; its stderr lines arrive parsed on the channel.
struct LoggingProxy {
    child: KillOnDrop,
    lines: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    address: String,
}

impl LoggingProxy {
    async fn start(config: &Path, rust_log: Option<&str>) -> LoggingProxy {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .args([
                "--log-format",
                "json",
                "run",
                "--config",
                config.to_str().unwrap(),
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let mut child = KillOnDrop(Some(command.spawn().unwrap()));
        let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let parsed = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(
                    |e| serde_json::json!({ "unparsed": line, "error": e.to_string() }),
                );
                if tx.send(parsed).is_err() {
                    return;
                }
            }
        });
        let address = loop {
            let line = next_line(&mut lines).await.expect("proxy starts");
            assert!(line.get("unparsed").is_none(), "not JSON: {line}");
            if line["message"] == "listening" {
                break line["address"].as_str().unwrap().to_string();
            }
        };
        LoggingProxy {
            child,
            lines,
            address,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops the proxy with SIGTERM and returns every line it wrote from now on.
    async fn stop(mut self) -> Vec<serde_json::Value> {
        let pid = self.child.0.as_ref().unwrap().id();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let mut rest = Vec::new();
        while let Some(line) = next_line(&mut self.lines).await {
            rest.push(line);
        }
        rest
    }
}

async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) -> Option<serde_json::Value> {
    tokio::time::timeout(Duration::from_secs(20), lines.recv())
        .await
        .expect("a log line or the end of the log in time")
}

fn logging_config(backend: &TestBackend) -> String {
    config_for(
        &[("blue", &[backend])],
        "\"blue\"",
        "[log]\nlevel = \"info,access=off\"\n[timeouts]\ndrain = \"1s\"\n",
    )
}

/// Exercises the proxy: a session, a call in it, an SSE stream. Returns the raw session id.
async fn traffic(proxy: &LoggingProxy) -> String {
    let client = client();
    let session = new_session(&client, &proxy.url("/mcp")).await;
    let call = post_in_session(&client, &proxy.url("/mcp"), &session).await;
    assert_eq!(call.status(), 200);
    call.bytes().await.unwrap();
    let stream = get_sse(&client, &proxy.url("/ticks?count=2&every_ms=10")).await;
    stream.bytes().await.unwrap();
    session
}

#[tokio::test]
async fn json_access_log_lines_carry_the_fields() {
    let backend = TestBackend::start("b1").await;
    let config = write_config("json-log", &logging_config(&backend));
    // RUST_LOG overrides the config's `access=off`.
    let mut proxy = LoggingProxy::start(&config, Some("info")).await;
    let session = traffic(&proxy).await;
    let tag = switchyard::mcp::session::session_tag(&session);
    let mut access = Vec::new();
    while access.len() < 3 {
        let line = next_line(&mut proxy.lines).await.expect("access lines");
        assert!(line.get("unparsed").is_none(), "not JSON: {line}");
        assert!(
            !line.to_string().contains(&session),
            "raw session id logged: {line}"
        );
        if line["target"] == "access" {
            access.push(line);
        }
    }
    let backend_address = backend.address.to_string();
    for line in &access {
        for field in [
            "method",
            "path",
            "status",
            "backend",
            "pool",
            "duration_us",
            "bytes",
            "outcome",
            "request_id",
            "client",
            "user_agent",
        ] {
            assert!(line.get(field).is_some(), "no {field} in {line}");
        }
        assert_eq!(line["backend"], backend_address.as_str(), "{line}");
        assert_eq!(line["pool"], "blue", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert_eq!(line["user_agent"], "switchyard-tests", "{line}");
        // Whole microseconds: an integer, never a float such as 1.5274329999999998.
        assert!(line["duration_us"].is_u64(), "{line}");
        assert!(line.get("duration_ms").is_none(), "{line}");
        assert!(line["bytes"].as_u64().unwrap() > 0, "{line}");
    }
    assert_eq!(access[0]["method"], "POST");
    assert_eq!(access[0]["path"], "/mcp");
    assert_eq!(
        access[0]["session"],
        tag.as_str(),
        "minted session is tagged"
    );
    assert_eq!(access[1]["session"], tag.as_str());
    assert_eq!(access[2]["path"], "/ticks");
    assert_eq!(access[2]["class"], "sse");
    assert_eq!(access[2]["outcome"], "complete");
    let rest = proxy.stop().await;
    assert!(rest.iter().all(|l| !l.to_string().contains(&session)));
}

#[tokio::test]
async fn log_level_comes_from_the_config() {
    let backend = TestBackend::start("b1").await;
    let config = write_config("log-level", &logging_config(&backend));
    let proxy = LoggingProxy::start(&config, None).await;
    traffic(&proxy).await;
    let rest = proxy.stop().await;
    assert!(rest.iter().any(|l| l["message"] == "stopped"), "{rest:?}");
    assert!(
        rest.iter().all(|l| l["target"] != "access"),
        "access=off in [log] level: {rest:?}"
    );
}

/// With `[policy]`, each access line names the MCP call it carried.
#[tokio::test]
async fn access_lines_name_the_mcp_method_and_tool_with_policy() {
    let backend = TestBackend::start("b1").await;
    let text = config_for(&[("blue", &[&backend])], "\"blue\"", "[policy]\n");
    let config = write_config("mcp-log", &text);
    let mut proxy = LoggingProxy::start(&config, Some("info")).await;
    let body = crate::policy::tool_call(1, "echo").to_string();
    let reply = client()
        .post(proxy.url("/echo"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let line = loop {
        let line = next_line(&mut proxy.lines).await.expect("an access line");
        if line["target"] == "access" {
            break line;
        }
    };
    assert_eq!(line["mcp_method"], "tools/call", "{line}");
    assert_eq!(line["mcp_tool"], "echo", "{line}");
    assert_eq!(line["path"], "/echo", "{line}");
    // Stopped as a service manager would: a killed proxy leaves its upgrade socket in /tmp.
    proxy.stop().await;
}
