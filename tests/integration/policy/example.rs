//! `config/examples/policy.toml`, run as shipped, with only its addresses rewritten: the
//! reference backends in-process on port 0, the listeners on port 0. An MCP SDK client (rmcp)
//! completes a session with a token minted from the example's test-only key, and gets a clean
//! error without one; the per-session limit on `echo` answers `429`.

use std::net::SocketAddr;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;
use switchyard::tools::backend::{BackendArgs, run};
use tokio_util::sync::CancellationToken;

use super::*;

/// Reference backends in-process; stopped when the token drops.
struct Fleet {
    addresses: Vec<SocketAddr>,
    stop: CancellationToken,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn fleet() -> Fleet {
    let stop = CancellationToken::new();
    let mut addresses = Vec::new();
    for name in ["ref-1", "ref-2", "ref-3"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.push(listener.local_addr().unwrap());
        let stop = stop.clone();
        tokio::spawn(async move { run(listener, BackendArgs::new(name), stop).await.unwrap() });
    }
    Fleet { addresses, stop }
}

/// The example as shipped, with its listeners on port 0 and its backends at `backends`.
async fn example_proxy(backends: &[SocketAddr]) -> TestProxy {
    let path = example_dir().join("policy.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in [
        (
            "bind = \"127.0.0.1:8080\"",
            "bind = \"127.0.0.1:0\"".to_string(),
        ),
        (
            "bind = \"127.0.0.1:9901\"",
            "bind = \"127.0.0.1:0\"".to_string(),
        ),
        ("127.0.0.1:3001", backends[0].to_string()),
        ("127.0.0.1:3002", backends[1].to_string()),
        ("127.0.0.1:3003", backends[2].to_string()),
    ] {
        assert!(text.contains(from), "the example has {from}");
        text = text.replace(from, &to);
    }
    TestProxy::start_as(&text, &path).await
}

/// A token as the README mints one, signed with the example's test-only key.
fn readme_token() -> String {
    let claims = claims_with("alice", &[("scope", json!("mcp:tools"))]);
    Signer::example().sign(&claims)
}

fn transport(url: &str, token: Option<&str>) -> StreamableHttpClientTransport<reqwest::Client> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    StreamableHttpClientTransport::with_client(client(), config)
}

#[tokio::test]
async fn the_example_runs_with_an_sdk_client() {
    let fleet = fleet().await;
    let proxy = example_proxy(&fleet.addresses).await;
    let url = proxy.url("/mcp");

    let Err(error) = ().serve(transport(&url, None)).await else {
        panic!("a session without a token")
    };
    let error = error.to_string();
    assert!(error.to_lowercase().contains("auth"), "{error}");

    let token = readme_token();
    let client = ().serve(transport(&url, Some(&token))).await.unwrap();
    let tools = client.peer().list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"));
    let arguments = json!({"message": "through policy"})
        .as_object()
        .unwrap()
        .clone();
    let result = client
        .peer()
        .call_tool(CallToolRequestParams::new("echo").with_arguments(arguments))
        .await
        .unwrap();
    let text = serde_json::to_value(&result).unwrap()["content"][0]["text"].clone();
    assert_eq!(text, "through policy");
    client.cancel().await.unwrap();

    let document: Value =
        client_get_json(&proxy.url("/.well-known/oauth-protected-resource/mcp")).await;
    assert_eq!(document["resource"], "http://127.0.0.1:8080/mcp");
    let calls = metric(
        &proxy,
        "switchyard_mcp_calls_total",
        &[("tool", "echo"), ("status", "200")],
    );
    assert!(calls.await >= 1.0);
}

async fn client_get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A session opened with raw requests and the README's token; returns its id.
async fn raw_session(url: &str, bearer: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "switchyard-test", "version": "1"}}});
    let response = post(url, &init.to_string(), &[("authorization", bearer)]).await;
    assert_eq!(response.status(), 200);
    let session = session_of(&response);
    drop(response);
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let headers = [
        ("authorization", bearer),
        ("mcp-session-id", session.as_str()),
    ];
    assert_eq!(post(url, &done, &headers).await.status(), 202);
    session
}

#[tokio::test]
async fn the_example_limits_echo_per_session() {
    let fleet = fleet().await;
    let proxy = example_proxy(&fleet.addresses).await;
    let url = proxy.url("/mcp");
    let bearer = format!("Bearer {}", readme_token());
    let session = raw_session(&url, &bearer).await;
    let headers = [
        ("authorization", bearer.as_str()),
        ("mcp-session-id", session.as_str()),
    ];
    // Twelve calls at once: the burst of five passes, and at most a refill or two more.
    let calls = (1..=12).map(|id| {
        let body = tool_call(id, "echo").to_string();
        let url = url.clone();
        async move { post(&url, &body, &headers).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    let ok = answers.iter().filter(|a| a.status() == 200).count();
    let limited: Vec<_> = answers.iter().filter(|a| a.status() == 429).collect();
    assert_eq!(ok + limited.len(), 12);
    assert!((5..=8).contains(&ok), "{ok} passed");
    assert!(
        limited
            .iter()
            .all(|a| a.headers().contains_key("retry-after"))
    );
    // Another session has its own bucket; other tools are not limited.
    let other = raw_session(&url, &bearer).await;
    let headers = [
        ("authorization", bearer.as_str()),
        ("mcp-session-id", other.as_str()),
    ];
    let body = tool_call(20, "echo").to_string();
    assert_eq!(post(&url, &body, &headers).await.status(), 200);
}
