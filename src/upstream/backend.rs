//! Backends: live counters, health flags, and a pool of keep-alive HTTP/1.1 connections.
//!
//! A [`Backend`] outlives config reloads: the snapshot builder reuses the same `Arc<Backend>` for
//! an address that stays, so its counters, health and idle connections carry over.
//!
//! The connection pool is ours because the proxy must retry a request on another backend when
//! the connection fails before the backend can have seen it, and the connections are our own
//! HTTP/1.1 client's ([`crate::upstream::h1`]), which hold no buffers while idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::upstream::body::{BodyError, Upload};
use crate::upstream::h1::io::Io;
use crate::upstream::h1::{H1Body, H1Conn, H1Error, Outbound, SendError};

/// One upstream server, identified by the address as written in the config.
#[derive(Debug)]
pub struct Backend {
    pub address: Arc<str>,
    pub authority: Authority,
    /// `authority` as a `Host` value, for routes that send the backend its own name.
    pub host_header: http::HeaderValue,
    /// Written `https://host:port`: connections are TLS, verified against the upstream roots.
    pub tls: bool,
    /// Mixed into the client hash by the consistent ring; fixed per address so replicas agree.
    pub ring_key: u64,
    in_flight: AtomicUsize,
    open_streams: AtomicUsize,
    requests: AtomicU64,
    healthy: AtomicBool,
    /// Probe streaks, passive failure window and ejection deadline (see `health.rs`).
    pub health: crate::upstream::health::Health,
    drained_by_admin: AtomicBool,
    /// Set when the backend left the config and its drain ended: its sessions are lost.
    gone: AtomicBool,
    stream_root: CancellationToken,
    /// Streams watch the token current when they opened; closing streams cancels it and puts a
    /// fresh one in place for streams that open later.
    streams: Mutex<CancellationToken>,
    /// Parked keep-alive connections, newest last. Check-out and check-in are a push or a pop
    /// under an uncontended lock; expired and closed ones are pruned by the periodic task.
    idle: Mutex<Vec<IdleConnection>>,
}

#[derive(Debug)]
struct IdleConnection {
    conn: H1Conn,
    since: Instant,
}

/// Why no response came from a backend. Every variant maps to a status in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {address} failed: {source}")]
    Connect {
        address: Arc<str>,
        source: std::io::Error,
    },
    #[error("connect to {address} timed out")]
    ConnectTimeout { address: Arc<str> },
    #[error("{address} did not answer within {timeout:?}")]
    ResponseTimeout {
        address: Arc<str>,
        timeout: Duration,
    },
    /// The response timeout ran out while the proxy was still waiting for the client's body.
    #[error("the client's body for {address} stalled; no response within {timeout:?}")]
    ClientStalled {
        address: Arc<str>,
        timeout: Duration,
    },
    #[error("{address} failed the request: {source}")]
    Request {
        address: Arc<str>,
        source: H1Error,
        /// The proxy was waiting for the client's body when it happened (e.g. the backend's own
        /// body timeout gave up on a slow client).
        awaiting_client: bool,
    },
    #[error("{address} sent an invalid response: {reason}")]
    InvalidResponse {
        address: Arc<str>,
        reason: &'static str,
    },
}

/// What a client did wrong when an exchange failed because of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Its body grew past `limits.max_request_body`.
    BodyTooLarge { limit: u64 },
    /// Its body could not be read: bad chunk framing, or the connection ended mid-body.
    BodyBroken,
    /// Its body stopped arriving: for `timeouts.client_body` between reads, or for as long as
    /// the response timeout while the backend waited for it.
    BodyStalled,
}

impl ClientFault {
    /// The `reason` label of `switchyard_client_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientFault::BodyTooLarge { .. } => "body_too_large",
            ClientFault::BodyBroken => "body_error",
            ClientFault::BodyStalled => "body_timeout",
        }
    }
}

impl UpstreamError {
    /// The client's own body failed (broke, or broke the size limit): not the backend's fault.
    fn client_body_error(&self) -> Option<&BodyError> {
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            if let Some(error) = cause.downcast_ref::<BodyError>() {
                return Some(error);
            }
            source = cause.source();
        }
        None
    }

    /// The client's part in the failure, if it caused it.
    pub fn client_fault(&self) -> Option<ClientFault> {
        if matches!(self, UpstreamError::ClientStalled { .. }) {
            return Some(ClientFault::BodyStalled);
        }
        Some(match self.client_body_error()? {
            BodyError::TooLarge { limit } => ClientFault::BodyTooLarge { limit: *limit },
            BodyError::Idle { .. } => ClientFault::BodyStalled,
            BodyError::Hyper(_) => ClientFault::BodyBroken,
        })
    }

    /// Does passive health hold this against the backend? Only what the backend did wrong: it
    /// refused or dropped the connection, failed the TLS handshake, reset the connection
    /// or sent a malformed answer before its response head. A slow answer is not (a long tool
    /// call is legitimate; hung backends are the probes' to find), nor anything the client did.
    pub fn counts_against_backend(&self) -> bool {
        if self.client_fault().is_some() {
            return false;
        }
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::InvalidResponse { .. } => true,
            UpstreamError::Request {
                awaiting_client, ..
            } => !awaiting_client,
            UpstreamError::ResponseTimeout { .. } | UpstreamError::ClientStalled { .. } => false,
        }
    }

    /// The `outcome` label of `switchyard_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::ResponseTimeout { .. } => "response_timeout",
            UpstreamError::ClientStalled { .. } => "client_stalled",
            UpstreamError::Request { .. } => "request",
            UpstreamError::InvalidResponse { .. } => "invalid_response",
        }
    }

    /// True when the backend never received the request, so sending it elsewhere is safe.
    pub fn request_not_sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }
}

impl Backend {
    pub fn new(address: &str, stream_root: &CancellationToken) -> Option<Arc<Backend>> {
        let tls_address = address.strip_prefix("https://");
        let authority: Authority = tls_address.unwrap_or(address).parse().ok()?;
        let host_header = http::HeaderValue::from_str(authority.as_str()).ok()?;
        Some(Arc::new(Backend {
            host_header,
            address: Arc::from(address),
            ring_key: crate::mcp::hash::stable_hash(address.as_bytes()),
            authority,
            tls: tls_address.is_some(),
            in_flight: AtomicUsize::new(0),
            open_streams: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            health: crate::upstream::health::Health::default(),
            drained_by_admin: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            stream_root: stream_root.clone(),
            streams: Mutex::new(stream_root.child_token()),
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Requests plus open streams: the least-connections load.
    pub fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    pub fn requests_served(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Passing its probes (or not probed) and not ejected by failures of real traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.health.is_ejected()
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Sets the probe verdict, returning the previous one, so exactly one caller sees a flip.
    pub fn swap_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    pub fn is_drained_by_admin(&self) -> bool {
        self.drained_by_admin.load(Ordering::Relaxed)
    }

    pub fn set_drained_by_admin(&self, drained: bool) {
        self.drained_by_admin.store(drained, Ordering::Relaxed);
    }

    /// May this backend take work that is not bound to one of its sessions?
    pub fn takes_new_work(&self) -> bool {
        self.is_healthy() && !self.is_drained_by_admin() && !self.is_gone()
    }

    /// May this backend serve requests of sessions it owns?
    pub fn serves_its_sessions(&self) -> bool {
        self.is_healthy() && !self.is_gone()
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// The token a stream opening now must watch: cancelled when it has to close.
    pub fn stream_token(&self) -> CancellationToken {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks every stream open on this backend to close at its next event boundary.
    pub fn close_streams(&self) {
        let mut current = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        current.cancel();
        *current = self.stream_root.child_token();
    }

    /// The end of a removed backend: its streams close, its sessions are lost.
    pub fn retire(&self) {
        self.gone.store(true, Ordering::Relaxed);
        self.close_streams();
        self.close_idle();
    }

    /// Counts one request until the guard drops (at end of response body, or disconnect).
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            backend: Arc::clone(self),
            stream: false,
        }
    }

    /// Sends `request` on a pooled or new connection, waiting at most `response_timeout` for the
    /// head (health probes; the request path uses [`Backend::send_timed`]).
    pub async fn send(
        &self,
        request: Box<Outbound>,
        connect_timeout: Duration,
        response_timeout: Duration,
        limits: PoolLimits,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Exchange, (UpstreamError, Option<Box<Outbound>>)> {
        let timeouts = SendTimeouts {
            connect: connect_timeout,
            response: response_timeout,
        };
        self.send_timed(request, Instant::now(), timeouts, limits, tls)
            .await
            .map(|timed| timed.exchange)
    }

    /// Sends `request` on a pooled or new connection. The exchange began at `sent`; its response
    /// head must come within `timeouts.response` of it (of the connect, on a new connection).
    /// One timer enforces that, and it comes back with the response for the body to reuse.
    ///
    /// On a failure before the request left, the request is handed back for a retry elsewhere.
    pub async fn send_timed(
        &self,
        mut request: Box<Outbound>,
        sent: Instant,
        timeouts: SendTimeouts,
        limits: PoolLimits,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<TimedExchange, (UpstreamError, Option<Box<Outbound>>)> {
        let upload = request.request.body().upload();
        let awaiting_client = || upload.as_ref().is_some_and(Upload::awaits_client);
        let mut deadline = Box::pin(tokio::time::sleep_until(later(sent, timeouts.response)));
        // A pooled connection may have been closed by the backend a moment ago; a request it
        // cannot have seen then goes to the next connection.
        loop {
            let (conn, fresh) = match self.checkout(limits, sent) {
                Some(conn) => (conn, false),
                // Boxed: a connect's state is larger than a whole exchange's, and only new
                // connections need it; unboxed, every request's future would carry its room.
                None => match Box::pin(self.connect(timeouts.connect, tls)).await {
                    Ok(conn) => {
                        let now = Instant::now();
                        deadline.as_mut().reset(later(now, timeouts.response));
                        (conn, true)
                    }
                    Err(error) => return Err((error, Some(request))),
                },
            };
            let work = std::pin::pin!(conn.send(request));
            match (Until {
                work,
                deadline: deadline.as_mut(),
            })
            .await
            {
                Some(Ok(response)) => {
                    return Ok(TimedExchange {
                        exchange: Exchange { response },
                        timer: deadline,
                        answered: Instant::now(),
                    });
                }
                Some(Err(SendError { error, unsent })) => match unsent {
                    Some(unsent) if !fresh => request = unsent,
                    unsent => return Err((self.failed(error, awaiting_client()), unsent)),
                },
                None => return Err((self.timed_out(timeouts, awaiting_client()), None)),
            }
        }
    }

    /// An exchange that failed on the connection: a malformed answer, or the connection broke.
    fn failed(&self, error: H1Error, awaiting_client: bool) -> UpstreamError {
        let address = Arc::clone(&self.address);
        match error {
            H1Error::Invalid(reason) => UpstreamError::InvalidResponse { address, reason },
            source => UpstreamError::Request {
                address,
                source,
                awaiting_client,
            },
        }
    }

    /// The response deadline passed: the client's fault while its upload still stalled the
    /// backend, else the backend's.
    fn timed_out(&self, timeouts: SendTimeouts, awaiting_client: bool) -> UpstreamError {
        let address = Arc::clone(&self.address);
        let timeout = timeouts.response;
        if awaiting_client {
            UpstreamError::ClientStalled { address, timeout }
        } else {
            UpstreamError::ResponseTimeout { address, timeout }
        }
    }

    /// The newest parked connection that is open and not past the idle timeout at `now`.
    pub fn checkout(&self, limits: PoolLimits, now: Instant) -> Option<H1Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut idle_conn) = idle.pop() {
            // Past the idle timeout the backend may be closing it right now: not worth the race.
            // The newest one being that old, so are all the others.
            if now.saturating_duration_since(idle_conn.since) >= limits.idle_timeout {
                idle.clear();
                return None;
            }
            if !idle_conn.conn.is_stale() {
                return Some(idle_conn.conn);
            }
        }
        None
    }

    /// Parks a connection whose response was read to the end, for the next request.
    pub fn checkin(&self, conn: H1Conn, limits: PoolLimits) {
        self.checkin_at(conn, limits, Instant::now());
    }

    /// Parks a connection whose response was read to the end, idle since `since`, for the next
    /// request.
    pub fn checkin_at(&self, conn: H1Conn, limits: PoolLimits, since: Instant) {
        if limits.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < limits.max_idle {
            idle.push(IdleConnection { conn, since });
        }
    }

    /// Drops parked connections that are closed or idle past the timeout (the periodic task).
    pub fn prune_idle(&self, limits: PoolLimits, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain_mut(|c| {
            now.saturating_duration_since(c.since) < limits.idle_timeout && !c.conn.is_stale()
        });
    }

    /// Keep-alive connections parked for reuse (those in use are counted by `load`).
    pub fn idle_connections(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Drops idle connections, e.g. when the backend left the config.
    pub fn close_idle(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// A new connection: TCP, then TLS for `https://` backends (within the same connect timeout).
    async fn connect(
        &self,
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<H1Conn, UpstreamError> {
        let address = || Arc::clone(&self.address);
        let host = self.authority.host();
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.tls { 443 } else { 80 });
        let deadline = tokio::time::Instant::now() + timeout;
        let stream =
            connect_step(deadline, &self.address, TcpStream::connect((host, port))).await?;
        let _ = stream.set_nodelay(true);
        if !self.tls {
            return Ok(H1Conn::new(Io::Plain(stream)));
        }
        let Some(config) = tls else {
            return Err(UpstreamError::Connect {
                address: address(),
                source: std::io::Error::other("no TLS client configuration for an https backend"),
            });
        };
        // IPv6 literals come bracketed in the authority; the server name wants them bare.
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let server_name =
            rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|error| {
                UpstreamError::Connect {
                    address: address(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error),
                }
            })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
        let stream = connect_step(
            deadline,
            &self.address,
            connector.connect(server_name, stream),
        )
        .await?;
        Ok(H1Conn::new(Io::Tls(Box::new(stream))))
    }
}

/// One step of connecting (TCP, then TLS), bounded by the connect deadline shared by all steps.
async fn connect_step<T>(
    deadline: tokio::time::Instant,
    address: &Arc<str>,
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, UpstreamError> {
    let address = || Arc::clone(address);
    tokio::time::timeout_at(deadline, step)
        .await
        .map_err(|_| UpstreamError::ConnectTimeout { address: address() })?
        .map_err(|source| UpstreamError::Connect {
            address: address(),
            source,
        })
}

/// `work`, or `None` once `deadline` passes; `work` goes first when both are ready. A struct
/// over pinned references rather than an `async fn` with `select!`, which would hold `work` twice
/// in every request's future.
struct Until<'w, 'd, F> {
    work: Pin<&'w mut F>,
    deadline: Pin<&'d mut Sleep>,
}

impl<F: Future> Future for Until<'_, '_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        self.deadline.as_mut().poll(cx).map(|()| None)
    }
}

/// `start + wait`, or as late as an `Instant` goes for a wait too long to matter.
pub fn later(start: Instant, wait: Duration) -> Instant {
    start
        .checked_add(wait)
        .or_else(|| start.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(start)
}

/// A response head; its body reads on from the connection, which it gives back at its end.
pub struct Exchange {
    pub response: http::Response<H1Body>,
}

/// An [`Exchange`] with the timer that bounded it.
pub struct TimedExchange {
    pub exchange: Exchange,
    /// Still armed at the response deadline: the response body re-arms it for its own timeouts.
    pub timer: Pin<Box<Sleep>>,
    /// When the response head came.
    pub answered: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct SendTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

/// One unit of least-connections load; marks a stream too once the response turns out to be one.
#[derive(Debug)]
pub struct InFlightGuard {
    backend: Arc<Backend>,
    stream: bool,
}

impl InFlightGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    pub fn mark_stream(&mut self) {
        if !self.stream {
            self.stream = true;
            self.backend.open_streams.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.stream {
            self.backend.open_streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
