//! The legacy HTTP+SSE transport (MCP 2024-11-05): `GET /sse` opens the session's stream, whose
//! first event names the URL to POST to; `POST /messages?sessionId=…` is answered `202` and the
//! server's reply travels on the stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use rmcp::ServiceExt as _;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mcp::session::legacy_session_id;

use super::http::{HttpResponse, MAX_MESSAGE_BYTES, jsonrpc_error, with_body};
use super::mcp::ReferenceServer;
use super::stats::{Held, Stats};
use super::transport::channel_transport;

/// Quiet streams get a comment this often, so idle timers along the way do not cut them.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Open legacy sessions: id → the channel into that session's server.
#[derive(Debug, Default)]
pub struct LegacySessions {
    open: Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>,
}

impl LegacySessions {
    fn insert(&self, id: &str, sender: mpsc::Sender<ClientJsonRpcMessage>) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), sender);
    }

    fn remove(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    fn get(&self, id: &str) -> Option<mpsc::Sender<ClientJsonRpcMessage>> {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// Ends the session when its stream ends, however that happens (client gone, shutdown).
struct StreamGuard {
    sessions: Arc<LegacySessions>,
    id: String,
    session_end: CancellationToken,
    _stream: Held,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.sessions.remove(&self.id);
        self.session_end.cancel();
    }
}

/// `GET /sse`: starts a session and returns its event stream.
pub fn open(
    sessions: &Arc<LegacySessions>,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
) -> HttpResponse {
    // Unguessable enough for a reference server; the id is only a routing key.
    let id = format!("{:032x}", fastrand::u128(..));
    let (transport, to_server, from_server) = channel_transport();
    sessions.insert(&id, to_server);
    let session_end = shutdown.child_token();
    let server = ReferenceServer::new(Arc::clone(stats));
    let serve_end = session_end.clone();
    tokio::spawn(async move {
        match server.serve_with_ct(transport, serve_end).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(error) => tracing::debug!(%error, "legacy SSE session ended before initialize"),
        }
    });
    let guard = StreamGuard {
        sessions: Arc::clone(sessions),
        id: id.clone(),
        session_end,
        _stream: stats.stream(),
    };
    let endpoint = format!("event: endpoint\ndata: /messages?sessionId={id}\n\n");
    let state = (Some(endpoint), from_server, guard);
    let events =
        futures_util::stream::unfold(state, |(first, mut from_server, guard)| async move {
            if let Some(endpoint) = first {
                return Some((frame(endpoint), (None, from_server, guard)));
            }
            let text = tokio::select! {
                message = from_server.recv() => event_text(&message?),
                () = tokio::time::sleep(KEEPALIVE) => ": keepalive\n\n".to_string(),
            };
            Some((frame(text), (None, from_server, guard)))
        });
    let mut response = with_body(StatusCode::OK, StreamBody::new(events).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    headers.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    response
}

fn frame(text: String) -> Result<Frame<Bytes>, std::convert::Infallible> {
    Ok(Frame::data(Bytes::from(text)))
}

fn event_text(message: &ServerJsonRpcMessage) -> String {
    match serde_json::to_string(message) {
        Ok(json) => format!("event: message\ndata: {json}\n\n"),
        Err(error) => format!(": cannot encode a message: {error}\n\n"),
    }
}

/// `POST /messages?sessionId=…`: hands one JSON-RPC message to the session's server.
pub async fn post<B>(sessions: &LegacySessions, request: Request<B>) -> HttpResponse
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let query = request.uri().query().unwrap_or("");
    let Some(id) = legacy_session_id(query).map(str::to_owned) else {
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32600,
            "sessionId query parameter is missing",
        );
    };
    let Some(sender) = sessions.get(&id) else {
        return jsonrpc_error(StatusCode::NOT_FOUND, -32001, "session not found");
    };
    let body = match Limited::new(request.into_body(), MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                "body too large or broken",
            );
        }
    };
    let message: ClientJsonRpcMessage = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(error) => {
            return jsonrpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                &format!("invalid JSON-RPC message: {error}"),
            );
        }
    };
    if sender.send(message).await.is_err() {
        return jsonrpc_error(StatusCode::NOT_FOUND, -32001, "session has ended");
    }
    with_body(StatusCode::ACCEPTED, super::http::full("Accepted"))
}
