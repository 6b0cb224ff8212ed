//! The reference MCP backend, directly and through the proxy to three of them: every transport
//! with an MCP client, sessions landing on their owner, bad input, draining, bench routes.
//!
//! This module holds the area's fixtures: [`RefBackend`] in-process and a [`fleet`] of three
//! behind the proxy, raw Streamable HTTP requests, a legacy HTTP+SSE client, and the checks the
//! legacy and WebSocket tests share. The tests are in the submodules: one per transport, then
//! bad input, then the backend as a process (draining, routes, CLI, stateless mode).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard::tools::backend::{BackendArgs, run};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod bad_input;
mod legacy_sse;
mod lifecycle;
mod streamable;
mod websocket;

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
    /// With `/metrics` and the bench routes on, as the tests read counters through them.
    async fn start(name: &str) -> RefBackend {
        let mut args = BackendArgs::new(name);
        args.metrics = true;
        args.bench_routes = true;
        Self::start_with(args).await
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

// ---------------------------------------------------------------- legacy HTTP+SSE client

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

// ---------------------------------------------------------------- legacy and WebSocket checks

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
