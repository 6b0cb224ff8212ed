//! One request through the proxy, in phases that read top to bottom:
//!
//! 1. [`handle`] reads what the request is ([`RequestMeta`]: class, session, sealed token, request
//!    id) from the one snapshot it will see throughout, and [`strict::check`](super::strict::check)
//!    refuses what a backend could read differently; with `[policy]`, [`admit`] then serves the
//!    protected-resource metadata, authenticates, learns the MCP calls and applies allow-lists and
//!    rate limits ([`super::policy`]);
//! 2. [`route`] decides who may take it: the session's owner, or a pick from the active pools;
//!    a request that may open a session reserves room for it in the table first;
//! 3. [`send_with_retry`] sends it, to another backend if the first never received it;
//! 4. [`respond::shape`](super::respond::shape) learns or seals the session and wraps the body
//!    so that the in-flight guard lives until the last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::mcp::classify::{RouteClass, classify};
use crate::mcp::seal::{Opened, Unsealed, unseal_request};
use crate::mcp::session::{SessionSlot, session_id, session_tag};
use crate::state::{Snapshot, State};
use crate::upstream::backend::{Backend, Exchange, InFlightGuard, UpstreamError};
use crate::upstream::body::{BodyLimits, RequestBody};

use super::body::ResponseBody;
use super::error::ProxyError;
use super::headers::{client_ip, upstream_request};
use super::request_id::RequestId;
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
    pub path: String,
    pub session: Option<String>,
    pub started: Instant,
    /// The session as the client named it and what it opened to, when sealing is on.
    pub sealed: Option<(String, Opened)>,
    /// The client named a session whose token does not open: never routed.
    pub forged: bool,
    pub request_id: RequestId,
    /// What `[policy]` learned of the request's MCP calls, for the log and metrics.
    pub mcp: Option<Arc<super::policy::observe::Observed>>,
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
        let request_id = RequestId::of(request.headers());
        RequestMeta {
            class,
            method: request.method().clone(),
            path: request.uri().path().to_string(),
            session,
            started: Instant::now(),
            sealed,
            forged,
            request_id,
            mcp: None,
        }
    }
}

/// Who may take a request: its session's owner, or any backend the active pools offer.
enum Route {
    Owner(Arc<Backend>),
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
    super::strict::check(&request, &config.limits)?;
    meta.request_id.stamp(request.headers_mut());
    // A body announced too large is refused before any backend is involved; one that grows too
    // large mid-stream is cut by RequestBody and answered 413 when the send fails.
    let body_limit = config.limits.max_request_body;
    if let Some(limit) = body_limit
        && http_body::Body::size_hint(request.body()).lower() > limit
    {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let client_ip = client_ip(conn.peer.ip(), request.headers(), &config.trusted_proxies);
    let admitted = match &snapshot.policy {
        Some(policy) => {
            if let Some(document) = super::policy::metadata_document(policy, &request) {
                return Ok(document);
            }
            Some(admit(state, snapshot, policy, client_ip, meta, &mut request).await?)
        }
        None => None,
    };
    let route = route(state, snapshot, meta, client_ip)?;
    let slot = reserve_session(state, snapshot, meta, &route)?;
    let client_upgrade =
        (meta.class == RouteClass::WebSocket).then(|| hyper::upgrade::on(&mut request));
    let bytes_in = state.metrics.bytes_in.clone();
    let limits = BodyLimits {
        max: body_limit,
        idle: config.timeouts.client_body,
    };
    let mut outgoing = upstream_request(request, conn, client_ip, config, limits, bytes_in);
    if let Some(admitted) = admitted {
        admitted.attach(outgoing.body_mut());
    }
    let (guard, exchange) = send_with_retry(state, snapshot, &route, outgoing, meta).await?;
    Ok(respond::shape(
        state,
        snapshot,
        meta,
        guard,
        exchange,
        client_upgrade,
        slot,
    ))
}

/// Phase 1b, with `[policy]` only: authenticate, learn the calls, apply allow-lists and limits.
async fn admit(
    state: &State,
    snapshot: &Snapshot,
    policy: &crate::state::policy::PolicyState,
    client_ip: std::net::IpAddr,
    meta: &mut RequestMeta,
    request: &mut Request<Incoming>,
) -> Result<super::policy::Admitted, ProxyError> {
    let session = meta.session.as_deref();
    match super::policy::admit(state, snapshot, policy, client_ip, session, request).await {
        Ok(admitted) => {
            meta.mcp = admitted.observed.clone();
            Ok(admitted)
        }
        Err((refusal, observed)) => {
            meta.mcp = observed;
            Err(ProxyError::Refused(Box::new(refusal)))
        }
    }
}

/// New work that may open a session (a `POST` such as `initialize`, a legacy `GET /sse` stream)
/// first reserves room for it, so every session handed to a client is one the table keeps; with
/// no room it is refused (`503`) before any backend mints one. Sealed sessions need no room: the
/// token itself routes them.
fn reserve_session(
    state: &State,
    snapshot: &Snapshot,
    meta: &RequestMeta,
    route: &Route,
) -> Result<Option<SessionSlot>, ProxyError> {
    let may_open = meta.method == http::Method::POST || meta.class == RouteClass::SseStream;
    if !may_open || !matches!(route, Route::NewWork { .. }) || snapshot.sealer.is_some() {
        return Ok(None);
    }
    match state.sessions.reserve() {
        Some(slot) => Ok(Some(slot)),
        None => {
            // Counted, not logged: whoever filled the table could otherwise flood the log too.
            state.metrics.sessions_refused.inc();
            Err(ProxyError::SessionTableFull)
        }
    }
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

/// The backend that owns session `id`, or `404` if it is unknown, or its owner is out (unhealthy
/// or ejected) or gone for good. A sealed token names its owner itself; otherwise the session
/// table knows it. Only an owner gone for good (removed from the config and drained away) makes
/// the table forget the session: one that is out for now may come back, and its sessions with it.
fn session_owner(
    state: &State,
    snapshot: &Snapshot,
    id: &str,
    sealed_owner: Option<&str>,
) -> Result<Arc<Backend>, ProxyError> {
    let learned = match sealed_owner {
        Some(_) => None,
        None => state.sessions.owner(id),
    };
    let Some(address) = sealed_owner.or(learned.as_deref()) else {
        state.metrics.sessions_lost.inc();
        return Err(ProxyError::SessionNotFound);
    };
    let owner = snapshot.backends.get(address);
    if let Some(backend) = owner
        && (backend.serves_its_sessions() || snapshot.fail_open_serves(backend))
    {
        return Ok(Arc::clone(backend));
    }
    let gone = owner.is_none_or(|backend| backend.is_gone());
    if gone && learned.is_some() && state.sessions.forget(id) {
        state.metrics.sessions_forgotten.inc();
    }
    state.metrics.sessions_lost.inc();
    Err(ProxyError::SessionNotFound)
}

/// Phase 3: sends to the routed backend. New work that failed before the backend received it
/// is sent to another one, up to `upstream.retries` times; a session's request never is.
async fn send_with_retry(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
    mut outgoing: Request<RequestBody>,
    meta: &RequestMeta,
) -> Result<(InFlightGuard, Exchange), ProxyError> {
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = None;
    loop {
        let backend = match route {
            Route::Owner(owner) => Arc::clone(owner),
            Route::NewWork { hash_client } => {
                let picked = snapshot
                    .pick_new(*hash_client, &tried)
                    .or_else(|| snapshot.fail_open_pick(*hash_client, &tried));
                // Every candidate failed: report the last failure, not an empty pool.
                let Some(backend) = picked else {
                    return Err(last_error.map_or(ProxyError::NoBackend, ProxyError::from));
                };
                backend
            }
        };
        let sent = send_once(state, snapshot, &backend, outgoing, meta).await;
        let (error, unsent) = match sent {
            Ok(sent) => return Ok(sent),
            Err(failed) => failed,
        };
        let retry = matches!(route, Route::NewWork { .. })
            && error.request_not_sent()
            && tried.len() < snapshot.config.upstream.retries;
        match unsent {
            Some(request) if retry => {
                tried.push(Arc::clone(&backend.address));
                outgoing = request;
                last_error = Some(error);
            }
            _ => return Err(error.into()),
        }
    }
}

type SendFailure = (UpstreamError, Option<Request<RequestBody>>);

/// One attempt on one backend; a failure is counted, and counted against the backend's health
/// unless the client caused it.
async fn send_once(
    state: &State,
    snapshot: &Snapshot,
    backend: &Arc<Backend>,
    outgoing: Request<RequestBody>,
    meta: &RequestMeta,
) -> Result<(InFlightGuard, Exchange), SendFailure> {
    let config = &snapshot.config;
    let guard = backend.start();
    let sent = Instant::now();
    let result = backend
        .send(
            outgoing,
            config.timeouts.connect,
            config.timeouts.response,
            snapshot.pool_limits,
            snapshot.loaded.upstream_tls.as_ref(),
        )
        .await;
    match result {
        Ok(exchange) => {
            state
                .metrics
                .upstream_latency
                .get_or_create(&crate::metrics::BackendLabels {
                    pool: snapshot.pool_of(backend).to_string(),
                    backend: backend.address.to_string(),
                })
                .observe(sent.elapsed().as_secs_f64());
            Ok((guard, exchange))
        }
        Err((error, unsent)) => {
            note_send_failure(state, snapshot, backend, &error, meta);
            Err((error, unsent))
        }
    }
}

/// Logs the details (never sent to the client) and counts a failure that was the backend's
/// side of the exchange; one the client caused is counted by [`answer_error`] instead.
fn note_send_failure(
    state: &State,
    snapshot: &Snapshot,
    backend: &Arc<Backend>,
    error: &UpstreamError,
    meta: &RequestMeta,
) {
    let request_id = &meta.request_id;
    if let Some(fault) = error.client_fault() {
        let (backend, fault) = (&backend.address, fault.as_str());
        tracing::debug!(%backend, %request_id, fault, %error, "client request failed");
        return;
    }
    tracing::warn!(backend = %backend.address, %request_id, %error, "upstream request failed");
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
        snapshot.pool_of(backend),
        backend,
        error,
    );
}

/// The answer when no backend response came: logged with its details, counted like any other
/// request, and answered with a body that has none of them.
fn answer_error(state: &State, meta: &RequestMeta, error: ProxyError) -> Response<ResponseBody> {
    let status = error.status();
    if let Some(reason) = error.client_reason() {
        state
            .metrics
            .client_errors
            .get_or_create(&crate::metrics::ReasonLabels { reason })
            .inc();
    }
    if let ProxyError::Refused(refusal) = &error {
        let reason = refusal.reason;
        let labels = crate::metrics::ReasonLabels { reason };
        state.metrics.policy_denials.get_or_create(&labels).inc();
    }
    let mcp = meta
        .mcp
        .as_ref()
        .map(|o| o.finish(&state.metrics, status.as_u16(), meta.started.elapsed()));
    tracing::info!(
        target: "access",
        method = %meta.method,
        path = %meta.path,
        class = meta.class.as_str(),
        status = status.as_u16(),
        backend = "",
        pool = "",
        duration_us = u64::try_from(meta.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        bytes = 0u64,
        session = meta.session.as_deref().map(session_tag).unwrap_or_default(),
        request_id = %meta.request_id,
        error = %error,
        outcome = "proxy_error",
        mcp_method = mcp.as_ref().map(|m| m.method.as_str()),
        mcp_tool = mcp.as_ref().map(|m| m.tool.as_str()),
        subject = mcp.as_ref().map(|m| m.subject.as_str()),
    );
    respond::count_request(state, meta.class, status, "", "");
    error.into_response(&meta.request_id)
}
