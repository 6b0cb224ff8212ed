//! Phase 4 of a request: shape the backend's response for the client. The session it minted is
//! learned (and sealed), hop-by-hop headers go, and the body is wrapped so that the in-flight
//! guard, the pooled connection and the access record live exactly as long as the response.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::mcp::classify::RouteClass;
use crate::mcp::seal::Sealer;
use crate::mcp::session::{SESSION_HEADER, SessionSlot, session_tag};
use crate::metrics::{RequestLabels, RouteLabels, RouteName};
use crate::state::{Route, Snapshot, State};
use crate::upstream::backend::{Backend, Exchange, InFlightGuard};

use super::body::{AccessRecord, ResponseBody, SseWatch, UpstreamParts};
use super::headers::strip_hop_by_hop;
use super::request::RequestMeta;
use super::request_id::X_REQUEST_ID;

pub(super) fn shape(
    state: &Arc<State>,
    snapshot: &Snapshot,
    route: &Route,
    meta: &RequestMeta,
    (mut guard, exchange): (InFlightGuard, Exchange),
    client_upgrade: Option<OnUpgrade>,
    mut slot: Option<SessionSlot>,
) -> Response<ResponseBody> {
    let Exchange {
        mut response,
        sender,
        reusable,
    } = exchange;
    let backend = Arc::clone(guard.backend());
    let status = response.status();
    let session = settle_session(state, snapshot, meta, &backend, &mut response, &mut slot);
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, meta.request_id.header_value());
    let pool: Arc<str> = Arc::from(snapshot.pool_of(&backend));
    count_request(state, meta.class, status, &pool, &backend.address);
    count_route(state, Some(route), status);
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
        route: Arc::clone(&route.name),
        backend: Arc::clone(&backend.address),
        pool,
        session,
        request_id: meta.request_id,
        client: meta.client,
        user_agent: meta.user_agent.clone(),
        started: meta.started,
        bytes: 0,
        stream: is_sse || upgraded,
    };
    if upgraded && let Some(client) = client_upgrade {
        let upstream = hyper::upgrade::on(&mut response);
        super::websocket::spawn_tunnel(state, client, upstream, guard, record);
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Response::from_parts(parts, ResponseBody::empty());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let sse = is_sse.then(|| sse_watch(snapshot, route, meta, &backend, &mut parts.headers, slot));
    let timeouts = &route.settings.timeouts;
    let idle_timeout = if is_sse {
        timeouts.stream_idle
    } else {
        Some(timeouts.response)
    };
    let body = ResponseBody::upstream(UpstreamParts {
        body,
        guard,
        sender: reusable.then_some(sender),
        pool_limits: snapshot.pool_limits,
        idle_timeout,
        sse,
        record,
    });
    Response::from_parts(parts, body)
}

/// Learns, forgets and seals the session the response speaks of; returns its log tag.
fn settle_session(
    state: &State,
    snapshot: &Snapshot,
    meta: &RequestMeta,
    backend: &Arc<Backend>,
    response: &mut Response<Incoming>,
    slot: &mut Option<SessionSlot>,
) -> Option<String> {
    let mut tag = meta.session.as_deref().map(session_tag);
    track_session(state, meta, &mut tag, backend, response, slot);
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
        route.settings.timeouts.sse_keepalive,
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
    let name = route.map_or_else(|| Arc::from(""), |r| Arc::clone(&r.name));
    state
        .metrics
        .route_requests
        .get_or_create(&RouteLabels {
            route: RouteName(name),
            status: status.as_u16(),
        })
        .inc();
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
    slot: &mut Option<SessionSlot>,
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
        state.learn_session(id, backend, slot.take());
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
