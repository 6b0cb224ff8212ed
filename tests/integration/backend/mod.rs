//! The reference MCP backend, directly and through the proxy to three of them: every transport
//! with an MCP client, sessions landing on their owner, bad input, draining, bench routes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use rmcp::model::{
    CallToolRequestParams, ClientRequest, NumberOrString, ProgressNotificationParam, ProgressToken,
    Request, RequestMetaObject, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use switchyard::tools::backend::{BackendArgs, run};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// A reference backend running in-process on 127.0.0.1:0; stopped when dropped.
struct RefBackend {
    name: String,
    address: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RefBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl RefBackend {
    async fn start(name: &str) -> RefBackend {
        Self::start_with(BackendArgs::new(name)).await
    }

    async fn start_with(args: BackendArgs) -> RefBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let name = args.name.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { run(listener, args, stop).await.unwrap() });
        RefBackend {
            name,
            address,
            shutdown,
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn metric(&self, name: &str) -> i64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    }
}

async fn fleet() -> (Vec<RefBackend>, TestProxy) {
    let backends = vec![
        RefBackend::start("ref-1").await,
        RefBackend::start("ref-2").await,
        RefBackend::start("ref-3").await,
    ];
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let config = config_for_addresses(&[("blue", &addresses)], "\"blue\"", "");
    (backends, TestProxy::start(&config).await)
}

fn names(backends: &[RefBackend]) -> HashSet<String> {
    backends.iter().map(|b| b.name.clone()).collect()
}

// ---------------------------------------------------------------- Streamable HTTP (rmcp client)

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

// ---------------------------------------------------------------- raw HTTP helpers

fn initialize_body(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "switchyard-test", "version": "1"}}})
}

async fn post_mcp(url: &str, session: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    request.send().await.unwrap()
}

/// Initializes a Streamable HTTP session with raw requests; returns its id.
async fn raw_session(url: &str) -> String {
    let response = post_mcp(url, None, &initialize_body(1)).await;
    assert_eq!(response.status(), 200);
    let session = session_of(&response);
    drop(response);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        post_mcp(url, Some(&session), &initialized).await.status(),
        202
    );
    session
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
        assert!(deleted.status().is_success(), "{}", deleted.status());
        assert_eq!(post_mcp(&url, Some(&session), &list).await.status(), 404);
    }
}

// ---------------------------------------------------------------- bad input

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

// ---------------------------------------------------------------- legacy HTTP+SSE

/// Reads server-sent events one at a time from a response body.
struct SseReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> SseReader {
        SseReader {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event's (event type, data), skipping comments.
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let mut kind = String::from("message");
                let mut data = Vec::new();
                for line in raw.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.trim_start().to_string());
                    }
                }
                if !data.is_empty() {
                    return (kind, data.join("\n"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("an event in time")
                .expect("stream still open")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

struct LegacySession {
    events: SseReader,
    post_url: String,
    next_id: u64,
}

impl LegacySession {
    async fn open(base: &str) -> LegacySession {
        let response = get_sse(&client(), &format!("{base}/sse")).await;
        assert_eq!(response.status(), 200);
        let mut events = SseReader::new(response);
        let (kind, endpoint) = events.next().await;
        assert_eq!(kind, "endpoint");
        assert!(endpoint.starts_with("/messages?sessionId="), "{endpoint}");
        LegacySession {
            events,
            post_url: format!("{base}{endpoint}"),
            next_id: 1,
        }
    }

    async fn send(&mut self, message: &Value) {
        let response = client()
            .post(&self.post_url)
            .json(message)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }

    /// Sends a request and returns its response, with the arrival times of the notifications
    /// that came before it.
    async fn request(&mut self, method: &str, params: Value) -> (Value, Vec<Instant>) {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let mut notifications = Vec::new();
        loop {
            let (kind, data) = self.events.next().await;
            assert_eq!(kind, "message");
            let message: Value = serde_json::from_str(&data).unwrap();
            if message["id"] == id {
                return (message, notifications);
            }
            notifications.push(Instant::now());
        }
    }

    async fn initialize(&mut self) {
        let (response, _) = self
            .request("initialize", initialize_body(0)["params"].clone())
            .await;
        assert_eq!(
            response["result"]["serverInfo"]["name"],
            "switchyard-backend"
        );
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }

    async fn call(&mut self, name: &str, arguments: Value) -> String {
        let (response, _) = self
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        response["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}"))
            .to_string()
    }
}

/// Sends a countdown with a progress token, checks the notifications streamed in one by one.
fn assert_spread(arrivals: &[Instant], answered: Instant) {
    assert_eq!(arrivals.len(), 5, "one progress notification per step");
    assert!(
        arrivals[4] - arrivals[0] >= Duration::from_millis(400),
        "progress bunched"
    );
    assert!(answered - arrivals[0] >= Duration::from_millis(400));
}

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

async fn owner_of_calls(mut status: impl AsyncFnMut() -> String) -> String {
    let mut owners = HashSet::new();
    for _ in 0..5 {
        let status: Value = serde_json::from_str(&status().await).unwrap();
        owners.insert(status["name"].as_str().unwrap().to_string());
    }
    assert_eq!(
        owners.len(),
        1,
        "a session's messages all land on its owner: {owners:?}"
    );
    owners.into_iter().next().unwrap()
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

// ---------------------------------------------------------------- WebSocket

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct WsSession {
    socket: WsStream,
    next_id: u64,
}

impl WsSession {
    async fn open(url: &str) -> WsSession {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "mcp".parse().unwrap());
        let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "mcp");
        WsSession { socket, next_id: 1 }
    }

    async fn send(&mut self, message: &Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    async fn receive(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .unwrap();
            if let Message::Text(text) = frame {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> (Value, Vec<Instant>) {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let mut notifications = Vec::new();
        loop {
            let message = self.receive().await;
            if message["id"] == id {
                return (message, notifications);
            }
            notifications.push(Instant::now());
        }
    }

    async fn call(&mut self, name: &str, arguments: Value) -> String {
        let (response, _) = self
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        response["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}"))
            .to_string()
    }
}

async fn websocket_session(url: &str) -> String {
    let mut session = WsSession::open(url).await;
    let (init, _) = session
        .request("initialize", initialize_body(0)["params"].clone())
        .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "switchyard-backend");
    session
        .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    // A frame that is not JSON-RPC gets a parse error; the session goes on.
    session.socket.send(Message::text("{nope")).await.unwrap();
    assert_eq!(session.receive().await["error"]["code"], -32700);
    let (tools, _) = session.request("tools/list", json!({})).await;
    assert_eq!(tools["result"]["tools"].as_array().unwrap().len(), 4);
    assert_eq!(session.call("echo", json!({"message": "ws"})).await, "ws");
    let (result, arrivals) = session
        .request(
            "tools/call",
            json!({"name": "countdown", "arguments": {"count": 5, "interval_ms": 150},
                   "_meta": {"progressToken": 3}}),
        )
        .await;
    assert!(
        result["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("liftoff")
    );
    assert_spread(&arrivals, Instant::now());
    let owner = owner_of_calls(async || session.call("server_status", json!({})).await).await;
    session.socket.close(None).await.unwrap();
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_directly_and_through_the_proxy_stay_on_their_owner() {
    let (backends, proxy) = fleet().await;
    let direct = format!("ws://{}/ws", backends[1].address);
    assert_eq!(websocket_session(&direct).await, "ref-2");
    let through = format!("ws://{}/ws", proxy.address);
    for _ in 0..4 {
        let owner = websocket_session(&through).await;
        assert!(names(&backends).contains(&owner), "{owner}");
    }
    for backend in &backends {
        eventually(
            "WebSocket sessions closed",
            Duration::from_secs(5),
            async || (backend.metric("mcp_backend_open_streams").await == 0).then_some(()),
        )
        .await;
    }
}

// ---------------------------------------------------------------- draining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_sessions_and_lets_in_flight_calls_finish() {
    let mut args = BackendArgs::new("drainer");
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
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("mcp_backend_open_sessions 0")
    );

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

// ---------------------------------------------------------------- the CLI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cli_prints_its_address_and_drains_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["backend", "--listen", "127.0.0.1:0", "--name", "cli-1"])
        .args(["--drain-timeout", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
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
    let session = raw_session(&format!("http://{address}/mcp")).await;
    assert!(!session.is_empty());

    let pid = child.0.as_ref().unwrap().id();
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
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

// ---------------------------------------------------------------- resumption, stateless

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
