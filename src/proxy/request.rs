//! One request through the proxy, in phases that read top to bottom:
//!
//! 1. [`handle`] reads what the request is ([`RequestMeta`]: class, session, sealed token) from
//!    the one snapshot it will see throughout;
//! 2. [`route`] picks the route by host and path (the snapshot's route table), then who may take
//!    the request: the session's owner, whatever route it came by, or a pick from the route's
//!    active pools;
//! 3. [`send_with_retry`] sends it, to another backend if the first never received it;
//! 4. [`respond::shape`](super::respond::shape) learns or seals the session and wraps the body
//!    so that the in-flight guard lives until the last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::HostPolicy;
use crate::mcp::classify::{RouteClass, classify};
use crate::mcp::seal::{Opened, Unsealed, unseal_request};
use crate::mcp::session::{session_id, session_tag};
use crate::state::{Route, Snapshot, State};
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
    /// The name a TLS client sent in SNI: routes match it when the request names no host.
    pub sni: Option<Arc<str>>,
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
        }
    }
}

/// Who may take a request: its session's owner, or any backend the route's active pools offer.
enum Target {
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
    let meta = RequestMeta::read(&snapshot, &mut request);
    let Some(route) = find_route(&snapshot, &conn, &request) else {
        return answer_error(&state, &meta, None, ProxyError::NoRoute);
    };
    let mut response = match proxy(&state, &snapshot, route, &conn, request, &meta).await {
        Ok(response) => response,
        Err(error) => answer_error(&state, &meta, Some(route), error),
    };
    route
        .settings
        .response_headers
        .apply(response.headers_mut());
    response
}

async fn proxy(
    state: &Arc<State>,
    snapshot: &Snapshot,
    route: &Route,
    conn: &ConnInfo,
    mut request: Request<Incoming>,
    meta: &RequestMeta,
) -> Result<Response<ResponseBody>, ProxyError> {
    let config = &snapshot.config;
    // A body announced too large is refused before any backend is involved; one that grows too
    // large mid-stream is cut by RequestBody and answered 413 when the send fails.
    let body_limit = route.settings.max_request_body;
    if let Some(limit) = body_limit
        && http_body::Body::size_hint(request.body()).lower() > limit
    {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let client_ip = client_ip(conn.peer.ip(), request.headers(), &config.trusted_proxies);
    let target = target(state, snapshot, route, meta, client_ip)?;
    if let Some(prefix) = route.stripped_prefix() {
        strip_prefix(request.uri_mut(), prefix)?;
    }
    let client_upgrade =
        (meta.class == RouteClass::WebSocket).then(|| hyper::upgrade::on(&mut request));
    let bytes_in = state.metrics.bytes_in.clone();
    let limits = BodyLimits {
        max: body_limit,
        idle: config.timeouts.client_body,
    };
    let outgoing = upstream_request(request, conn, client_ip, config, limits, bytes_in);
    let (guard, exchange) = send_with_retry(state, snapshot, route, &target, outgoing).await?;
    Ok(respond::shape(
        state,
        snapshot,
        route,
        meta,
        guard,
        exchange,
        client_upgrade,
    ))
}

/// Phase 2, first step: the route for the request's host (`Host`, or HTTP/2's `:authority`, or
/// the TLS SNI name when it names none) and path.
fn find_route<'s>(
    snapshot: &'s Snapshot,
    conn: &ConnInfo,
    request: &Request<Incoming>,
) -> Option<&'s Route> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .or(conn.sni.as_deref());
    snapshot.route(host, request.uri().path())
}

/// Phase 2, second step: a request naming a session goes to its owner (sessions are global, so
/// whatever route it came by) or gets `404`; anything else is new work for the route's pools.
fn target(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
    meta: &RequestMeta,
    client_ip: std::net::IpAddr,
) -> Result<Target, ProxyError> {
    if meta.forged {
        state.metrics.session_tokens_rejected.inc();
        return Err(ProxyError::SessionNotFound);
    }
    if let Some(id) = &meta.session {
        let sealed_owner = meta.sealed.as_ref().map(|(_, o)| o.owner.as_str());
        return session_owner(state, snapshot, route, id, sealed_owner).map(Target::Owner);
    }
    let hash_client = meta.class.uses_client_hash().then_some(client_ip);
    Ok(Target::NewWork { hash_client })
}

/// Removes a route's prefix from the request's path; what is left always starts with `/`.
fn strip_prefix(uri: &mut http::Uri, prefix: &str) -> Result<(), ProxyError> {
    let Some(path_and_query) = uri.path_and_query() else {
        return Ok(());
    };
    let rest = path_and_query
        .path()
        .strip_prefix(prefix)
        .unwrap_or(path_and_query.path());
    let slash = if rest.starts_with('/') { "" } else { "/" };
    let query = path_and_query
        .query()
        .map_or(String::new(), |q| format!("?{q}"));
    let stripped = format!("{slash}{rest}{query}");
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        stripped
            .parse()
            .map_err(|_| ProxyError::BadRequest("unusable request path"))?,
    );
    *uri = http::Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest("unusable request path"))?;
    Ok(())
}

/// The backend that owns session `id`, or `404` if it is unknown or its owner is gone for good.
/// A sealed token names its owner itself; otherwise the session table knows it.
fn session_owner(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
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
        Some(backend)
            if backend.serves_its_sessions() || snapshot.fail_open_serves(route, &backend) =>
        {
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
    target: &Target,
    mut outgoing: Request<RequestBody>,
) -> Result<(InFlightGuard, Exchange), ProxyError> {
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = None;
    loop {
        let backend = match target {
            Target::Owner(owner) => Arc::clone(owner),
            Target::NewWork { hash_client } => {
                let picked = snapshot
                    .pick_new(route, *hash_client, &tried)
                    .or_else(|| snapshot.fail_open_pick(route, *hash_client, &tried));
                // Every candidate failed: report the last failure, not an empty pool.
                let Some(backend) = picked else {
                    return Err(last_error.map_or(ProxyError::NoBackend, ProxyError::from));
                };
                backend
            }
        };
        let (error, unsent) = match send_once(state, snapshot, route, &backend, outgoing).await {
            Ok(sent) => return Ok(sent),
            Err(failed) => failed,
        };
        let retry = matches!(target, Target::NewWork { .. })
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
    route: &Route,
    backend: &Arc<Backend>,
    mut outgoing: Request<RequestBody>,
) -> Result<(InFlightGuard, Exchange), SendFailure> {
    // Set per attempt: a retry goes to another backend, with another name.
    match &route.settings.host {
        HostPolicy::Client => {}
        HostPolicy::Backend => {
            let name = backend.host_header.clone();
            outgoing.headers_mut().insert(http::header::HOST, name);
        }
        HostPolicy::Fixed(name) => {
            outgoing
                .headers_mut()
                .insert(http::header::HOST, name.clone());
        }
    }
    let timeouts = &route.settings.timeouts;
    let guard = backend.start();
    let sent = Instant::now();
    let result = backend
        .send(
            outgoing,
            timeouts.connect,
            timeouts.response,
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
fn answer_error(
    state: &State,
    meta: &RequestMeta,
    route: Option<&Route>,
    error: ProxyError,
) -> Response<ResponseBody> {
    let route_name = route.map_or("", |r| &r.name);
    let response = error.into_response();
    let status = response.status();
    tracing::info!(
        target: "access",
        method = %meta.method,
        path = %meta.path,
        class = meta.class.as_str(),
        status = status.as_u16(),
        route = route_name,
        backend = "",
        pool = "",
        duration_us = u64::try_from(meta.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        bytes = 0u64,
        session = meta.session.as_deref().map(session_tag).unwrap_or_default(),
        error = %status.canonical_reason().unwrap_or("error"),
        outcome = "proxy_error",
    );
    respond::count_request(state, meta.class, status, "", "");
    respond::count_route(state, route, status);
    response
}
