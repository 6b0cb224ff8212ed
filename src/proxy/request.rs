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
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::mcp::classify::{RouteClass, classify};
use crate::mcp::seal::{Opened, Unsealed, unseal_request};
use crate::mcp::session::{session_id, session_tag};
use crate::state::{Snapshot, State};
use crate::upstream::backend::{Backend, Exchange, InFlightGuard, UpstreamError};
use crate::upstream::body::{BodyError, BodyLimits, RequestBody};

use super::body::ResponseBody;
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
    pub path: String,
    pub session: Option<String>,
    pub started: Instant,
    /// The session as the client named it and what it opened to, when sealing is on.
    pub sealed: Option<(String, Opened)>,
    /// The client named a session whose token does not open: never routed.
    pub forged: bool,
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
        RequestMeta {
            class,
            method: request.method().clone(),
            path: request.uri().path().to_string(),
            session,
            started: Instant::now(),
            sealed,
            forged,
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
    let (guard, exchange) = send_with_retry(state, snapshot, &route, outgoing).await?;
    Ok(respond::shape(
        state,
        snapshot,
        meta,
        guard,
        exchange,
        client_upgrade,
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
) -> Result<Arc<Backend>, ProxyError> {
    let owner = match sealed_owner {
        Some(address) => snapshot.backends.get(address).cloned(),
        None => state
            .sessions
            .owner(id)
            .and_then(|address| snapshot.backends.get(&address).cloned()),
    };
    match owner {
        Some(backend) if backend.serves_its_sessions() || snapshot.fail_open_serves(&backend) => {
            Ok(backend)
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

/// Phase 3: sends to the routed backend. New work that failed before the backend received it
/// is sent to another one, up to `upstream.retries` times; a session's request never is.
async fn send_with_retry(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
    mut outgoing: Request<RequestBody>,
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
        let (error, unsent) = match send_once(state, snapshot, &backend, outgoing).await {
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
            note_send_failure(state, snapshot, backend, &error);
            Err((error, unsent))
        }
    }
}

fn note_send_failure(
    state: &State,
    snapshot: &Snapshot,
    backend: &Arc<Backend>,
    error: &UpstreamError,
) {
    // A client whose body broke a limit or stalled: its own 413 or 408, no backend's failure.
    if let Some(cause) = error.client_body_error() {
        tracing::debug!(backend = %backend.address, %cause, "request abandoned: the client's body failed");
        return;
    }
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
        snapshot.pool_of(backend),
        backend,
        error,
    );
}

impl From<UpstreamError> for ProxyError {
    /// A client body that broke the size limit mid-stream is the client's `413`, one that went
    /// quiet its `408`: not the backend's failure.
    fn from(error: UpstreamError) -> ProxyError {
        match error.client_body_error() {
            Some(BodyError::TooLarge { limit }) => ProxyError::BodyTooLarge { limit: *limit },
            Some(BodyError::Idle { timeout }) => ProxyError::BodyTimeout { timeout: *timeout },
            _ => ProxyError::Upstream(error),
        }
    }
}

/// The answer when no backend response came: logged and counted like any other request.
fn answer_error(state: &State, meta: &RequestMeta, error: ProxyError) -> Response<ResponseBody> {
    if let ProxyError::Refused(refusal) = &error {
        let reason = refusal.reason;
        let labels = crate::metrics::ReasonLabels { reason };
        state.metrics.policy_denials.get_or_create(&labels).inc();
    }
    let response = error.into_response();
    let status = response.status();
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
        error = %status.canonical_reason().unwrap_or("error"),
        outcome = "proxy_error",
        mcp_method = mcp.as_ref().map(|m| m.method.as_str()),
        mcp_tool = mcp.as_ref().map(|m| m.tool.as_str()),
        subject = mcp.as_ref().map(|m| m.subject.as_str()),
    );
    respond::count_request(state, meta.class, status, "", "");
    response
}
