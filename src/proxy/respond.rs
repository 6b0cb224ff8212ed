//! Phase 4 of a request: shape the backend's response for the client. The session it minted is
//! learned (and sealed), hop-by-hop headers go, and the body is wrapped so that the in-flight
//! guard, the pooled connection and the access record live exactly as long as the response.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::mcp::classify::RouteClass;
use crate::mcp::seal::Sealer;
use crate::mcp::session::{SESSION_HEADER, SessionSlot, session_tag};
use crate::metrics::{RequestLabels, RouteLabels, RouteName};
use crate::state::{Route, Snapshot, State};
use crate::upstream::backend::{Backend, InFlightGuard};
use crate::upstream::balance::Target;
use crate::upstream::h1::H1Body;

use super::body::{AccessLog, AccessRecord, ResponseBody, SseWatch, UpstreamParts};
use super::headers::strip_hop_by_hop;
use super::request::{RequestMeta, Sent};
use super::request_id::X_REQUEST_ID;
use super::version::UpgradeSlot;

pub(super) fn shape(
    state: &Arc<State>,
    snapshot: &Snapshot,
    route: &Route,
    meta: &mut RequestMeta,
    sent: Sent,
    client_upgrade: Option<&UpgradeSlot>,
    mut slot: Option<SessionSlot>,
) -> Response<ResponseBody> {
    let (mut guard, target, timed) = (sent.guard, sent.target, sent.timed);
    let (timer, answered, exchange) = (timed.timer, timed.answered, timed.exchange);
    let mut response = exchange.response;
    let backend = Arc::clone(&target.backend);
    let status = response.status();
    let log = account(
        state,
        snapshot,
        route,
        meta,
        &target,
        &mut response,
        &mut slot,
    );
    let is_sse = is_event_stream(response.headers());
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
    if is_sse || upgraded {
        guard.mark_stream();
    }
    let record = AccessRecord {
        state: Arc::clone(state),
        target,
        class: meta.class,
        status: status.as_u16(),
        started: meta.started,
        bytes: 0,
        stream: is_sse || upgraded,
        log,
        mcp: meta.mcp.clone(),
    };
    if upgraded && let Some(client) = client_upgrade {
        return tunnel(state, client, response, guard, record);
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let sse = is_sse.then(|| sse_watch(snapshot, route, meta, &backend, &mut parts.headers, slot));
    let (idle_timeout, keepalive) = body_timers(route, is_sse);
    let body = ResponseBody::upstream(UpstreamParts {
        body,
        guard,
        pool_limits: snapshot.pool_limits,
        timer,
        answered,
        idle_timeout,
        keepalive,
        sse,
        record,
    });
    Response::from_parts(parts, body)
}

/// A `101`: both sides become a byte tunnel that holds the guard; the client gets the head.
fn tunnel(
    state: &Arc<State>,
    client: &UpgradeSlot,
    response: Response<H1Body>,
    guard: InFlightGuard,
    record: AccessRecord,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    if let Some(upstream) = body.into_upgraded() {
        // The connection hands its socket over once hyper has written the `101`.
        super::websocket::spawn_tunnel(state, client.expect(), upstream, guard, record);
    }
    strip_hop_by_hop(&mut parts.headers, true);
    Response::from_parts(parts, ResponseBody::empty())
}

/// Settles the session the response speaks of, stamps the request id and counts the answer;
/// returns the access-log fields, which exist only while the access log is on.
fn account(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
    meta: &mut RequestMeta,
    target: &Target,
    response: &mut Response<H1Body>,
    slot: &mut Option<SessionSlot>,
) -> Option<Box<AccessLog>> {
    let status = response.status();
    let mut log = meta.log.take();
    let want_tag = log.is_some();
    let tag = settle_session(
        state,
        snapshot,
        meta,
        &target.backend,
        response,
        (slot, want_tag),
    );
    if let Some(log) = &mut log {
        log.session = tag;
        log.route = Some(Arc::clone(&route.name));
    }
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, meta.request_id.header_value());
    let class = meta.class.as_str();
    target
        .metrics
        .count_request(&state.metrics, class, status.as_u16());
    count_route(state, Some(route), status);
    log
}

/// The response body's idle timeout and SSE keepalive: a stream may stay quiet up to
/// `stream_idle` (with keepalives), any other answer up to the response timeout.
fn body_timers(
    route: &Route,
    is_sse: bool,
) -> (Option<std::time::Duration>, Option<std::time::Duration>) {
    let timeouts = &route.settings.timeouts;
    if is_sse {
        (timeouts.stream_idle, timeouts.sse_keepalive)
    } else {
        (Some(timeouts.response), None)
    }
}

/// Learns, forgets and seals the session the response speaks of; returns its log tag if
/// `want_tag` (the access log is on): the session the response minted, or the one the request
/// named.
fn settle_session(
    state: &State,
    snapshot: &Snapshot,
    meta: &RequestMeta,
    backend: &Arc<Backend>,
    response: &mut Response<H1Body>,
    (slot, want_tag): (&mut Option<SessionSlot>, bool),
) -> Option<String> {
    let minted = track_session(state, meta, backend, response, slot);
    let tag = if want_tag {
        minted.or(meta.session.as_deref()).map(session_tag)
    } else {
        None
    };
    if let Some(sealer) = &snapshot.sealer {
        seal_session_header(sealer, meta, backend, response.headers_mut());
    }
    tag
}

/// What watches an SSE response: keepalives, drain closes, and on a new legacy stream the
/// `endpoint` event that names its session (learned into the room `slot` holds; rewritten when
/// its id is sealed or the route strips a prefix the client's POSTs must carry again).
fn sse_watch(
    snapshot: &Snapshot,
    route: &Route,
    meta: &RequestMeta,
    backend: &Backend,
    headers: &mut HeaderMap,
    slot: Option<SessionSlot>,
) -> SseWatch {
    let learn_endpoint = meta.class == RouteClass::SseStream && meta.session.is_none();
    let mut watch = SseWatch::new(
        learn_endpoint.then_some(slot).flatten(),
        learn_endpoint,
        backend.stream_token(),
    );
    if !learn_endpoint {
        return watch;
    }
    if let Some(sealer) = &snapshot.sealer {
        watch = watch.sealing(Arc::clone(sealer));
    }
    if let Some(prefix) = route.stripped_prefix() {
        watch = watch.prefixing(Arc::from(prefix));
    }
    if watch.rewrites_endpoint() {
        // The endpoint event changes length when it is rewritten.
        headers.remove(header::CONTENT_LENGTH);
    }
    watch
}

/// Counts a request per route; `None`: no route matched.
pub(super) fn count_route(state: &State, route: Option<&Route>, status: StatusCode) {
    match route {
        Some(route) => route.metrics.count(&state.metrics, status.as_u16()),
        None => {
            state
                .metrics
                .route_requests
                .get_or_create(&RouteLabels {
                    route: RouteName(Arc::from("")),
                    status: status.as_u16(),
                })
                .inc();
        }
    }
}

pub(super) fn count_request(
    state: &State,
    class: RouteClass,
    status: StatusCode,
    pool: &str,
    backend: &str,
) {
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            class: class.as_str(),
            status: status.as_u16(),
            pool: pool.to_string(),
            backend: backend.to_string(),
        })
        .inc();
}

/// Puts a sealed token in place of the session id the backend sent: the client's own token
/// when the backend repeats the id the client named, a fresh one when it minted a new id.
fn seal_session_header(
    sealer: &Sealer,
    meta: &RequestMeta,
    backend: &Backend,
    headers: &mut HeaderMap,
) {
    let Some(id) = headers.get(&SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let token = match &meta.sealed {
        Some((token, opened)) if opened.id == id => Some(token.clone()),
        _ => sealer.seal(&backend.address, id),
    };
    match token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        Some(value) => {
            headers.insert(&SESSION_HEADER, value);
        }
        None => {
            // Never leak an unsealed id that other replicas could not route.
            tracing::warn!("cannot seal a session id; dropping the header");
            headers.remove(&SESSION_HEADER);
        }
    }
}

/// Learns a session the backend minted; forgets one the client ended or the owner disowned.
/// Returns the id of a session the response minted.
fn track_session<'r>(
    state: &State,
    meta: &RequestMeta,
    backend: &Arc<Backend>,
    response: &'r Response<H1Body>,
    slot: &mut Option<SessionSlot>,
) -> Option<&'r str> {
    let status = response.status();
    let minted = response
        .headers()
        .get(&SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty())
        .filter(|id| meta.session.as_deref() != Some(*id) && status.is_success());
    if let Some(id) = minted {
        state.learn_session(id, backend, slot.take());
    }
    if let Some(id) = meta.session.as_deref() {
        let ended = meta.method == http::Method::DELETE && status.is_success();
        if (ended || status == StatusCode::NOT_FOUND) && state.sessions.forget(id) {
            state.metrics.sessions_forgotten.inc();
        }
    }
    minted
}

/// Whether a response is an SSE stream, whatever the case of its media type (compared in place:
/// no lowercased copy per response).
pub(super) fn is_event_stream(headers: &HeaderMap) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes().trim_ascii_start();
        value
            .get(..SSE.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(SSE))
    })
}
