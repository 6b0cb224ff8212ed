//! Bad input to the reference backend: malformed JSON-RPC, unknown sessions and foreign
//! `Origin`s get the spec's errors on both transports, and the backend keeps serving.

use super::{LegacySession, RefBackend, initialize_body, post_mcp, raw_session};
use crate::support::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_spec_error_and_the_backend_keeps_serving() {
    let backend = RefBackend::start("strict").await;
    let url = backend.url("/mcp");
    let raw = |body: &'static str| {
        client()
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
    };
    let not_json = raw("{not json").await.unwrap();
    assert_eq!(not_json.status(), 400);
    let error: Value = not_json.json().await.unwrap();
    assert_eq!(error["error"]["code"], -32700);
    assert_eq!(raw("{\"hello\": 1}").await.unwrap().status(), 400);
    assert_eq!(raw("[1, 2]").await.unwrap().status(), 400);

    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(
        post_mcp(&url, Some("no-such-session"), &list)
            .await
            .status(),
        404
    );

    for origin in [
        "http://evil.example.com",
        "http://localhost.evil.example.com",
        "null",
    ] {
        let refused = client()
            .post(&url)
            .header("origin", origin)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .json(&initialize_body(1))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{origin}");
        let sse = client()
            .get(backend.url("/sse"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), 403, "{origin}");
    }
    let local = client()
        .post(&url)
        .header(
            "origin",
            format!("http://localhost:{}", backend.address.port()),
        )
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .json(&initialize_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);

    // Legacy transport: unknown session → 404, a broken message → 400.
    let unknown = client()
        .post(backend.url("/messages?sessionId=nope"))
        .json(&list)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let mut legacy = LegacySession::open(&backend.url("")).await;
    let broken = client()
        .post(legacy.post_url.clone())
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);
    // The same legacy session still works after the bad message.
    legacy.initialize().await;
    assert_eq!(
        legacy.call("echo", json!({"message": "still here"})).await,
        "still here"
    );

    // And the backend still serves new sessions.
    raw_session(&url).await;
}
