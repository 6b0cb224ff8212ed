//! `switchyard demo` as a user runs it: a child process that starts the fleet and the proxy,
//! serves MCP sessions (over HTTPS too, when the build has TLS listeners), and stops on a signal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

struct RunningDemo {
    child: KillOnDrop,
    /// Its stderr, line by line: the log.
    logs: std::sync::mpsc::Receiver<String>,
    plain: String,
    https: (String, String),
    admin: String,
    dir: TempDir,
}

fn start_demo(tag: &str) -> RunningDemo {
    let dir = TempDir::new(&format!("demo-test-{tag}"));
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
        ])
        .args(["--admin", "127.0.0.1:0", "--dir", dir.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
    let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
    let (log_tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let (mut plain, mut https, mut admin) = (None, None, None);
    loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("demo output");
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.contains("MCP (HTTP)") {
            plain = Some(words[2].to_string());
        } else if line.contains("MCP (HTTPS)") {
            let cert = line
                .split("self-signed: ")
                .nth(1)
                .unwrap()
                .trim_end_matches(')');
            https = Some((words[2].to_string(), cert.to_string()));
        } else if line.trim_start().starts_with("Admin") {
            admin = Some(words[1].trim_end_matches("/status").to_string());
        } else if line.contains("Press Ctrl-C") {
            break;
        }
    }
    RunningDemo {
        child,
        logs,
        plain: plain.expect("an HTTP URL"),
        https: https.expect("an HTTPS URL"),
        admin: admin.expect("an admin URL"),
        dir,
    }
}

/// One SDK-client session; returns the backend named by `server_status`.
async fn session(client: reqwest::Client, url: &str) -> String {
    let config = StreamableHttpClientTransportConfig::with_uri(url);
    let transport = StreamableHttpClientTransport::with_client(client, config);
    let mcp = ().serve(transport).await.unwrap();
    let mut echo = serde_json::Map::new();
    echo.insert("message".into(), "demo".into());
    let echoed = mcp
        .peer()
        .call_tool(CallToolRequestParams::new("echo").with_arguments(echo))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&echoed).unwrap()["content"][0]["text"],
        "demo"
    );
    let status = mcp
        .peer()
        .call_tool(CallToolRequestParams::new("server_status"))
        .await
        .unwrap();
    let text = serde_json::to_value(&status).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    mcp.cancel().await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    status["name"].as_str().unwrap().to_string()
}

async fn stops_on(signal: &str) {
    let mut demo = start_demo(signal);
    // The demo logs (proxy and backends) at info level, as `run` does.
    let listening = demo
        .logs
        .recv_timeout(Duration::from_secs(10))
        .expect("the demo logs");
    assert!(listening.contains("listening"), "{listening}");
    let owner = session(client(), &demo.plain).await;
    assert!(
        owner.starts_with("blue-"),
        "new sessions go to blue first: {owner}"
    );
    {
        let (url, cert) = &demo.https;
        let pem = std::fs::read(cert).unwrap();
        let tls = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        assert!(url.starts_with("https://localhost:"), "{url}");
        assert!(session(tls, url).await.starts_with("blue-"));
    }
    // The written config is the live one: flipping it and reloading moves new sessions to green.
    let config_path = demo.dir.join("switchyard.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace("active = \"blue\"", "active = \"green\""),
    )
    .unwrap();
    let reloaded = client()
        .post(format!("{}/reload", demo.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.status(), 200);
    assert!(session(client(), &demo.plain).await.starts_with("green-"));

    let pid = demo.child.0.as_ref().unwrap().id();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut process = demo.child.0.take().unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || process.wait().unwrap()),
    )
    .await
    .expect("the demo stops within the drain time")
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_mcp_and_stops_on_sigint() {
    stops_on("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_mcp_and_stops_on_sigterm() {
    stops_on("TERM").await;
}
