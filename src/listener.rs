//! Accepting client connections: bind with `SO_REUSEPORT`, enforce the connection limit, serve
//! HTTP/1.1 and HTTP/2 (h2c by prior knowledge) with hyper, and shut down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::forward::{self, ConnInfo};
use crate::state::State;

/// Binds with `SO_REUSEPORT`, so a new proxy process can bind the same port before the old one
/// drains (zero-gap restarts).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Accepts until `shutdown`; each connection runs on `state.tasks`.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let builder = Arc::new(http_builder(&state.snapshot().config.limits));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            state.metrics.connections_refused.inc();
            state.tasks.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo { peer, tls: false };
        let task = serve(
            stream,
            conn,
            Arc::clone(&state),
            Arc::clone(&builder),
            shutdown.clone(),
            permit,
        );
        state.tasks.spawn(task);
    }
}

/// Over the connection limit: a fast, complete `503` instead of a silent queue.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":{"status":503,"message":"connection limit reached"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
    let _ = stream.shutdown().await;
}

pub async fn serve<IO>(
    io: IO,
    conn: ConnInfo,
    state: Arc<State>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    state.metrics.connections_open.inc();
    let conn = Arc::new(conn);
    let service_state = Arc::clone(&state);
    let service = service_fn(move |request| {
        let state = Arc::clone(&service_state);
        let conn = Arc::clone(&conn);
        // Boxed: hyper keeps a slot the size of the service future for the whole connection, so
        // an unboxed one would hold a whole request's state per idle keep-alive or SSE connection.
        Box::pin(async move { Ok::<_, Infallible>(forward::handle(state, conn, request).await) })
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "client connection ended with an error");
    }
    state.metrics.connections_open.dec();
}
