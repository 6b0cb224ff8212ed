//! Accepting client connections: bind with `SO_REUSEPORT`, enforce the connection limit, read the
//! PROXY header and do the TLS handshake where the listener asks for them, serve HTTP/1.1 and
//! HTTP/2 (ALPN `h2` over TLS, h2c by prior knowledge in clear) with hyper under the configured
//! limits, answer `301` on redirect listeners, and shut down gracefully.

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

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::config::{Limits, Redirect};
use crate::proxy::body::ResponseBody;
use crate::proxy::proxy_protocol;
use crate::proxy::request::{self, ConnInfo};
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

/// HTTP/2 flow-control windows and send buffer: what one connection may hold for a slow reader
/// or a slow backend. hyper's own defaults, written down so the README can name them.
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const H2_SEND_BUFFER: usize = 256 * 1024;
/// Rapid reset (CVE-2023-44487): streams the client resets before the server accepted them; past
/// this the connection is closed with GOAWAY. The value Envoy, Go and h2 settled on.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Resets the server itself must send because the client misbehaves (the "MadeYouReset" variant).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper answers 431 itself when the head outgrows the read buffer or has too many fields.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(limits.max_header_size)
        .max_headers(limits.max_headers);
    // The header list bound also caps CONTINUATION floods: h2 stops decoding past it.
    let max_header_list = u32::try_from(limits.max_header_size).unwrap_or(u32::MAX);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(max_header_list)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

type SharedBuilder = Arc<auto::Builder<TokioExecutor>>;

/// Accepts until `shutdown`; each connection runs on `state.tasks`. `index` is this listener's
/// place in `config.listeners`: each connection reads its listener's settings (TLS certificates
/// included) from the snapshot current when it was accepted, so a reload applies to new
/// connections and leaves open ones alone.
pub async fn accept_loop(
    listener: TcpListener,
    index: usize,
    state: Arc<State>,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut builder: (u64, SharedBuilder) = {
        let snapshot = state.snapshot();
        (
            snapshot.generation,
            Arc::new(http_builder(&snapshot.config.limits)),
        )
    };
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
        let snapshot = state.snapshot();
        if snapshot.generation != builder.0 {
            builder = (
                snapshot.generation,
                Arc::new(http_builder(&snapshot.config.limits)),
            );
        }
        let Some(settings) = Accepting::of(&snapshot, index) else {
            continue;
        };
        let task = handshake_and_serve(
            stream,
            peer,
            settings,
            snapshot.config.limits.handshake_timeout,
            Arc::clone(&state),
            Arc::clone(&builder.1),
            shutdown.clone(),
            permit,
        );
        state.tasks.spawn(task);
    }
}

/// What one accepted connection needs of its listener's settings, taken from the snapshot current
/// when it was accepted.
struct Accepting {
    proxy_protocol: bool,
    redirect: Option<Redirect>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Accepting {
    fn of(snapshot: &crate::state::Snapshot, index: usize) -> Option<Accepting> {
        let listener = snapshot.config.listeners.get(index)?;
        Some(Accepting {
            proxy_protocol: listener.proxy_protocol,
            redirect: listener.redirect.clone(),
            tls: snapshot.loaded.listener_tls(index).cloned(),
        })
    }
}

/// PROXY header, then TLS, each within one `handshake_timeout`; any failure closes this
/// connection only.
#[allow(clippy::too_many_arguments)]
async fn handshake_and_serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    settings: Accepting,
    handshake_timeout: Duration,
    state: Arc<State>,
    builder: SharedBuilder,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    let peer = if settings.proxy_protocol {
        match tokio::time::timeout_at(deadline, proxy_protocol::read_header(&mut stream)).await {
            Ok(Ok(client)) => client.unwrap_or(peer),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "PROXY header refused; connection closed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no PROXY header in time; connection closed");
                return;
            }
        }
    } else {
        peer
    };
    let redirect = settings.redirect;
    let Some(tls) = settings.tls else {
        let conn = ConnInfo { peer, tls: false };
        serve(stream, conn, redirect, state, builder, shutdown, permit).await;
        return;
    };
    let accepted = tokio::time::timeout_at(
        deadline,
        tokio_rustls::TlsAcceptor::from(tls).accept(stream),
    )
    .await;
    let outcome = match &accepted {
        Ok(Ok(_)) => "success",
        Ok(Err(_)) => "failure",
        Err(_) => "timeout",
    };
    state
        .metrics
        .tls_handshakes
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
    match accepted {
        Ok(Ok(stream)) => {
            let conn = ConnInfo { peer, tls: true };
            serve(stream, conn, redirect, state, builder, shutdown, permit).await;
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
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
    redirect: Option<Redirect>,
    state: Arc<State>,
    builder: SharedBuilder,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    state.metrics.connections_open.inc();
    let conn = Arc::new(conn);
    let service_state = Arc::clone(&state);
    let redirect = redirect.map(Arc::new);
    let service = service_fn(move |request| {
        let state = Arc::clone(&service_state);
        let conn = Arc::clone(&conn);
        let redirect = redirect.clone();
        // Boxed: hyper keeps a slot the size of the service future for the whole connection, so
        // an unboxed one would hold a whole request's state per idle keep-alive or SSE connection.
        Box::pin(async move {
            Ok::<_, Infallible>(match redirect {
                Some(redirect) => redirect_response(&redirect, &request),
                None => request::handle(state, conn, request).await,
            })
        })
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

/// The `301` of a redirect listener (nginx: `return 301 https://$host$request_uri`).
pub fn redirect_response<B>(redirect: &Redirect, request: &Request<B>) -> Response<ResponseBody> {
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match redirect {
        Redirect::To(base) => Some(format!("{base}{path}")),
        Redirect::SameHost => request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .and_then(|host| host.parse::<http::uri::Authority>().ok())
            .map(|authority| format!("https://{}{path}", authority.host())),
    };
    let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) else {
        let mut response = Response::new(ResponseBody::full("a redirect needs a Host header\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    response.headers_mut().insert(header::LOCATION, location);
    response
}
