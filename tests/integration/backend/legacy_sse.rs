//! The legacy HTTP+SSE transport, directly and through the proxy: a full session over the event
//! stream and its message endpoint, progress streamed, every message on the session's owner.

use std::time::Instant;

use super::{LegacySession, assert_spread, fleet, names, owner_of_calls};
use serde_json::json;

async fn legacy_session(base: &str) -> String {
    let mut session = LegacySession::open(base).await;
    session.initialize().await;
    let (tools, _) = session.request("tools/list", json!({})).await;
    assert_eq!(tools["result"]["tools"].as_array().unwrap().len(), 4);
    assert_eq!(
        session.call("echo", json!({"message": "legacy"})).await,
        "legacy"
    );
    let (result, arrivals) = session
        .request(
            "tools/call",
            json!({"name": "countdown", "arguments": {"count": 5, "interval_ms": 150},
                   "_meta": {"progressToken": "t1"}}),
        )
        .await;
    assert!(
        result["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("liftoff")
    );
    assert_spread(&arrivals, Instant::now());
    owner_of_calls(async || session.call("server_status", json!({})).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_sessions_directly_and_through_the_proxy_stay_on_their_owner() {
    let (backends, proxy) = fleet().await;
    assert_eq!(legacy_session(&backends[2].url("")).await, "ref-3");
    let base = proxy.url("");
    for _ in 0..4 {
        let owner = legacy_session(&base).await;
        assert!(names(&backends).contains(&owner), "{owner}");
    }
}
