//! MCP over WebSocket at `/ws`: subprotocol `mcp`, one JSON-RPC message per text frame.

use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rmcp::ServiceExt as _;
use rmcp::model::ClientJsonRpcMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use crate::mcp::classify::header_has_token;

use super::http::{HttpResponse, full, jsonrpc_error, with_body};
use super::mcp::ReferenceServer;
use super::stats::Stats;
use super::transport::channel_transport;

const SUBPROTOCOL: &str = "mcp";

/// Answers the upgrade request with `101` and serves the session on the upgraded connection.
pub fn upgrade(
    request: Request<hyper::body::Incoming>,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
) -> HttpResponse {
    let headers = request.headers();
    let is_upgrade = header_has_token(headers, header::UPGRADE, "websocket")
        && header_has_token(headers, header::CONNECTION, "upgrade");
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let (true, Some(key), true) = (is_upgrade, key, version_ok) else {
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32600,
            "expected a WebSocket upgrade (version 13) with subprotocol mcp",
        );
    };
    let offers_mcp = header_has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);

    let stats = Arc::clone(stats);
    let shutdown = shutdown.child_token();
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                serve(socket, stats, shutdown).await;
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });

    let mut response = with_body(StatusCode::SWITCHING_PROTOCOLS, full(""));
    let out = response.headers_mut();
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(&key)) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if offers_mcp {
        out.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    response
}

async fn serve<S>(mut socket: WebSocketStream<S>, stats: Arc<Stats>, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _stream = stats.stream();
    let (transport, to_server, mut from_server) = channel_transport();
    let server = ReferenceServer::new(Arc::clone(&stats));
    let session_end = shutdown.child_token();
    let serve_end = session_end.clone();
    tokio::spawn(async move {
        match server.serve_with_ct(transport, serve_end).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(error) => tracing::debug!(%error, "WebSocket session ended before initialize"),
        }
    });
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = socket.close(None).await;
                break;
            }
            outgoing = from_server.recv() => {
                let Some(message) = outgoing else { break };
                let Ok(json) = serde_json::to_string(&message) else { continue };
                if socket.send(Message::text(json)).await.is_err() {
                    break;
                }
            }
            incoming = socket.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    // Pings are answered by tungstenite itself; binary frames are not MCP.
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<ClientJsonRpcMessage>(text.as_str()) {
                    Ok(message) => {
                        if to_server.send(message).await.is_err() {
                            break;
                        }
                    }
                    Err(error) => {
                        let reply = serde_json::json!({
                            "jsonrpc": "2.0",
                            "id": null,
                            "error": {"code": -32700, "message": format!("invalid JSON-RPC message: {error}")},
                        });
                        if socket.send(Message::text(reply.to_string())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
    session_end.cancel();
}
