//! Rate limits: a burst, then `429` with `Retry-After` and a JSON-RPC error, nothing forwarded;
//! buckets per session and per tool kept apart. (The limiter's memory bound under 100k keys is
//! its unit test, `state::policy::limiter`.)

use super::*;

async fn limited_proxy(limit: &str) -> (TestBackend, TestProxy) {
    let backend = TestBackend::start("b").await;
    let policy = format!("[policy]\n[[policy.limit]]\n{limit}\n");
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &policy);
    (backend, TestProxy::start(&config).await)
}

/// A call in `session`, which the test backend's `/mcp` minted.
async fn call(proxy: &TestProxy, id: u64, tool: &str, session: &str) -> reqwest::Response {
    let body = tool_call(id, tool).to_string();
    post(&proxy.url("/mcp"), &body, &[("mcp-session-id", session)]).await
}

async fn session(proxy: &TestProxy) -> String {
    new_session(&client(), &proxy.url("/mcp")).await
}

#[tokio::test]
async fn a_burst_then_429_with_retry_after() {
    let limit = "method = \"tools/call\"\ntool = \"echo\"\nkey = \"client\"\nrate = 1\nper = \"1m\"\nburst = 3";
    let (backend, proxy) = limited_proxy(limit).await;
    // No session id: the session key would not apply, the client key does.
    for id in 1..=3 {
        let body = tool_call(id, "echo").to_string();
        assert_eq!(
            post(&proxy.url("/echo"), &body, &[]).await.status(),
            200,
            "call {id}"
        );
    }
    let forwarded = backend.requests();
    let body = tool_call(4, "echo").to_string();
    let refused = post(&proxy.url("/echo"), &body, &[]).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["jsonrpc"], "2.0");
    assert_eq!(answer["id"], 4);
    assert_eq!(answer["error"]["code"], -32012, "{answer}");
    assert_eq!(
        backend.requests(),
        forwarded,
        "a refused call never reaches the backend"
    );
    // Another tool and another method are not this limit's business.
    let other = tool_call(5, "sleep").to_string();
    assert_eq!(post(&proxy.url("/echo"), &other, &[]).await.status(), 200);
    let list = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}).to_string();
    assert_eq!(post(&proxy.url("/echo"), &list, &[]).await.status(), 200);
    let denials = metric(
        &proxy,
        "switchyard_policy_denials_total",
        &[("reason", "rate_limited")],
    );
    assert_eq!(denials.await, 1.0);
    let counted = metric(
        &proxy,
        "switchyard_mcp_calls_total",
        &[("tool", "echo"), ("status", "429")],
    );
    assert_eq!(
        counted.await,
        1.0,
        "refused calls are counted with their status"
    );
}

#[tokio::test]
async fn sessions_have_their_own_buckets() {
    let limit = "method = \"tools/call\"\nkey = \"session\"\nrate = 1\nper = \"1m\"\nburst = 2";
    let (_backend, proxy) = limited_proxy(limit).await;
    let (a, b) = (session(&proxy).await, session(&proxy).await);
    for id in 1..=2 {
        assert_eq!(call(&proxy, id, "echo", &a).await.status(), 200);
    }
    assert_eq!(call(&proxy, 3, "sleep", &a).await.status(), 429);
    for id in 4..=5 {
        assert_eq!(
            call(&proxy, id, "echo", &b).await.status(),
            200,
            "b is apart"
        );
    }
    assert_eq!(call(&proxy, 6, "echo", &b).await.status(), 429);
}

#[tokio::test]
async fn tools_have_their_own_buckets() {
    let limit = "method = \"tools/call\"\nkey = \"tool\"\nrate = 1\nper = \"1m\"\nburst = 2";
    let (_backend, proxy) = limited_proxy(limit).await;
    let (s1, s2) = (session(&proxy).await, session(&proxy).await);
    // Across sessions: the bucket is the tool's.
    assert_eq!(call(&proxy, 1, "echo", &s1).await.status(), 200);
    assert_eq!(call(&proxy, 2, "echo", &s2).await.status(), 200);
    assert_eq!(call(&proxy, 3, "echo", &s1).await.status(), 429);
    assert_eq!(
        call(&proxy, 4, "sleep", &s1).await.status(),
        200,
        "sleep is apart"
    );
    // A batch takes one token per matching element: one left for sleep, two asked.
    let batch = json!([tool_call(5, "sleep"), tool_call(6, "sleep")]).to_string();
    assert_eq!(post(&proxy.url("/echo"), &batch, &[]).await.status(), 429);
}
