//! One request through the proxy, in phases that read top to bottom:
//!
//! 1. [`handle`] reads what the request is ([`RequestMeta`]: class, session, sealed token, request
//!    id) from the one snapshot it will see throughout, and [`strict::check`](super::strict::check)
//!    refuses what a backend could read differently;
//! 2. [`find_route`] picks the route by host and path (the snapshot's route table); with the
//!    route's `[policy]`, [`admit`] then authenticates, learns the MCP calls and applies
//!    allow-lists and rate limits ([`super::policy`]); [`target`] decides who may take the
//!    request: the session's owner, whatever route it came by, or a pick from the route's active
//!    pools; a request that may open a session reserves room for it in the table first;
//! 3. [`send_with_retry`] sends it, to another backend if the first never received it;
//! 4. [`respond::shape`](super::respond::shape) learns or seals the session and wraps the body
//!    so that the in-flight guard lives until the last byte.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::HostPolicy;
use crate::mcp::classify::{RouteClass, classify};
use crate::mcp::seal::{Opened, Unsealed, unseal_request};
use crate::mcp::session::{SessionSlot, session_id, session_tag};
use crate::state::{Route, Snapshot, State};
use crate::upstream::backend::{InFlightGuard, SendTimeouts, TimedExchange, UpstreamError};
use crate::upstream::balance::Target;
use crate::upstream::body::{BodyLimits, BodyRead};
use crate::upstream::h1::Outbound;

use super::body::{AccessLog, ResponseBody};
use super::error::ProxyError;
use super::headers::{client_ip, upstream_request};
use super::request_id::RequestId;
use super::respond;
use super::version::UpgradeSlot;

/// What the listener knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client: the TCP peer, or the address a PROXY protocol header gave.
    pub peer: SocketAddr,
    /// The peer's IP as text (canonical form), written once per connection: every request
    /// carries it in `X-Forwarded-For` and `Forwarded`.
    pub peer_text: HeaderValue,
    pub tls: bool,
    /// The name a TLS client sent in SNI: routes match it when the request names no host.
    pub sni: Option<Arc<str>>,
    /// Where an endless event stream leaves hyper.
    pub takeover: super::takeover::Offer,
    /// Whether the latest request's body has been read to its end: the connection may set its
    /// socket aside between requests only then.
    pub body_read: BodyRead,
    /// Where the connection hands its socket to a WebSocket tunnel after a `101`.
    pub upgrade: Arc<UpgradeSlot>,
}

impl ConnInfo {
    /// The connection's facts, and where the response of an endless event stream will come to be
    /// sent without hyper ([`super::serve`]).
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        sni: Option<Arc<str>>,
    ) -> (ConnInfo, oneshot::Receiver<super::takeover::Taken>) {
        let (takeover, taken) = super::takeover::Offer::new();
        let conn = ConnInfo {
            peer,
            peer_text: super::headers::ip_text(peer.ip()),
            tls,
            sni,
            takeover,
            body_read: BodyRead::default(),
            upgrade: Arc::default(),
        };
        (conn, taken)
    }
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
    pub request_id: RequestId,
    /// The client's address as the access log and the balancer see it (see `client_ip`).
    pub client: IpAddr,
    /// Read only when the access log is on; the response's record takes it.
    pub log: Option<Box<AccessLog>>,
    /// What `[policy]` learned of the request's MCP calls, for the log and metrics.
    pub mcp: Option<Arc<super::policy::observe::Observed>>,
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
        let log = AccessLog::enabled().then(|| {
            Box::new(AccessLog {
                method: request.method().clone(),
                path: request.uri().path().into(),
                session: None,
                route: None,
                request_id,
                client,
                // Copied: a clone would share (and keep alive for the whole response, for hours
                // on a stream) the buffer the whole request head was read into.
                user_agent: request
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|agent| HeaderValue::from_bytes(agent.as_bytes()).ok()),
            })
        });
        RequestMeta {
            class,
            method: request.method().clone(),
            session,
            started: Instant::now(),
            sealed,
            forged,
            request_id,
            client,
            log,
            mcp: None,
        }
    }
}

/// Who may take a request: its session's owner, or any backend the route's active pools offer.
enum Destination {
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
    let eligible = super::takeover::Eligible::of(&request);
    let mut meta = RequestMeta::read(&snapshot, &conn, &mut request);
    // What a backend could read differently is refused before it can pick a route either.
    if let Err(error) = super::strict::check(&request, &snapshot.config.limits) {
        return answer_error(&state, &meta, None, error);
    }
    // The protected-resource metadata of any route's policy: its path need not be the route's.
    if let Some(document) = super::policy::metadata_document(&snapshot, &request) {
        return document;
    }
    let Some(route) = find_route(&snapshot, &conn, &request) else {
        return answer_error(&state, &meta, None, ProxyError::NoRoute);
    };
    let mut response = match proxy(&state, &snapshot, route, &conn, request, &mut meta).await {
        Ok(response) => response,
        Err(error) => answer_error(&state, &meta, Some(route), error),
    };
    route
        .settings
        .response_headers
        .apply(response.headers_mut());
    conn.takeover.take_or_keep(eligible, response).await
}

async fn proxy(
    state: &Arc<State>,
    snapshot: &Snapshot,
    route: &Route,
    conn: &ConnInfo,
    mut request: Request<Incoming>,
    meta: &mut RequestMeta,
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
    let client_ip = meta.client;
    let admitted = match &route.policy {
        Some(policy) => Some(admit(state, snapshot, policy, client_ip, meta, &mut request).await?),
        None => None,
    };
    let target = target(state, snapshot, route, meta, client_ip)?;
    let slot = reserve_session(state, snapshot, meta, &target)?;
    if let Some(prefix) = route.stripped_prefix() {
        strip_prefix(request.uri_mut(), prefix)?;
    }
    let client_upgrade = (meta.class == RouteClass::WebSocket).then_some(&*conn.upgrade);
    let bytes_in = state.metrics.bytes_in.clone();
    let limits = BodyLimits {
        max: body_limit,
        idle: config.timeouts.client_body,
    };
    let request_id = &meta.request_id;
    let mut outgoing = upstream_request(
        request,
        conn,
        (client_ip, request_id),
        config,
        limits,
        bytes_in,
    );
    if let Some(admitted) = admitted {
        admitted.attach(outgoing.request.body_mut());
    }
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
    // Boxed: authentication and reading the calls need more state than the rest of a request,
    // and only routes with a policy take this path.
    let admitted = Box::pin(super::policy::admit(
        state, snapshot, policy, client_ip, session, request,
    ));
    match admitted.await {
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
    target: &Destination,
) -> Result<Option<SessionSlot>, ProxyError> {
    let may_open = meta.method == http::Method::POST || meta.class == RouteClass::SseStream;
    if !may_open || !matches!(target, Destination::NewWork { .. }) || snapshot.sealer.is_some() {
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
) -> Result<Destination, ProxyError> {
    if meta.forged {
        state.metrics.session_tokens_rejected.inc();
        return Err(ProxyError::SessionNotFound);
    }
    if let Some(id) = &meta.session {
        let sealed_owner = meta.sealed.as_ref().map(|(_, o)| o.owner.as_str());
        return session_owner(state, snapshot, route, id, sealed_owner).map(Destination::Owner);
    }
    let hash_client = meta.class.uses_client_hash().then_some(client_ip);
    Ok(Destination::NewWork { hash_client })
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
) -> Result<Arc<Target>, ProxyError> {
    let learned = match sealed_owner {
        Some(_) => None,
        None => state.sessions.owner(id),
    };
    let Some(address) = sealed_owner.or(learned.as_deref()) else {
        state.metrics.sessions_lost.inc();
        return Err(ProxyError::SessionNotFound);
    };
    let owner = snapshot.target(address);
    if let Some(target) = owner
        && (target.backend.serves_its_sessions()
            || snapshot.fail_open_serves(route, &target.backend))
    {
        return Ok(Arc::clone(target));
    }
    let gone = owner.is_none_or(|target| target.backend.is_gone());
    if gone && learned.is_some() && state.sessions.forget(id) {
        state.metrics.sessions_forgotten.inc();
    }
    state.metrics.sessions_lost.inc();
    Err(ProxyError::SessionNotFound)
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
    destination: &Destination,
    mut outgoing: Box<Outbound>,
    meta: &RequestMeta,
) -> Result<Sent, ProxyError> {
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = None;
    loop {
        let target = match destination {
            Destination::Owner(owner) => Arc::clone(owner),
            Destination::NewWork { hash_client } => {
                let picked = snapshot
                    .pick_new(route, *hash_client, &tried)
                    .or_else(|| snapshot.fail_open_pick(route, *hash_client, &tried));
                // Every candidate failed: report the last failure, not an empty pool.
                let Some(target) = picked else {
                    return Err(last_error.map_or(ProxyError::NoBackend, ProxyError::from));
                };
                target
            }
        };
        // The first attempt began when the request came (a clock read fewer).
        let begun = if tried.is_empty() {
            meta.started
        } else {
            Instant::now()
        };
        let sent = send_once(state, snapshot, route, &target, outgoing, (meta, begun)).await;
        let (error, unsent) = match sent {
            Ok(sent) => return Ok(sent),
            Err(failed) => failed,
        };
        let retry = matches!(destination, Destination::NewWork { .. })
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

type SendFailure = (UpstreamError, Option<Box<Outbound>>);

/// One attempt on one backend, begun at `sent`; a failure is counted, and counted against the
/// backend's health unless the client caused it.
async fn send_once(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
    target: &Arc<Target>,
    mut outgoing: Box<Outbound>,
    (meta, sent): (&RequestMeta, Instant),
) -> Result<Sent, SendFailure> {
    let backend = &target.backend;
    // Set per attempt: a retry goes to another backend, with another name.
    match &route.settings.host {
        HostPolicy::Client => {}
        HostPolicy::Backend => {
            let name = backend.host_header.clone();
            outgoing
                .request
                .headers_mut()
                .insert(http::header::HOST, name);
        }
        HostPolicy::Fixed(name) => {
            outgoing
                .request
                .headers_mut()
                .insert(http::header::HOST, name.clone());
        }
    }
    let guard = backend.start();
    let timeouts = SendTimeouts {
        connect: route.settings.timeouts.connect,
        response: route.settings.timeouts.response,
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
            note_send_failure(state, snapshot, target, &error, meta);
            Err((error, unsent))
        }
    }
}

/// Logs the details (never sent to the client) and counts a failure that was the backend's
/// side of the exchange; one the client caused is counted by [`answer_error`] instead.
fn note_send_failure(
    state: &State,
    snapshot: &Snapshot,
    target: &Target,
    error: &UpstreamError,
    meta: &RequestMeta,
) {
    let backend = &target.backend;
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
        target.pool(),
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
        path = meta.log.as_ref().map_or("", |log| &log.path),
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
        user_agent = user_agent(meta.log.as_ref().and_then(|log| log.user_agent.as_ref())),
        error = %error,
        outcome = "proxy_error",
        mcp_method = mcp.as_ref().map(|m| m.method.as_str()),
        mcp_tool = mcp.as_ref().map(|m| m.tool.as_str()),
        subject = mcp.as_ref().map(|m| m.subject.as_str()),
    );
    respond::count_request(state, meta.class, status, "", "");
    respond::count_route(state, route, status);
    error.into_response(&meta.request_id)
}

/// The `User-Agent` as the access log writes it: empty when absent or not text.
pub(super) fn user_agent(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or("")
}
