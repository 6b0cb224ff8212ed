//! Streamable HTTP, directly and through the proxy: a full session with the SDK's client
//! (progress notifications streamed, not buffered), DELETE ending a session, and a stream cut
//! mid-call resumed with `Last-Event-ID` on the session's owner.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{SseReader, fleet, names, post_mcp, raw_session};
use crate::support::*;
use futures_util::StreamExt;
use rmcp::model::{
    CallToolRequestParams, ClientRequest, NumberOrString, ProgressNotificationParam, ProgressToken,
    Request, RequestMetaObject, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

/// Records when each progress notification arrives.
#[derive(Clone, Default)]
struct ProgressRecorder {
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl ClientHandler for ProgressRecorder {
    async fn on_progress(
        &self,
        _params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.arrivals.lock().unwrap().push(Instant::now());
    }
}

fn tool(name: &'static str, arguments: Value) -> CallToolRequestParams {
    let Value::Object(arguments) = arguments else {
        panic!("arguments must be an object")
    };
    CallToolRequestParams::new(name).with_arguments(arguments)
}

fn first_text(result: &rmcp::model::CallToolResult) -> String {
    let value = serde_json::to_value(result).unwrap();
    value["content"][0]["text"].as_str().unwrap().to_string()
}

async fn call_text(
    client: &RunningService<RoleClient, ProgressRecorder>,
    call: CallToolRequestParams,
) -> String {
    first_text(&client.peer().call_tool(call).await.unwrap())
}

/// One full session with the SDK's client: initialize, tools/list, echo, countdown with progress
/// notifications arriving one by one, server_status; returns the name of the backend that
/// answered every call, and closes the session (DELETE).
async fn streamable_session(url: &str) -> String {
    let recorder = ProgressRecorder::default();
    let arrivals = Arc::clone(&recorder.arrivals);
    let client = recorder
        .serve(StreamableHttpClientTransport::from_uri(url))
        .await
        .unwrap();
    let info = client.peer().peer_info().unwrap();
    assert_eq!(
        info.server_info.as_ref().unwrap().name,
        "switchyard-backend"
    );

    let tools = client.peer().list_all_tools().await.unwrap();
    let listed: HashSet<String> = tools.iter().map(|t| t.name.to_string()).collect();
    for expected in ["echo", "server_status", "countdown", "sleep"] {
        assert!(
            listed.contains(expected),
            "{expected} missing from {listed:?}"
        );
    }

    let echoed = call_text(&client, tool("echo", json!({"message": "hello, yard"}))).await;
    assert_eq!(echoed, "hello, yard");

    let started = Instant::now();
    let mut options = PeerRequestOptions::no_options();
    options.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
        NumberOrString::Number(7),
    )));
    let request = ClientRequest::CallToolRequest(Request::new(tool(
        "countdown",
        json!({"count": 5, "interval_ms": 150}),
    )));
    let response = client
        .send_request_with_option(request, options)
        .await
        .unwrap()
        .await_response()
        .await
        .unwrap();
    let answered = Instant::now();
    let ServerResult::CallToolResult(result) = response else {
        panic!("countdown answered {response:?}")
    };
    assert!(first_text(&result).starts_with("liftoff"));
    // The SDK hands notifications to the handler on its own task: the last may trail the answer.
    let arrivals = eventually(
        "five progress notifications",
        Duration::from_secs(5),
        async || {
            let arrivals = arrivals.lock().unwrap().clone();
            (arrivals.len() >= 5).then_some(arrivals)
        },
    )
    .await;
    assert_eq!(arrivals.len(), 5, "one progress notification per step");
    // Streamed, not buffered: the first notification arrives long before the answer, and the
    // notifications are spread over the countdown rather than bunched at its end.
    assert!(
        answered - arrivals[0] >= Duration::from_millis(400),
        "first progress came late"
    );
    assert!(
        arrivals[4] - arrivals[0] >= Duration::from_millis(400),
        "progress bunched"
    );
    assert!(arrivals[0] - started >= Duration::from_millis(100));

    let mut owners = HashSet::new();
    for _ in 0..3 {
        let status: Value =
            serde_json::from_str(&call_text(&client, tool("server_status", json!({}))).await)
                .unwrap();
        owners.insert(status["name"].as_str().unwrap().to_string());
    }
    assert_eq!(owners.len(), 1, "one session, one backend: {owners:?}");
    client.cancel().await.unwrap();
    owners.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_with_the_sdk_client_directly_and_through_the_proxy() {
    let (backends, proxy) = fleet().await;
    let direct = streamable_session(&backends[0].url("/mcp")).await;
    assert_eq!(direct, "ref-1");
    // The client's DELETE reached the owner: its session is gone.
    eventually(
        "session closed by DELETE",
        Duration::from_secs(5),
        async || (backends[0].metric("mcp_backend_open_sessions").await == 0).then_some(()),
    )
    .await;

    let mut owners = HashSet::new();
    for _ in 0..4 {
        let owner = streamable_session(&proxy.url("/mcp")).await;
        assert!(names(&backends).contains(&owner), "{owner}");
        owners.insert(owner);
    }
    for backend in &backends {
        eventually(
            "sessions closed through the proxy",
            Duration::from_secs(5),
            async || (backend.metric("mcp_backend_open_sessions").await == 0).then_some(()),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_a_session_directly_and_through_the_proxy() {
    let (backends, proxy) = fleet().await;
    for url in [backends[1].url("/mcp"), proxy.url("/mcp")] {
        let session = raw_session(&url).await;
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        assert_eq!(post_mcp(&url, Some(&session), &list).await.status(), 200);
        let deleted = client()
            .delete(&url)
            .header("mcp-session-id", &session)
            .send()
            .await
            .unwrap();
        // 204, not the SDK's 202: the Python SDK 2.3.0 takes only 200 or 204 as success.
        assert_eq!(deleted.status(), 204, "{url}");
        assert!(deleted.bytes().await.unwrap().is_empty());
        assert_eq!(post_mcp(&url, Some(&session), &list).await.status(), 404);
    }
}

// ---------------------------------------------------------------- resumption

/// A POST stream cut mid-call resumes with `Last-Event-ID` on a GET, through the proxy to the
/// session's owner, and the answer arrives there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_resumes_with_last_event_id_through_the_proxy() {
    let (_backends, proxy) = fleet().await;
    let url = proxy.url("/mcp");
    let session = raw_session(&url).await;
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "countdown", "arguments": {"count": 6, "interval_ms": 150},
        "_meta": {"progressToken": "resume"}}});
    let response = post_mcp(&url, Some(&session), &call).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut reader = SseIdReader::new(response);
    let mut last_id = None;
    while last_id.is_none() {
        let (id, data) = reader.next().await;
        if data.contains("notifications/progress") {
            last_id = id;
        }
    }
    drop(reader); // the client's connection breaks mid-call

    let resumed = client()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("last-event-id", last_id.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let mut reader = SseIdReader::new(resumed);
    loop {
        let (_, data) = reader.next().await;
        if let Ok(message) = serde_json::from_str::<Value>(&data)
            && message["id"] == 9
        {
            assert!(
                message["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("liftoff")
            );
            break;
        }
    }
}

/// Like [`SseReader`], keeping each event's `id:`.
struct SseIdReader(SseReader);

impl SseIdReader {
    fn new(response: reqwest::Response) -> SseIdReader {
        SseIdReader(SseReader::new(response))
    }

    async fn next(&mut self) -> (Option<String>, String) {
        loop {
            if let Some(end) = self.0.buffer.find("\n\n") {
                let raw: String = self.0.buffer.drain(..end + 2).collect();
                let id = raw
                    .lines()
                    .find_map(|l| l.strip_prefix("id:"))
                    .map(|v| v.trim().to_string());
                let data: Vec<&str> = raw
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                return (id, data.join("\n"));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.0.stream.next())
                .await
                .expect("an event in time")
                .expect("stream still open")
                .unwrap();
            self.0.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
