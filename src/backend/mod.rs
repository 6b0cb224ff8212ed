//! The bundled reference MCP server (`switchyard backend`).
//!
//! Stand-in until the full reference server lands: it serves the benchmark routes
//! ([`bench::handle`]) and a WebSocket at `/ws` that answers JSON-RPC `ping`.

pub mod bench;

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Command-line options of `switchyard backend`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Address to listen on, e.g. 127.0.0.1:3001.
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub listen: std::net::SocketAddr,
    /// Name reported by the `server_status` tool and in logs.
    #[arg(long, default_value = "backend")]
    pub name: String,
}

/// Runs the reference backend until SIGTERM/SIGINT.
pub async fn run_cli(args: BackendArgs) -> Result<(), BackendError> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, name = %args.name, "backend listening");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(route))
                .with_upgrades();
            let _ = connection.await;
        });
    }
}

async fn route(
    request: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    if request.uri().path().starts_with("/bench/") {
        return Ok(bench::handle(request).await);
    }
    if request.uri().path() == "/ws" {
        return Ok(websocket(request));
    }
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = StatusCode::NOT_FOUND;
    Ok(response)
}

fn websocket(mut request: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
        let mut response = Response::new(Empty::new().boxed());
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Some(reply) = ping_reply(&text) else {
                continue;
            };
            if socket.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(header::SEC_WEBSOCKET_PROTOCOL, "mcp")
        .body(Empty::new().boxed())
        .unwrap_or_else(|_| Response::new(Empty::new().boxed()))
}

/// The JSON-RPC answer to a `ping` request: an empty result with the same id.
fn ping_reply(text: &str) -> Option<String> {
    let message: serde_json::Value = serde_json::from_str(text).ok()?;
    if message.get("method")?.as_str()? != "ping" {
        return None;
    }
    let id = message.get("id")?;
    Some(serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
