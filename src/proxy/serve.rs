//! Serving HTTP on an accepted connection: hyper's HTTP/1.1 and HTTP/2 (ALPN `h2` over TLS, h2c
//! by prior knowledge in clear) under the configured limits, each request handed to
//! [`super::request::handle`], or answered `301` on a redirect listener.
//!
//! [`drive`] bounds every wait for a request head with the header timeout: the first one from
//! the moment the connection is ready (the HTTP/2 preface, or the first byte that rules it out,
//! included, which hyper's own header timer never covered), and each later one from the end of
//! the previous answer (an HTTP/2 connection: while no stream is open).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Limits, Redirect};
use crate::state::{Snapshot, State};

use super::activity::Activity;
use super::body::ResponseBody;
use super::request::{self, ConnInfo};
use super::takeover::{self, Taken};
use super::version::{self, Builders};

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

/// How a listener serves HTTP: hyper's builders and the time a connection has, from the moment
/// it is ready to serve (after any PROXY header and TLS handshake), to send its first request head.
pub struct Http {
    builders: Arc<Builders>,
    first_request: Duration,
}

impl Http {
    pub fn new(limits: &Limits) -> Http {
        Http {
            builders: Arc::new(builders(limits)),
            first_request: limits.header_read_timeout,
        }
    }

    /// hyper's HTTP/1.1 or HTTP/2 connection, as `io`'s first bytes say; `activity` is what its
    /// requests count in, `upgrade` where a `101`'s socket goes, `parked` counts it while parked.
    pub fn serve_connection<I: version::Io, S: version::Service>(
        &self,
        io: I,
        service: S,
        activity: &Activity,
        upgrade: Arc<version::UpgradeSlot>,
        parked: &Gauge,
    ) -> version::Connection<I, S> {
        let builders = Arc::clone(&self.builders);
        let setting = (activity.clone(), upgrade, parked.clone());
        version::Connection::new(io, service, builders, setting)
    }

    pub fn first_request(&self) -> Duration {
        self.first_request
    }
}

/// The [`Http`] of the snapshot current at each accept: rebuilt only when a reload has changed
/// the generation, so a reload applies to new connections.
pub struct CurrentHttp {
    generation: u64,
    http: Arc<Http>,
}

impl CurrentHttp {
    pub fn new(snapshot: &Snapshot) -> CurrentHttp {
        CurrentHttp {
            generation: snapshot.generation,
            http: Arc::new(Http::new(&snapshot.config.limits)),
        }
    }

    pub fn of(&mut self, snapshot: &Snapshot) -> Arc<Http> {
        if snapshot.generation != self.generation {
            *self = CurrentHttp::new(snapshot);
        }
        Arc::clone(&self.http)
    }
}

/// At shutdown, how long a connection accepted before it may take to send its first request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// How long an HTTP/1 connection waits for its next request in hyper before it parks (drops
/// hyper's buffers; `version`). Long enough that a client sending request after request never
/// pays for setting hyper up again, short next to any keep-alive timeout.
const PARK_AFTER: Duration = Duration::from_secs(1);

fn builders(limits: &Limits) -> Builders {
    let mut http1 = http1::Builder::new();
    // hyper answers 431 itself when the head outgrows the read buffer or has too many fields.
    // Its header timer is off: `drive` bounds the wait for every head, with one lazily re-armed
    // timer per connection instead of one per request.
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(limits.max_header_size)
        .max_headers(limits.max_headers);
    // The header list bound also caps CONTINUATION floods: h2 stops decoding past it.
    let max_header_list = u32::try_from(limits.max_header_size).unwrap_or(u32::MAX);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(max_header_list)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    Builders {
        http1,
        http2,
        park_after: PARK_AFTER,
    }
}

/// An open client connection, counted in `switchyard_connections_open` and holding its place
/// under `max_connections` until dropped: by [`serve`], or by the pump of a stream taken over.
struct OpenConnection {
    state: Arc<State>,
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(state: Arc<State>, permit: OwnedSemaphorePermit) -> OpenConnection {
        state.metrics.connections_open.inc();
        OpenConnection {
            state,
            _permit: permit,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.state.metrics.connections_open.dec();
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn serve<IO>(
    io: IO,
    conn: ConnInfo,
    redirect: Option<Redirect>,
    state: Arc<State>,
    http: Arc<Http>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
    takeover: oneshot::Receiver<Taken>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = OpenConnection::new(Arc::clone(&state), permit);
    let conn = Arc::new(conn);
    let service_state = Arc::clone(&state);
    let redirect = redirect.map(Arc::new);
    let activity = Activity::new(conn.body_read.clone());
    let upgrade = Arc::clone(&conn.upgrade);
    let requests = activity.clone();
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let open = requests.request(&request);
        let state = Arc::clone(&service_state);
        let conn = Arc::clone(&conn);
        let redirect = redirect.clone();
        // Boxed: hyper keeps a slot the size of the service future for the whole connection, so
        // an unboxed one would hold a whole request's state per idle keep-alive or SSE connection.
        Box::pin(async move {
            let response = match redirect {
                Some(redirect) => redirect_response(&redirect, &request),
                None => request::handle(state, conn, request).await,
            };
            Ok::<_, Infallible>(response.map(|body| body.count(open)))
        })
    });
    let parked = &state.metrics.connections_parked;
    let connection = http.serve_connection(io, service, &activity, upgrade, parked);
    tokio::pin!(connection);
    let served = drive(
        connection.as_mut(),
        |connection| connection.graceful_shutdown(),
        &activity,
        http.first_request,
        &shutdown,
    );
    let taken = tokio::select! {
        ended = served => {
            if ended == Ended::NoRequest {
                state
                    .metrics
                    .client_errors
                    .get_or_create(&crate::metrics::ReasonLabels { reason: "no_request" })
                    .inc();
            }
            None
        }
        Ok(taken) = takeover => Some(taken),
    };
    // hyper's connection (buffers, timers, this request's future) is dropped with the socket
    // taken from it; the stream goes on in a task of its own that holds only what it sends.
    if let Some(taken) = taken
        && let Some(stream) = connection.as_mut().take_socket()
    {
        state.tasks.spawn(takeover::pump(stream, taken, open));
    }
}

/// Runs a hyper connection to its end: closed without an answer if no request head arrived
/// within `first_request`, shut down gracefully when `shutdown` is cancelled.
///
/// After the first request, one timer keeps the same bound between requests: a connection with
/// no open request for `first_request` (an idle keep-alive, or a slowloris head after a first
/// request) is closed, an HTTP/2 one with GOAWAY (hyper alone keeps it for as long as the client
/// answers pings; nginx's `keepalive_timeout` applies to HTTP/2 too). The timer is looked at
/// only when it fires and then re-armed from the last request's end, so a request costs a
/// reference count, three atomic updates and a clock read, not a timer of its own as hyper's
/// header timer did (set and cleared in the runtime's timer wheel per request).
///
/// A connection still waiting for its first request when `shutdown` comes (a TLS client one
/// round trip behind, or just a slow one) keeps waiting for [`FIRST_REQUEST_GRACE`] at most, so
/// a request sent just before the signal is answered.
pub async fn drive<C, E>(
    mut connection: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    first_request: Duration,
    shutdown: &CancellationToken,
) -> Ended
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let first_deadline = Some(tokio::time::sleep(first_request));
    tokio::pin!(first_deadline);
    let idle_check: Option<tokio::time::Sleep> = None;
    tokio::pin!(idle_check);
    let mut shutting_down = false;
    let result = loop {
        let watching = first_deadline.is_some();
        let idle_watching = idle_check.is_some() && !shutting_down;
        tokio::select! {
            // The connection first: it is what wakes the task nearly every time.
            biased;
            result = connection.as_mut() => break result,
            () = until_cancelled(shutdown), if !shutting_down => {
                shutting_down = true;
                match first_deadline.as_mut().as_pin_mut() {
                    Some(deadline) if !activity.has_arrived() => {
                        let grace_end = Instant::now() + FIRST_REQUEST_GRACE;
                        if grace_end < deadline.deadline() {
                            deadline.reset(grace_end);
                        }
                    }
                    _ => graceful_shutdown(connection.as_mut()),
                }
            }
            arrived = first_or_deadline(activity, first_deadline.as_mut()), if watching => {
                if !arrived {
                    tracing::debug!(?first_request, "no request head in time; connection closed");
                    return Ended::NoRequest;
                }
                first_deadline.set(None);
                if shutting_down {
                    graceful_shutdown(connection.as_mut());
                }
                idle_check.set(Some(tokio::time::sleep(first_request)));
            }
            () = until_due(idle_check.as_mut()), if idle_watching => {
                let now = Instant::now();
                match activity.idle_since() {
                    Some(since) if now.saturating_duration_since(since) >= first_request => {
                        if !activity.is_http2() {
                            // As hyper's header timer did: an HTTP/1 connection that has not
                            // sent its next head in time (idle keep-alive or slowloris) is closed.
                            tracing::debug!(idle = ?first_request, "no next request head in time");
                            break Ok(());
                        }
                        tracing::debug!(idle = ?first_request, "HTTP/2 connection idle; GOAWAY");
                        graceful_shutdown(connection.as_mut());
                        idle_check.set(None);
                    }
                    Some(since) => reset(idle_check.as_mut(), since + first_request),
                    // A stream is open: look again later.
                    None => reset(idle_check.as_mut(), now + first_request),
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "client connection ended with an error");
    }
    Ended::Closed
}

/// How [`drive`] ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Served to its end: closed by either side, by an error, or by a shutdown.
    Closed,
    /// Closed by the first-request timer: no request head arrived.
    NoRequest,
}

/// Waits for the timer in `slot`; never, if there is none.
/// When the timer in `slot` fires; never without one. Polled on each wake-up of a busy
/// connection, it looks at the timer only when it has fired (an atomic load) or the task's
/// waker is not the one the timer holds ([`needs_poll`]).
async fn until_due(mut slot: Pin<&mut Option<tokio::time::Sleep>>) {
    let mut seen = None;
    std::future::poll_fn(|cx| {
        let Some(sleep) = slot.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        if !needs_poll(&mut seen, cx) && !sleep.is_elapsed() {
            return Poll::Pending;
        }
        sleep.poll(cx)
    })
    .await
}

/// When `shutdown` is cancelled. tokio's signal takes a lock each time it is looked at; this
/// looks at the token's flag instead once the signal holds the task's waker.
async fn until_cancelled(shutdown: &CancellationToken) {
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    let mut seen = None;
    std::future::poll_fn(|cx| {
        if !needs_poll(&mut seen, cx) && !shutdown.is_cancelled() {
            return Poll::Pending;
        }
        cancelled.as_mut().poll(cx)
    })
    .await
}

/// Whether a future that keeps the waker of its last poll and wakes it itself (a timer, a
/// cancellation) must be polled to learn more: only on the first poll, or when the task polls
/// with another waker than the one it holds.
fn needs_poll(seen: &mut Option<Waker>, cx: &Context<'_>) -> bool {
    if seen
        .as_ref()
        .is_some_and(|waker| waker.will_wake(cx.waker()))
    {
        return false;
    }
    *seen = Some(cx.waker().clone());
    true
}

fn reset(mut slot: Pin<&mut Option<tokio::time::Sleep>>, at: Instant) {
    if let Some(sleep) = slot.as_mut().as_pin_mut() {
        sleep.reset(at);
    }
}

/// `true` as soon as the first request has arrived, `false` when the deadline passes first.
async fn first_or_deadline(
    activity: &Activity,
    mut deadline: Pin<&mut Option<tokio::time::Sleep>>,
) -> bool {
    std::future::poll_fn(|cx| {
        if activity.has_arrived() {
            return Poll::Ready(true);
        }
        match deadline.as_mut().as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| false),
            None => Poll::Ready(true),
        }
    })
    .await
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        (Arc::clone(&wakes), Waker::from(wakes))
    }

    fn poll<F: Future>(future: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_shutdown_wakes_the_last_waker_the_connection_polled_with() {
        let token = CancellationToken::new();
        let mut until = std::pin::pin!(until_cancelled(&token));
        let (first_wakes, first) = waker();
        assert!(poll(until.as_mut(), &first).is_pending());
        assert!(poll(until.as_mut(), &first).is_pending());
        let (second_wakes, second) = waker();
        assert!(poll(until.as_mut(), &second).is_pending());
        token.cancel();
        assert_eq!(second_wakes.0.load(Ordering::SeqCst), 1, "the waker in use");
        assert_eq!(first_wakes.0.load(Ordering::SeqCst), 0);
        assert!(poll(until.as_mut(), &second).is_ready());
    }

    #[tokio::test]
    async fn a_timer_looked_at_only_once_it_fired_still_ends_the_wait() {
        let mut slot = std::pin::pin!(Some(tokio::time::sleep(Duration::from_millis(20))));
        let mut until = std::pin::pin!(until_due(slot.as_mut()));
        let (wakes, waker) = waker();
        assert!(poll(until.as_mut(), &waker).is_pending());
        assert!(poll(until.as_mut(), &waker).is_pending());
        let deadline = Instant::now() + Duration::from_secs(10);
        while wakes.0.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the timer never fired");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(poll(until.as_mut(), &waker).is_ready());
    }

    #[tokio::test]
    async fn without_a_timer_the_wait_never_ends() {
        let mut slot = std::pin::pin!(None::<tokio::time::Sleep>);
        let mut until = std::pin::pin!(until_due(slot.as_mut()));
        let (_, waker) = waker();
        assert!(poll(until.as_mut(), &waker).is_pending());
    }
}
