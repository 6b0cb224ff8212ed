//! Which MCP calls a request makes, as metrics count them: from the body as it streams past, from
//! the `Mcp-Method`/`Mcp-Name` headers, from bodies split at every byte, batches, oversize and
//! malformed bodies (passed through untouched), and the header/body mismatch refused.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const CALLS: &str = "switchyard_mcp_calls_total";

async fn proxy_with(policy: &str) -> (TestBackend, TestProxy) {
    let backend = TestBackend::start("b").await;
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", policy);
    let proxy = TestProxy::start(&config).await;
    (backend, proxy)
}

/// POSTs to the echo route and checks the backend got the body byte for byte.
async fn echo(proxy: &TestProxy, body: &str, headers: &[(&str, &str)]) {
    let response = post(&proxy.url("/echo"), body, headers).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        body,
        "the body passes untouched"
    );
}

async fn calls(proxy: &TestProxy, method: &str, tool: &str) -> f64 {
    metric(proxy, CALLS, &[("method", method), ("tool", tool)]).await
}

#[tokio::test]
async fn calls_are_counted_by_method_and_tool() {
    let (_backend, proxy) = proxy_with("[policy]\nscan_limit = 512\nmax_tool_labels = 2\n").await;
    echo(&proxy, &tool_call(1, "echo").to_string(), &[]).await;
    let batch = json!([tool_call(2, "echo"), tool_call(3, "sleep"),
        {"jsonrpc": "2.0", "method": "notifications/initialized"}]);
    echo(&proxy, &batch.to_string(), &[]).await;
    // From the headers alone: the body is not read at all.
    echo(
        &proxy,
        "not even json",
        &[("mcp-method", "tools/call"), ("mcp-name", "countdown")],
    )
    .await;
    echo(&proxy, "{\"method\": \"tools/call\", oops", &[]).await;
    let oversize = format!("{{{}\"method\":\"tools/call\"}}", " ".repeat(600));
    echo(&proxy, &oversize, &[]).await;
    echo(&proxy, &json!({"method": "vendor/custom"}).to_string(), &[]).await;

    let counted = eventually("calls counted", Duration::from_secs(5), async || {
        let n = metric(&proxy, CALLS, &[]).await;
        (n >= 8.0).then_some(n)
    })
    .await;
    let samples = crate::ops::scrape(&proxy).await;
    let ours: Vec<_> = samples.iter().filter(|s| s.name == CALLS).collect();
    assert_eq!(counted, 8.0, "{ours:?}");
    assert_eq!(calls(&proxy, "tools/call", "echo").await, 2.0, "{ours:?}");
    assert_eq!(calls(&proxy, "tools/call", "sleep").await, 1.0);
    // Two tool labels at most: the third distinct name folds into `other`.
    assert_eq!(calls(&proxy, "tools/call", "other").await, 1.0);
    assert_eq!(
        calls(&proxy, "notifications/initialized", "").await,
        1.0,
        "{ours:?}"
    );
    // Malformed and past the scan limit: unknown, and still forwarded.
    assert_eq!(calls(&proxy, "unknown", "").await, 2.0);
    assert_eq!(
        calls(&proxy, "other", "").await,
        1.0,
        "methods outside MCP's fold"
    );
    let timed = metric(
        &proxy,
        "switchyard_mcp_call_duration_seconds_count",
        &[("method", "tools/call"), ("tool", "echo")],
    )
    .await;
    assert_eq!(timed, 2.0);
}

#[tokio::test]
async fn without_policy_no_call_is_counted() {
    let (_backend, proxy) = proxy_with("").await;
    echo(&proxy, &tool_call(1, "echo").to_string(), &[]).await;
    assert_eq!(metric(&proxy, CALLS, &[]).await, 0.0);
}

/// Sends `body` chunked in two chunks split at `at`, written apart; returns the status line.
async fn post_split(proxy: &TestProxy, body: &[u8], at: usize) -> String {
    let mut socket = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let head = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    for part in [&body[..at], &body[at..]] {
        if !part.is_empty() {
            let chunk = [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat();
            socket.write_all(&chunk).await.unwrap();
            socket.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    socket.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    assert!(text.ends_with(std::str::from_utf8(body).unwrap()), "{text}");
    text.lines().next().unwrap().to_string()
}

#[tokio::test]
async fn bodies_split_at_every_byte_are_read_alike() {
    let body = br#"{"jsonrpc":"2.0","id":9,"params":{"arguments":{"name":"x"},"name":"echo"},"method":"tools/call"}"#;
    // Watching the body stream past, and reading its head before forwarding (a limit needs it).
    for policy in [
        "[policy]\n",
        "[policy]\n[[policy.limit]]\nmethod = \"tools/call\"\ntool = \"echo\"\nkey = \"client\"\nrate = 100000\n",
    ] {
        let (_backend, proxy) = proxy_with(policy).await;
        for at in 0..=body.len() {
            let status = post_split(&proxy, body, at).await;
            assert!(status.contains(" 200 "), "split at {at}: {status}");
        }
        let expected = (body.len() + 1) as f64;
        let counted = eventually("every split counted", Duration::from_secs(5), async || {
            let n = calls(&proxy, "tools/call", "echo").await;
            (n >= expected).then_some(n)
        })
        .await;
        assert_eq!(counted, expected, "{policy}");
    }
}

#[tokio::test]
async fn headers_that_contradict_the_body_are_refused() {
    let limit =
        "[policy]\n[[policy.limit]]\nmethod = \"tools/call\"\nkey = \"client\"\nrate = 1000\n";
    let (backend, proxy) = proxy_with(limit).await;
    let body = tool_call(4, "echo").to_string();
    let agreeing = [("mcp-method", "tools/call"), ("mcp-name", "echo")];
    echo(&proxy, &body, &agreeing).await;
    let seen = backend.requests();
    for headers in [
        [("mcp-method", "tools/call"), ("mcp-name", "sleep")],
        [("mcp-method", "tools/list"), ("mcp-name", "echo")],
    ] {
        let response = post(&proxy.url("/echo"), &body, &headers).await;
        assert_eq!(response.status(), 400);
        let answer: Value = response.json().await.unwrap();
        // MCP 2026-07-28: HeaderMismatchError, code -32020, HTTP 400.
        assert_eq!(answer["error"]["code"], -32020, "{answer}");
        assert_eq!(answer["id"], 4, "{answer}");
    }
    let twice = r#"{"id":5,"method":"tools/call","params":{"name":"echo","name":"sleep"}}"#;
    let response = post(&proxy.url("/echo"), twice, &[]).await;
    assert_eq!(response.status(), 400, "a repeated name is ambiguous");
    assert_eq!(
        backend.requests(),
        seen,
        "no refused request reached the backend"
    );
    let mismatches = metric(
        &proxy,
        "switchyard_policy_denials_total",
        &[("reason", "mismatch")],
    )
    .await;
    assert_eq!(mismatches, 2.0);
}
