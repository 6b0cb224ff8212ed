//! The reference backend as a process: draining on shutdown, its operational and bench routes,
//! the `switchyard backend` CLI, and stateless mode.

use std::time::{Duration, Instant};

use super::{LegacySession, RefBackend, initialize_body, post_mcp, raw_session};
use crate::support::*;
use serde_json::{Value, json};
use switchyard::tools::backend::BackendArgs;

// ---------------------------------------------------------------- draining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_sessions_and_lets_in_flight_calls_finish() {
    let mut args = BackendArgs::new("drainer");
    args.metrics = true;
    args.drain_timeout = Duration::from_secs(5);
    let mut backend = RefBackend::start_with(args).await;
    let url = backend.url("/mcp");
    assert_eq!(
        client()
            .get(backend.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let mut legacy = LegacySession::open(&backend.url("")).await;
    legacy.initialize().await;
    let sleeping = tokio::spawn(async move {
        let answer = legacy.call("sleep", json!({"ms": 800})).await;
        (answer, Instant::now())
    });
    eventually(
        "the sleep call is in flight",
        Duration::from_secs(5),
        async || (backend.metric("mcp_backend_tool_calls_in_flight").await == 1).then_some(()),
    )
    .await;

    let stopped_at = Instant::now();
    backend.shutdown.cancel();
    eventually("readyz turns 503", Duration::from_secs(2), async || {
        let status = client()
            .get(backend.url("/readyz"))
            .send()
            .await
            .ok()?
            .status();
        (status == 503).then_some(())
    })
    .await;
    let refused = post_mcp(&url, None, &initialize_body(1)).await;
    assert_eq!(refused.status(), 503);

    let (answer, answered_at) = sleeping.await.unwrap();
    assert_eq!(answer, "slept 800 ms");
    let task = backend.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(6), task)
        .await
        .expect("exits within the drain timeout")
        .unwrap();
    assert!(answered_at > stopped_at);
}

// ---------------------------------------------------------------- operations and bench routes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_and_bench_routes() {
    let backend = RefBackend::start("ops").await;
    let healthz = client().get(backend.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    let metrics = client().get(backend.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    // The declared type is the format of the body: OpenMetrics (`# EOF`, `_total` samples of
    // counter families declared without it), which the strict parser checks line by line.
    let content_type = metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = metrics.text().await.unwrap();
    let samples = crate::ops::parse_exposition(&text);
    assert!(
        text.contains("# TYPE mcp_backend_requests counter"),
        "{text}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "mcp_backend_requests_total")
    );
    assert!(text.contains("mcp_backend_open_sessions 0"), "{text}");

    let echoed = client()
        .post(backend.url("/bench/echo"))
        .body(r#"{"ping":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.headers()["content-type"], "application/json");
    assert_eq!(echoed.text().await.unwrap(), r#"{"ping":1}"#);

    let stream = client()
        .get(backend.url("/bench/sse?every_ms=20&count=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(Duration::from_secs(5), stream.text())
        .await
        .unwrap()
        .unwrap();
    let stamps: Vec<u128> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(stamps.len(), 3, "{body}");
    assert!(
        stamps.windows(2).all(|w| w[1] >= w[0] + 15_000),
        "{stamps:?}"
    );
    let missing = client().get(backend.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// Without `--metrics` and `--bench-routes` (the default), a client the proxy forwards reaches
/// only the MCP transports and health: the counters and the bench routes answer `404`.
#[tokio::test]
async fn metrics_and_bench_routes_are_off_by_default() {
    let backend = RefBackend::start_with(BackendArgs::new("plain")).await;
    let config = config_for_addresses(&[("blue", &[backend.address])], "\"blue\"", "");
    let proxy = TestProxy::start(&config).await;
    let paths = [
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::POST, "/bench/echo"),
        (reqwest::Method::GET, "/bench/sse?every_ms=20&count=1"),
    ];
    for base in [backend.url(""), proxy.url("")] {
        for (method, path) in &paths {
            let response = client()
                .request(method.clone(), format!("{base}{path}"))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{base}{path}");
        }
    }
    let health = client().get(backend.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(!raw_session(&backend.url("/mcp")).await.is_empty());
}

// ---------------------------------------------------------------- the CLI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cli_prints_its_address_ignores_sighup_and_drains_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["backend", "--listen", "127.0.0.1:0", "--name", "cli-1"])
        .args(["--drain-timeout", "3s", "--metrics"])
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
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    // "listening on ADDRESS as NAME"
    let address = line.split_whitespace().nth(2).unwrap().to_string();
    assert!(line.trim_end().ends_with("as cli-1"), "{line}");
    let health = client()
        .get(format!("http://{address}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // `--metrics` was given, `--bench-routes` was not.
    let metrics = client()
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let bench = client()
        .post(format!("http://{address}/bench/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(bench.status(), 404);
    let session = raw_session(&format!("http://{address}/mcp")).await;
    assert!(!session.is_empty());

    // SIGHUP (a `kill -HUP` meant for the proxy, a closed terminal) is logged and ignored.
    let pid = child.0.as_ref().unwrap().id();
    let kill = |signal: &str| {
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    kill("-HUP");
    let ignored = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || {
            logs.iter().find(|line| line.contains("SIGHUP ignored"))
        }),
    )
    .await
    .expect("a log line about SIGHUP in time")
    .unwrap();
    assert!(ignored.is_some(), "the backend died on SIGHUP");
    assert!(child.0.as_mut().unwrap().try_wait().unwrap().is_none());
    let health = client()
        .get(format!("http://{address}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    kill("-TERM");
    let mut process = child.0.take().unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || process.wait().unwrap()),
    )
    .await
    .expect("exits within the drain timeout")
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------- stateless

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_mode_serves_without_sessions() {
    let mut args = BackendArgs::new("stateless");
    args.stateless = true;
    let backend = RefBackend::start_with(args).await;
    let url = backend.url("/mcp");
    let init = post_mcp(&url, None, &initialize_body(1)).await;
    assert_eq!(init.status(), 200);
    assert!(init.headers().get("mcp-session-id").is_none());
    let echo = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "alone"}}});
    let answer = post_mcp(&url, None, &echo).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "alone");
}
