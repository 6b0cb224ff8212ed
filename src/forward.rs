//! One request through the proxy: classify, find the backend, forward, stream the answer back.

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::body::{AccessRecord, BodyError, RequestBody, ResponseBody, SseWatch, UpstreamParts};
use crate::config::Cidr;
use crate::error::ProxyError;
use crate::router::{self, RouteClass, SESSION_HEADER};
use crate::state::{Snapshot, State};
use crate::upstream::{Backend, Exchange, InFlightGuard};

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client: the TCP peer, or the address a PROXY protocol header gave.
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Everything about the request that the response stage still needs.
struct RequestMeta {
    class: RouteClass,
    method: http::Method,
    path: String,
    session: Option<String>,
    started: Instant,
    /// The session as the client named it and what it opened to, when sealing is on.
    sealed: Option<(String, crate::seal::Opened)>,
    /// The client named a session whose token does not open: never routed.
    forged: bool,
}

pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
) -> Response<ResponseBody> {
    let snapshot = state.snapshot();
    let class = router::classify(request.method(), request.headers());
    let unsealed = crate::seal::unseal_request(snapshot.sealer.as_deref(), &mut request);
    let forged = matches!(unsealed, crate::seal::Unsealed::Invalid);
    let sealed = match unsealed {
        crate::seal::Unsealed::Opened { token, opened } => Some((token, opened)),
        _ => None,
    };
    let meta = RequestMeta {
        class,
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        session: router::session_id(request.headers(), request.uri().query()).map(str::to_owned),
        started: Instant::now(),
        sealed,
        forged,
    };
    match proxy(&state, &snapshot, &conn, request, &meta).await {
        Ok(response) => response,
        Err(error) => {
            let response = error.into_response();
            tracing::info!(
                target: "access",
                method = %meta.method,
                path = %meta.path,
                class = class.as_str(),
                status = response.status().as_u16(),
                backend = "",
                pool = "",
                duration_ms = meta.started.elapsed().as_secs_f64() * 1000.0,
                bytes = 0u64,
                session = meta.session.as_deref().map(session_tag).unwrap_or_default(),
                error = %error_text(&response),
                outcome = "proxy_error",
            );
            count_request(&state, class, response.status(), "", "");
            response
        }
    }
}

fn error_text(response: &Response<ResponseBody>) -> &'static str {
    response.status().canonical_reason().unwrap_or("error")
}

fn count_request(state: &State, class: RouteClass, status: StatusCode, pool: &str, backend: &str) {
    state
        .metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            class: class.as_str(),
            status: status.as_u16(),
            pool: pool.to_string(),
            backend: backend.to_string(),
        })
        .inc();
}

async fn proxy(
    state: &Arc<State>,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    mut request: Request<Incoming>,
    meta: &RequestMeta,
) -> Result<Response<ResponseBody>, ProxyError> {
    let config = &snapshot.config;
    // A body announced too large is refused before any backend is involved; one that grows too
    // large mid-stream is cut by RequestBody and answered 413 below.
    let body_limit = config.limits.max_request_body;
    if let Some(limit) = body_limit
        && http_body::Body::size_hint(request.body()).lower() > limit
    {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    if meta.forged {
        state.metrics.session_tokens_rejected.inc();
        return Err(ProxyError::SessionNotFound);
    }
    let sealed_owner = meta.sealed.as_ref().map(|(_, o)| o.owner.as_str());
    let owner = match &meta.session {
        Some(id) => Some(session_owner(state, snapshot, id, sealed_owner)?),
        None => None,
    };
    let client_ip = client_ip(conn.peer.ip(), request.headers(), &config.trusted_proxies);
    let client_upgrade =
        (meta.class == RouteClass::WebSocket).then(|| hyper::upgrade::on(&mut request));
    let mut outgoing = upstream_request(
        request,
        conn,
        client_ip,
        &config.trusted_proxies,
        body_limit,
        state,
    );
    let hash_client = meta.class.uses_client_hash().then_some(client_ip);

    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = None;
    let (guard, exchange) = loop {
        let backend = match &owner {
            Some(owner) => Arc::clone(owner),
            None => match snapshot
                .pick_new(hash_client, &tried)
                .or_else(|| crate::health::fail_open_pick(snapshot, hash_client, &tried))
            {
                Some(backend) => backend,
                // Every candidate failed: report the last failure, not an empty pool.
                None => return Err(last_error.map_or(ProxyError::NoBackend, ProxyError::from)),
            },
        };
        let guard = backend.start();
        let sent = Instant::now();
        match backend
            .send(
                outgoing,
                config.timeouts.connect,
                config.timeouts.response,
                snapshot.pool_limits,
                config.upstream.tls.as_ref(),
            )
            .await
        {
            Ok(exchange) => {
                state
                    .metrics
                    .upstream_latency
                    .get_or_create(&crate::metrics::BackendLabels {
                        pool: snapshot.pool_of(&backend).to_string(),
                        backend: backend.address.to_string(),
                    })
                    .observe(sent.elapsed().as_secs_f64());
                break (guard, exchange);
            }
            Err((error, unsent)) => {
                tracing::warn!(backend = %backend.address, %error, "upstream request failed");
                state
                    .metrics
                    .upstream_errors
                    .get_or_create(&crate::metrics::OutcomeLabels {
                        outcome: upstream_error_kind(&error),
                    })
                    .inc();
                if let Some(limit) = body_limit_hit(&error) {
                    return Err(ProxyError::BodyTooLarge { limit });
                }
                crate::health::note_request_failure(state, snapshot, &backend, &error);
                match unsent {
                    Some(request)
                        if owner.is_none()
                            && error.request_not_sent()
                            && tried.len() < config.upstream.retries =>
                    {
                        tried.push(Arc::clone(&backend.address));
                        outgoing = request;
                        last_error = Some(error);
                    }
                    _ => return Err(error.into()),
                }
            }
        }
    };
    Ok(respond(
        state,
        snapshot,
        meta,
        guard,
        exchange,
        client_upgrade,
    ))
}

fn upstream_error_kind(error: &crate::upstream::UpstreamError) -> &'static str {
    use crate::upstream::UpstreamError as U;
    match error {
        U::Connect { .. } => "connect",
        U::ConnectTimeout { .. } => "connect_timeout",
        U::Handshake { .. } => "handshake",
        U::ResponseTimeout { .. } => "response_timeout",
        U::Request { .. } => "request",
    }
}

/// The client's body broke the size limit mid-stream (announced sizes are refused earlier).
fn body_limit_hit(error: &crate::upstream::UpstreamError) -> Option<u64> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(BodyError::TooLarge { limit }) = cause.downcast_ref::<BodyError>() {
            return Some(*limit);
        }
        source = cause.source();
    }
    None
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
        Some(backend)
            if backend.serves_its_sessions()
                || crate::health::fail_open_serves(snapshot, &backend) =>
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

pub fn learn_session(state: &State, id: &str, backend: &Arc<Backend>) {
    match state.sessions.learn(id, &backend.address) {
        crate::session::Learned::New => state.metrics.sessions_learned.inc(),
        crate::session::Learned::Known => 0,
        crate::session::Learned::TableFull => {
            tracing::warn!("session table full; raise sessions.max_sessions");
            0
        }
    };
}

/// A short, stable tag for logs: never the session id itself.
pub fn session_tag(id: &str) -> String {
    format!("{:08x}", crate::balance::stable_hash(id.as_bytes()) as u32)
}

fn respond(
    state: &Arc<State>,
    snapshot: &Snapshot,
    meta: &RequestMeta,
    mut guard: InFlightGuard,
    exchange: Exchange,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    let Exchange {
        mut response,
        sender,
    } = exchange;
    let backend = Arc::clone(guard.backend());
    let status = response.status();
    let mut session = meta.session.as_deref().map(session_tag);
    track_session(state, meta, &mut session, &backend, &response);
    if let Some(sealer) = &snapshot.sealer {
        seal_session_header(sealer, meta, &backend, response.headers_mut());
    }

    let pool: Arc<str> = Arc::from(snapshot.pool_of(&backend));
    count_request(state, meta.class, status, &pool, &backend.address);
    let is_sse = is_event_stream(response.headers());
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
    if is_sse || upgraded {
        guard.mark_stream();
    }
    let record = AccessRecord {
        state: Arc::clone(state),
        method: meta.method.clone(),
        path: meta.path.clone(),
        class: meta.class,
        status: status.as_u16(),
        backend: Arc::clone(&backend.address),
        pool,
        session,
        started: meta.started,
        bytes: 0,
        stream: is_sse || upgraded,
    };
    if upgraded && let Some(client) = client_upgrade {
        let upstream = hyper::upgrade::on(&mut response);
        crate::websocket::spawn_tunnel(state, client, upstream, guard, record);
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Response::from_parts(parts, ResponseBody::empty());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let timeouts = &snapshot.config.timeouts;
    let sse = is_sse.then(|| {
        let learn_endpoint = meta.class == RouteClass::SseStream && meta.session.is_none();
        let watch = SseWatch::new(
            learn_endpoint,
            timeouts.sse_keepalive,
            backend.stream_token(),
        );
        match &snapshot.sealer {
            Some(sealer) if learn_endpoint => {
                // The endpoint event grows when its session id is sealed.
                parts.headers.remove(header::CONTENT_LENGTH);
                watch.sealing(Arc::clone(sealer))
            }
            _ => watch,
        }
    });
    let idle_timeout = if is_sse {
        timeouts.stream_idle
    } else {
        Some(timeouts.response)
    };
    let body = ResponseBody::upstream(UpstreamParts {
        body,
        guard,
        sender,
        pool_limits: snapshot.pool_limits,
        idle_timeout,
        sse,
        record,
    });
    Response::from_parts(parts, body)
}

/// Puts a sealed token in place of the session id the backend sent: the client's own token
/// when the backend repeats the id the client named, a fresh one when it minted a new id.
fn seal_session_header(
    sealer: &crate::seal::Sealer,
    meta: &RequestMeta,
    backend: &Backend,
    headers: &mut HeaderMap,
) {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let token = match &meta.sealed {
        Some((token, opened)) if opened.id == id => Some(token.clone()),
        _ => sealer.seal(&backend.address, id),
    };
    match token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        Some(value) => {
            headers.insert(SESSION_HEADER, value);
        }
        None => {
            // Never leak an unsealed id that other replicas could not route.
            tracing::warn!("cannot seal a session id; dropping the header");
            headers.remove(SESSION_HEADER);
        }
    }
}

/// Learns a session the backend minted; forgets one the client ended or the owner disowned.
fn track_session(
    state: &State,
    meta: &RequestMeta,
    tag: &mut Option<String>,
    backend: &Arc<Backend>,
    response: &Response<Incoming>,
) {
    let status = response.status();
    let minted = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty());
    if let Some(id) = minted
        && meta.session.as_deref() != Some(id)
        && status.is_success()
    {
        learn_session(state, id, backend);
        *tag = Some(session_tag(id));
    }
    if let Some(id) = meta.session.as_deref() {
        let ended = meta.method == http::Method::DELETE && status.is_success();
        if (ended || status == StatusCode::NOT_FOUND) && state.sessions.forget(id) {
            state.metrics.sessions_forgotten.inc();
        }
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The client address: the peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for entry in entries.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => break,
        }
    }
    client
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers and those the `Connection` header names. For an upgrade, the
/// `Upgrade` and `Connection: upgrade` pair is what the next hop needs, so it stays.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn upstream_request(
    request: Request<Incoming>,
    conn: &ConnInfo,
    client_ip: IpAddr,
    trusted: &[Cidr],
    limit: Option<u64>,
    state: &Arc<State>,
) -> Request<RequestBody> {
    let (mut parts, body) = request.into_parts();
    let upgrade = router::is_websocket_upgrade(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let peer_trusted = trusted.iter().any(|c| c.contains(conn.peer.ip()));
    set_forwarded(
        &mut parts.headers,
        conn,
        client_ip,
        peer_trusted,
        host.as_ref(),
    );
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .cloned()
        .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
    parts.version = Version::HTTP_11;
    Request::from_parts(
        parts,
        RequestBody::streaming(body, limit, Arc::clone(state)),
    )
}

/// `X-Forwarded-*`: appended to when the peer is a trusted proxy, replaced otherwise, so an
/// untrusted client cannot forge its address for the backend.
fn set_forwarded(
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    client_ip: IpAddr,
    peer_trusted: bool,
    host: Option<&HeaderValue>,
) {
    let peer = conn.peer.ip().to_canonical().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) if peer_trusted => format!("{existing}, {peer}"),
        _ => client_ip.to_canonical().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    if !(peer_trusted && headers.contains_key("x-forwarded-proto")) {
        let proto = if conn.tls { "https" } else { "http" };
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key("x-forwarded-host")) {
        match host {
            Some(host) => headers.insert("x-forwarded-host", host.clone()),
            None => headers.remove("x-forwarded-host"),
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrade_keeps_the_upgrade_pair() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.9"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }
}
