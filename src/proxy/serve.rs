//! Serving HTTP on an accepted connection: hyper's HTTP/1.1 and HTTP/2 (ALPN `h2` over TLS, h2c
//! by prior knowledge in clear) under the configured limits, each request handed to
//! [`super::request::handle`], or answered `301` on a redirect listener.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::config::{Limits, Redirect};
use crate::state::State;

use super::body::ResponseBody;
use super::request::{self, ConnInfo};

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

/// At shutdown, how long a connection accepted before it may take to send its first request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

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

pub type SharedBuilder = Arc<auto::Builder<TokioExecutor>>;

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
    let first_request = Arc::new(tokio::sync::Notify::new());
    let requested = Arc::clone(&first_request);
    let service = service_fn(move |request| {
        requested.notify_one();
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
    let grace = FIRST_REQUEST_GRACE.min(state.snapshot().config.limits.header_read_timeout);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            // A client that connected before the shutdown but has not sent its request yet
            // (a TLS client one round trip behind, or just a slow one) gets it answered.
            let ended = tokio::select! {
                result = connection.as_mut() => Some(result),
                () = first_request.notified() => None,
                () = tokio::time::sleep(grace) => None,
            };
            match ended {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
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
