//! One request through the proxy, in phases that read top to bottom:
//!
//! 1. [`handle`] reads what the request is ([`RequestMeta`]: class, session, sealed token) from
//!    the one snapshot it will see throughout;
//! 2. [`route`] decides who may take it: the session's owner, or a pick from the active pools;
//! 3. [`send_with_retry`] sends it, to another backend if the first never received it;
//! 4. [`respond::shape`](super::respond::shape) learns or seals the session and wraps the body
//!    so that the in-flight guard lives until the last byte.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::mcp::classify::{RouteClass, classify};
use crate::mcp::seal::{Opened, Unsealed, unseal_request};
use crate::mcp::session::{session_id, session_tag};
use crate::state::{Snapshot, State};
use crate::upstream::backend::{InFlightGuard, SendTimeouts, TimedExchange, UpstreamError};
use crate::upstream::balance::Target;
use crate::upstream::body::{BodyError, RequestBody};

use super::body::{AccessLog, ResponseBody};
use super::error::ProxyError;
use super::headers::{client_ip, upstream_request};
use super::respond;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client: the TCP peer, or the address a PROXY protocol header gave.
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Everything about the request that the later phases still need once its head is gone.
pub(super) struct RequestMeta {
    pub class: RouteClass,
    pub method: http::Method,
    pub session: Option<String>,
    /// When the request came; also when its first attempt was sent, for the response deadline
    /// and the upstream latency (a clock read saved: routing takes microseconds).
    pub started: Instant,
    /// The session as the client named it and what it opened to, when sealing is on.
    pub sealed: Option<(String, Opened)>,
    /// The client named a session whose token does not open: never routed.
    pub forged: bool,
    /// Read only when the access log is on; the response's record takes it.
    pub log: Option<Box<AccessLog>>,
}

impl RequestMeta {
    /// Reads the request once; a sealed session token is opened and the original id put back
    /// into the request, so the backend sees what it minted.
    fn read(snapshot: &Snapshot, request: &mut Request<Incoming>) -> RequestMeta {
        let class = classify(request.method(), request.headers());
        let (sealed, forged) = match unseal_request(snapshot.sealer.as_deref(), request) {
            Unsealed::Opened { token, opened } => (Some((token, opened)), false),
            Unsealed::Invalid => (None, true),
            Unsealed::Plain => (None, false),
        };
        let session = session_id(request.headers(), request.uri().query()).map(str::to_owned);
        let log = AccessLog::enabled().then(|| {
            Box::new(AccessLog {
                method: request.method().clone(),
                path: request.uri().path().into(),
                session: None,
            })
        });
        RequestMeta {
            class,
            method: request.method().clone(),
            session,
            started: Instant::now(),
            sealed,
            forged,
            log,
        }
    }
}

/// Who may take a request: its session's owner, or any backend the active pools offer.
enum Route {
    Owner(Arc<Target>),
    /// New work; `hash_client` is set for streams, which are placed by client address.
    NewWork {
        hash_client: Option<std::net::IpAddr>,
    },
}

pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
) -> Response<ResponseBody> {
    let snapshot = state.snapshot();
    let mut meta = RequestMeta::read(&snapshot, &mut request);
    match proxy(&state, &snapshot, &conn, request, &mut meta).await {
        Ok(response) => response,
        Err(error) => answer_error(&state, &meta, error),
    }
}

async fn proxy(
    state: &Arc<State>,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    mut request: Request<Incoming>,
    meta: &mut RequestMeta,
) -> Result<Response<ResponseBody>, ProxyError> {
    let config = &snapshot.config;
    // A body announced too large is refused before any backend is involved; one that grows too
    // large mid-stream is cut by RequestBody and answered 413 when the send fails.
    let body_limit = config.limits.max_request_body;
    if let Some(limit) = body_limit
        && http_body::Body::size_hint(request.body()).lower() > limit
    {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let client_ip = client_ip(conn.peer.ip(), request.headers(), &config.trusted_proxies);
    let route = route(state, snapshot, meta, client_ip)?;
    let client_upgrade =
        (meta.class == RouteClass::WebSocket).then(|| hyper::upgrade::on(&mut request));
    let bytes_in = state.metrics.bytes_in.clone();
    let outgoing = upstream_request(request, conn, client_ip, config, body_limit, bytes_in);
    let sent = send_with_retry(state, snapshot, &route, outgoing, meta.started).await?;
    Ok(respond::shape(state, snapshot, meta, sent, client_upgrade))
}

/// Phase 2: a request naming a session goes to its owner or gets `404`; anything else is new
/// work for the active pools.
fn route(
    state: &State,
    snapshot: &Snapshot,
    meta: &RequestMeta,
    client_ip: std::net::IpAddr,
) -> Result<Route, ProxyError> {
    if meta.forged {
        state.metrics.session_tokens_rejected.inc();
        return Err(ProxyError::SessionNotFound);
    }
    if let Some(id) = &meta.session {
        let sealed_owner = meta.sealed.as_ref().map(|(_, o)| o.owner.as_str());
        return session_owner(state, snapshot, id, sealed_owner).map(Route::Owner);
    }
    let hash_client = meta.class.uses_client_hash().then_some(client_ip);
    Ok(Route::NewWork { hash_client })
}

/// The backend that owns session `id`, or `404` if it is unknown or its owner is gone for good.
/// A sealed token names its owner itself; otherwise the session table knows it.
fn session_owner(
    state: &State,
    snapshot: &Snapshot,
    id: &str,
    sealed_owner: Option<&str>,
) -> Result<Arc<Target>, ProxyError> {
    let owner = match sealed_owner {
        Some(address) => snapshot.target(address).cloned(),
        None => state
            .sessions
            .owner(id)
            .and_then(|address| snapshot.target(&address).cloned()),
    };
    match owner {
        Some(target)
            if target.backend.serves_its_sessions()
                || snapshot.fail_open_serves(&target.backend) =>
        {
            Ok(target)
        }
        found => {
            if found.is_some() && state.sessions.forget(id) {
                state.metrics.sessions_forgotten.inc();
            }
            state.metrics.sessions_lost.inc();
            Err(ProxyError::SessionNotFound)
        }
    }
}

/// A response head from a backend, with what its body must carry to the end.
pub(super) struct Sent {
    pub guard: InFlightGuard,
    pub timed: TimedExchange,
    pub target: Arc<Target>,
}

/// Phase 3: sends to the routed backend. New work that failed before the backend received it
/// is sent to another one, up to `upstream.retries` times; a session's request never is.
async fn send_with_retry(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
    mut outgoing: Request<RequestBody>,
    started: Instant,
) -> Result<Sent, ProxyError> {
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = None;
    loop {
        let target = match route {
            Route::Owner(owner) => Arc::clone(owner),
            Route::NewWork { hash_client } => {
                let picked = snapshot
                    .pick_new(*hash_client, &tried)
                    .or_else(|| snapshot.fail_open_pick(*hash_client, &tried));
                // Every candidate failed: report the last failure, not an empty pool.
                let Some(target) = picked else {
                    return Err(last_error.map_or(ProxyError::NoBackend, ProxyError::from));
                };
                target
            }
        };
        let sent = if tried.is_empty() {
            started
        } else {
            Instant::now()
        };
        let (error, unsent) = match send_once(state, snapshot, &target, outgoing, sent).await {
            Ok(sent) => return Ok(sent),
            Err(failed) => failed,
        };
        let retry = matches!(route, Route::NewWork { .. })
            && error.request_not_sent()
            && tried.len() < snapshot.config.upstream.retries;
        match unsent {
            Some(request) if retry => {
                tried.push(Arc::clone(&target.backend.address));
                outgoing = request;
                last_error = Some(error);
            }
            _ => return Err(error.into()),
        }
    }
}

type SendFailure = (UpstreamError, Option<Request<RequestBody>>);

/// One attempt on one backend, begun at `sent`; a failure is counted, and counted against the
/// backend's health unless the client caused it.
async fn send_once(
    state: &State,
    snapshot: &Snapshot,
    target: &Arc<Target>,
    outgoing: Request<RequestBody>,
    sent: Instant,
) -> Result<Sent, SendFailure> {
    let config = &snapshot.config;
    let backend = &target.backend;
    let guard = backend.start();
    let timeouts = SendTimeouts {
        connect: config.timeouts.connect,
        response: config.timeouts.response,
    };
    let result = backend
        .send_timed(
            outgoing,
            sent,
            timeouts,
            snapshot.pool_limits,
            snapshot.loaded.upstream_tls.as_ref(),
        )
        .await;
    match result {
        Ok(timed) => {
            let latency = timed.answered.saturating_duration_since(sent);
            target
                .metrics
                .observe_latency(&state.metrics, latency.as_secs_f64());
            Ok(Sent {
                guard,
                timed,
                target: Arc::clone(target),
            })
        }
        Err((error, unsent)) => {
            note_send_failure(state, snapshot, target, &error);
            Err((error, unsent))
        }
    }
}

fn note_send_failure(state: &State, snapshot: &Snapshot, target: &Target, error: &UpstreamError) {
    let backend = &target.backend;
    tracing::warn!(backend = %backend.address, %error, "upstream request failed");
    state
        .metrics
        .upstream_errors
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: error.kind(),
        })
        .inc();
    crate::upstream::health::note_request_failure(
        &state.metrics,
        &snapshot.config.health,
        target.pool(),
        backend,
        error,
    );
}

impl From<UpstreamError> for ProxyError {
    /// A client body that broke the size limit mid-stream is the client's `413`, not the
    /// backend's failure.
    fn from(error: UpstreamError) -> ProxyError {
        match error.client_body_error() {
            Some(BodyError::TooLarge { limit }) => ProxyError::BodyTooLarge { limit: *limit },
            _ => ProxyError::Upstream(error),
        }
    }
}

/// The answer when no backend response came: logged and counted like any other request.
fn answer_error(state: &State, meta: &RequestMeta, error: ProxyError) -> Response<ResponseBody> {
    let response = error.into_response();
    let status = response.status();
    tracing::info!(
        target: "access",
        method = %meta.method,
        path = meta.log.as_ref().map_or("", |log| &log.path),
        class = meta.class.as_str(),
        status = status.as_u16(),
        backend = "",
        pool = "",
        duration_ms = meta.started.elapsed().as_secs_f64() * 1000.0,
        bytes = 0u64,
        session = meta.session.as_deref().map(session_tag).unwrap_or_default(),
        error = %status.canonical_reason().unwrap_or("error"),
        outcome = "proxy_error",
    );
    respond::count_request(state, meta.class, status, "", "");
    response
}
