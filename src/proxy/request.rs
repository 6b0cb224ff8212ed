//! One request through the proxy, in phases that read top to bottom:
//!
//! 1. [`handle`] reads what the request is ([`RequestMeta`]: class, session, sealed token, request
//!    id) from the one snapshot it will see throughout, and [`strict::check`](super::strict::check)
//!    refuses what a backend could read differently;
//! 2. [`find_route`] picks the route by host and path (the snapshot's route table), then
//!    [`target`] decides who may take the request: the session's owner, whatever route it came
//!    by, or a pick from the route's active pools; a request that may open a session reserves
//!    room for it in the table first;
//! 3. [`send_with_retry`] sends it, to another backend if the first never received it;
//! 4. [`respond::shape`](super::respond::shape) learns or seals the session and wraps the body
//!    so that the in-flight guard lives until the last byte.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::HostPolicy;
use crate::mcp::classify::{RouteClass, classify};
use crate::mcp::seal::{Opened, Unsealed, unseal_request};
use crate::mcp::session::{SessionSlot, session_id, session_tag};
use crate::state::{Route, Snapshot, State};
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
    pub request_id: RequestId,
    /// The client's address as the access log and the balancer see it (see `client_ip`).
    pub client: IpAddr,
    /// Kept as the header value: a reference count, not a copy, until a log line is written.
    pub user_agent: Option<HeaderValue>,
}

impl RequestMeta {
    /// Reads the request once; a sealed session token is opened and the original id put back
    /// into the request, so the backend sees what it minted.
    fn read(snapshot: &Snapshot, conn: &ConnInfo, request: &mut Request<Incoming>) -> RequestMeta {
        let class = classify(request.method(), request.headers());
        let (sealed, forged) = match unseal_request(snapshot.sealer.as_deref(), request) {
            Unsealed::Opened { token, opened } => (Some((token, opened)), false),
            Unsealed::Invalid => (None, true),
            Unsealed::Plain => (None, false),
        };
        let session = session_id(request.headers(), request.uri().query()).map(str::to_owned);
        let request_id = RequestId::of(request.headers());
        let trusted = &snapshot.config.trusted_proxies;
        let client = client_ip(conn.peer.ip(), request.headers(), trusted);
        let user_agent = request.headers().get(header::USER_AGENT).cloned();
        RequestMeta {
            class,
            method: request.method().clone(),
            path: request.uri().path().to_string(),
            session,
            started: Instant::now(),
            sealed,
            forged,
            request_id,
            client,
            user_agent,
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
    let meta = RequestMeta::read(&snapshot, &conn, &mut request);
    // What a backend could read differently is refused before it can pick a route either.
    if let Err(error) = super::strict::check(&request, &snapshot.config.limits) {
        return answer_error(&state, &meta, None, error);
    }
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
    meta.request_id.stamp(request.headers_mut());
    // A body announced too large is refused before any backend is involved; one that grows too
    // large mid-stream is cut by RequestBody and answered 413 when the send fails.
    let body_limit = route.settings.max_request_body;
    if let Some(limit) = body_limit
        && http_body::Body::size_hint(request.body()).lower() > limit
    {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let client_ip = meta.client;
    let target = target(state, snapshot, route, meta, client_ip)?;
    let slot = reserve_session(state, snapshot, meta, &target)?;
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
    let sent = send_with_retry(state, snapshot, route, &target, outgoing, meta).await?;
    Ok(respond::shape(
        state,
        snapshot,
        route,
        meta,
        sent,
        client_upgrade,
        slot,
    ))
}

/// New work that may open a session (a `POST` such as `initialize`, a legacy `GET /sse` stream)
/// first reserves room for it, so every session handed to a client is one the table keeps; with
/// no room it is refused (`503`) before any backend mints one. Sealed sessions need no room: the
/// token itself routes them.
fn reserve_session(
    state: &State,
    snapshot: &Snapshot,
    meta: &RequestMeta,
    target: &Target,
) -> Result<Option<SessionSlot>, ProxyError> {
    let may_open = meta.method == http::Method::POST || meta.class == RouteClass::SseStream;
    if !may_open || !matches!(target, Target::NewWork { .. }) || snapshot.sealer.is_some() {
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

/// Phase 2, first step: the route for the request's host and path. The host is the one the
/// backend will be told (the target's authority: HTTP/2's `:authority` or an absolute-form
/// target; else the `Host` header), or the TLS SNI name when the request names none.
fn find_route<'s>(
    snapshot: &'s Snapshot,
    conn: &ConnInfo,
    request: &Request<Incoming>,
) -> Option<&'s Route> {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            let host = request.headers().get(http::header::HOST)?;
            host.to_str().ok()
        })
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
    let unusable = || ProxyError::BadRequest("unusable request path");
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(stripped.parse().map_err(|_| unusable())?);
    *uri = http::Uri::from_parts(parts).map_err(|_| unusable())?;
    Ok(())
}

/// The backend that owns session `id`, or `404` if it is unknown, or its owner is out (unhealthy
/// or ejected) or gone for good. A sealed token names its owner itself; otherwise the session
/// table knows it. Only an owner gone for good (removed from the config and drained away) makes
/// the table forget the session: one that is out for now may come back, and its sessions with it.
fn session_owner(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
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
        && (backend.serves_its_sessions() || snapshot.fail_open_serves(route, backend))
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
    target: &Target,
    mut outgoing: Request<RequestBody>,
    meta: &RequestMeta,
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
        let sent = send_once(state, snapshot, route, &backend, outgoing, meta).await;
        let (error, unsent) = match sent {
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
    meta: &RequestMeta,
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
fn answer_error(
    state: &State,
    meta: &RequestMeta,
    route: Option<&Route>,
    error: ProxyError,
) -> Response<ResponseBody> {
    let status = error.status();
    if let Some(reason) = error.client_reason() {
        state
            .metrics
            .client_errors
            .get_or_create(&crate::metrics::ReasonLabels { reason })
            .inc();
    }
    tracing::info!(
        target: "access",
        method = %meta.method,
        path = %meta.path,
        class = meta.class.as_str(),
        status = status.as_u16(),
        route = route.map_or("", |r| &r.name),
        backend = "",
        pool = "",
        duration_us = u64::try_from(meta.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        bytes = 0u64,
        session = meta.session.as_deref().map(session_tag).unwrap_or_default(),
        request_id = %meta.request_id,
        client = %meta.client,
        user_agent = user_agent(meta.user_agent.as_ref()),
        error = %error,
        outcome = "proxy_error",
    );
    respond::count_request(state, meta.class, status, "", "");
    respond::count_route(state, route, status);
    error.into_response(&meta.request_id)
}

/// The `User-Agent` as the access log writes it: empty when absent or not text.
pub(super) fn user_agent(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or("")
}
