//! The admin listener: liveness, readiness, metrics, status, sessions, reload, drain.
//!
//! Every answer is JSON except `/metrics`. Off loopback the listener requires a bearer token
//! (config validation refuses otherwise); `/healthz` and `/readyz` stay open so that orchestrator
//! probes need no secret.
//!
//! The listener has its own connection cap (`[admin] max_connections`) and the client listeners'
//! header timeout, so partial requests on it can neither use up the file descriptors the data
//! plane needs nor be used up by it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::proxy::activity::Activity;
use crate::proxy::admission::{AcceptErrors, Refusals};
use crate::proxy::body::ResponseBody;
use crate::proxy::serve::{CurrentHttp, Http, drive};
use crate::state::State;

/// Session tags listed per backend by `GET /sessions`; the counts are always complete.
const SESSIONS_LISTED_PER_BACKEND: usize = 1000;

/// Serves until `shutdown`, at most `max_connections` connections at once; more get the
/// client listeners' `503`.
pub async fn serve(
    listener: TcpListener,
    max_connections: usize,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(max_connections));
    let refusals = Refusals::default();
    let mut errors = AcceptErrors::new("admin");
    let mut http = CurrentHttp::new(&state.snapshot());
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    errors.failed(&error).await;
                    continue;
                }
            },
        };
        errors.succeeded();
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!("admin connection refused: admin max_connections reached");
            tokio::spawn(refusals.clone().refuse(stream));
            continue;
        };
        let http = http.of(&state.snapshot());
        tokio::spawn(serve_one(
            stream,
            Arc::clone(&state),
            http,
            shutdown.clone(),
            permit,
        ));
    }
}

async fn serve_one(
    stream: TcpStream,
    state: Arc<State>,
    http: Arc<Http>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Activity::default();
    let requests = activity.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let open = requests.request(&request);
        let state = Arc::clone(&state);
        // Boxed: hyper's low-level HTTP/1 connection (which can park) takes `Unpin` futures.
        Box::pin(async move {
            let response = handle(&state, &request).await;
            Ok::<_, Infallible>(response.map(|body| body.count(open)))
        })
    });
    // Admin connections are not counted with the data plane's.
    let parked = Gauge::default();
    let connection = http.serve_connection(stream, service, &activity, Arc::default(), &parked);
    tokio::pin!(connection);
    drive(
        connection,
        |connection| connection.graceful_shutdown(),
        &activity,
        http.first_request(),
        &shutdown,
    )
    .await;
}

/// What an admin request asks for, decided from the path alone.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Healthz,
    Readyz,
    Metrics,
    Status,
    Sessions,
    Reload,
    Drain(&'a str),
    Undrain(&'a str),
}

impl Endpoint<'_> {
    fn parse(path: &str) -> Option<Endpoint<'_>> {
        let endpoint = match path {
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/metrics" => Endpoint::Metrics,
            "/status" => Endpoint::Status,
            "/sessions" => Endpoint::Sessions,
            "/reload" => Endpoint::Reload,
            _ => {
                let rest = path.strip_prefix("/backends/")?;
                let (address, action) = rest.rsplit_once('/')?;
                match action {
                    "drain" if !address.is_empty() => Endpoint::Drain(address),
                    "undrain" if !address.is_empty() => Endpoint::Undrain(address),
                    _ => return None,
                }
            }
        };
        Some(endpoint)
    }

    fn method(&self) -> Method {
        match self {
            Endpoint::Reload | Endpoint::Drain(_) | Endpoint::Undrain(_) => Method::POST,
            _ => Method::GET,
        }
    }

    /// Probes must work without the secret; everything else reveals or changes state.
    fn needs_token(&self) -> bool {
        !matches!(self, Endpoint::Healthz | Endpoint::Readyz)
    }
}

async fn handle(state: &Arc<State>, request: &Request<Incoming>) -> Response<ResponseBody> {
    let Some(endpoint) = Endpoint::parse(request.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "no such admin endpoint");
    };
    if endpoint.needs_token() && !authorized(state, request) {
        state.metrics.admin_unauthorized.inc();
        let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let allowed = endpoint.method();
    let method = request.method();
    if *method != allowed && !(allowed == Method::GET && *method == Method::HEAD) {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        if let Ok(value) = header::HeaderValue::from_str(allowed.as_str()) {
            response.headers_mut().insert(header::ALLOW, value);
        }
        return response;
    }
    match endpoint {
        Endpoint::Healthz => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        Endpoint::Readyz => match not_ready_reason(state) {
            None => json(StatusCode::OK, serde_json::json!({ "ready": true })),
            Some(why) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "ready": false, "reason": why.trim_end() }),
            ),
        },
        Endpoint::Metrics => metrics(state),
        Endpoint::Status => json(StatusCode::OK, status(state)),
        Endpoint::Sessions => json(StatusCode::OK, sessions(state)),
        Endpoint::Reload => reload(state).await,
        Endpoint::Drain(address) => set_drained(state, &decode(address), true),
        Endpoint::Undrain(address) => set_drained(state, &decode(address), false),
    }
}

/// With no token configured (loopback only), every request is allowed.
fn authorized(state: &State, request: &Request<Incoming>) -> bool {
    let snapshot = state.snapshot();
    let Some(token) = snapshot.loaded.admin_token.as_ref() else {
        return true;
    };
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|presented| token.matches(presented.trim_ascii()))
}

fn metrics(state: &State) -> Response<ResponseBody> {
    let body = state.render_metrics();
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

async fn reload(state: &Arc<State>) -> Response<ResponseBody> {
    match crate::control::reload::reload_off_runtime(Arc::clone(state)).await {
        Ok(generation) => json(
            StatusCode::OK,
            serde_json::json!({ "reloaded": true, "generation": generation }),
        ),
        Err(error) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "reloaded": false, "error": error.to_string() }),
        ),
    }
}

/// Clients may percent-encode the address's `:` or an IPv6 address's brackets.
fn decode(address: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(address).decode_utf8_lossy()
}

/// Drained backends take no new work but keep serving the sessions and streams they own. The
/// flag lives on the backend, so it survives reloads for as long as the address stays.
fn set_drained(state: &State, address: &str, drained: bool) -> Response<ResponseBody> {
    let snapshot = state.snapshot();
    let Some(backend) = snapshot.backends.get(address) else {
        let known: Vec<&str> = snapshot.backends.keys().map(|a| &**a).collect();
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("no backend `{address}`"), "backends": known }),
        );
    };
    let was = backend.is_drained_by_admin();
    backend.set_drained_by_admin(drained);
    if was != drained {
        tracing::info!(backend = %backend.address, drained, "admin changed backend drain");
    }
    json(
        StatusCode::OK,
        serde_json::json!({
            "address": &*backend.address,
            "pool": snapshot.pool_of(backend),
            "drained_by_admin": drained,
            "changed": was != drained,
            "in_flight": backend.load(),
            "open_streams": backend.open_streams(),
        }),
    )
}

/// Ready means: not draining, and the active pools have a backend that takes new work.
pub fn not_ready_reason(state: &State) -> Option<&'static str> {
    if state.is_draining() {
        return Some("draining\n");
    }
    let any_usable = state.snapshot().has_usable_active_backend();
    (!any_usable).then_some("no healthy backend in the active pool\n")
}

/// Sessions per owner as short tags (never the ids: they are bearer credentials for the session).
fn sessions(state: &State) -> serde_json::Value {
    let snapshot = state.snapshot();
    let mut by_owner: BTreeMap<Arc<str>, (usize, Vec<String>)> = BTreeMap::new();
    state.sessions.for_each(|id, owner| {
        let (count, tags) = by_owner.entry(Arc::clone(owner)).or_default();
        *count += 1;
        if tags.len() < SESSIONS_LISTED_PER_BACKEND {
            tags.push(crate::mcp::session::session_tag(id));
        }
    });
    let backends: Vec<serde_json::Value> = by_owner
        .into_iter()
        .map(|(address, (count, mut tags))| {
            tags.sort_unstable();
            let pool = snapshot
                .backends
                .get(&address)
                .map_or("(gone)", |b| snapshot.pool_of(b));
            serde_json::json!({
                "address": &*address,
                "pool": pool,
                "count": count,
                "truncated": count > tags.len(),
                "sessions": tags,
            })
        })
        .collect();
    serde_json::json!({ "total": state.sessions.len(), "backends": backends })
}

fn status(state: &State) -> serde_json::Value {
    let snapshot = state.snapshot();
    let sessions = state.sessions.count_by_owner();
    let pools: Vec<serde_json::Value> = snapshot
        .pools
        .iter()
        .map(|pool| {
            let active = snapshot
                .routes
                .iter()
                .flat_map(|r| &r.active)
                .any(|(i, _)| snapshot.pool(*i).name == pool.name);
            let backends: Vec<serde_json::Value> = pool
                .members
                .iter()
                .map(|m| {
                    let b = &m.backend;
                    serde_json::json!({
                        "address": &*b.address,
                        "weight": m.weight,
                        "healthy": b.is_healthy(),
                        "ejected": b.health.is_ejected(),
                        "drained_by_admin": b.is_drained_by_admin(),
                        "in_flight": b.load(),
                        "open_streams": b.open_streams(),
                        "requests": b.requests_served(),
                        "sessions": sessions.get(&b.address).copied().unwrap_or(0),
                    })
                })
                .collect();
            serde_json::json!({ "name": &*pool.name, "active": active, "backends": backends })
        })
        .collect();
    let draining: Vec<serde_json::Value> = snapshot
        .draining
        .iter()
        .map(|d| {
            serde_json::json!({
                "address": &*d.backend.address,
                "removed": d.removed,
                "open_streams": d.backend.open_streams(),
                "closes_in_ms": d.deadline.saturating_duration_since(std::time::Instant::now()).as_millis() as u64,
            })
        })
        .collect();
    serde_json::json!({
        "generation": snapshot.generation,
        "config": snapshot.config.source.display().to_string(),
        "ready": not_ready_reason(state).is_none(),
        "sessions": state.sessions.len(),
        "routes": routes(&snapshot),
        "pools": pools,
        "draining": draining,
    })
}

/// The route table: what each route matches, its pools, and whether it can take new work.
fn routes(snapshot: &crate::state::Snapshot) -> Vec<serde_json::Value> {
    snapshot
        .routes
        .iter()
        .map(|route| {
            let settings = &route.settings;
            let hosts: Vec<String> = settings.hosts.iter().map(ToString::to_string).collect();
            let (kind, path) = match &settings.path {
                crate::config::PathMatch::Prefix(p) => ("prefix", p),
                crate::config::PathMatch::Exact(p) => ("exact", p),
            };
            let active: serde_json::Map<String, serde_json::Value> = route
                .active
                .iter()
                .map(|(i, w)| (snapshot.pool(*i).name.to_string(), (*w).into()))
                .collect();
            serde_json::json!({
                "name": &*route.name,
                "hosts": hosts,
                kind: path,
                "strip_prefix": settings.strip_prefix,
                "pools": settings.pools,
                "active": active,
                "usable": route.has_usable_backend(&snapshot.pools),
            })
        })
        .collect()
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ResponseBody> {
    let mut response = text(status, value.to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json(status, serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_endpoints() {
        assert_eq!(Endpoint::parse("/healthz"), Some(Endpoint::Healthz));
        assert_eq!(
            Endpoint::parse("/backends/10.0.0.1:3001/drain"),
            Some(Endpoint::Drain("10.0.0.1:3001"))
        );
        assert_eq!(
            Endpoint::parse("/backends/mcp-blue-0.mcp-blue:3001/undrain"),
            Some(Endpoint::Undrain("mcp-blue-0.mcp-blue:3001"))
        );
        assert_eq!(Endpoint::parse("/backends//drain"), None);
        assert_eq!(decode("%5B%3A%3A1%5D%3A3001"), "[::1]:3001");
        assert_eq!(decode("10.0.0.1:3001"), "10.0.0.1:3001");
        assert_eq!(Endpoint::parse("/backends/a:1/explode"), None);
        assert_eq!(Endpoint::parse("/nope"), None);
        assert!(!Endpoint::Readyz.needs_token());
        assert!(Endpoint::Sessions.needs_token());
        assert_eq!(Endpoint::Drain("a:1").method(), Method::POST);
    }
}
