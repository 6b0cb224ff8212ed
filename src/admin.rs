//! The admin listener: liveness, readiness, metrics, status, reload.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::ResponseBody;
use crate::state::State;

pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, request)) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(state: &State, request: Request<Incoming>) -> Response<ResponseBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match not_ready_reason(state) {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        (&Method::GET, "/metrics") => {
            let body = state
                .metrics
                .render(&state.snapshot(), state.sessions.len());
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/status") => json(StatusCode::OK, status(state)),
        (&Method::POST, "/reload") => match crate::reload::reload_from_file(state) {
            Ok(generation) => json(
                StatusCode::OK,
                serde_json::json!({ "reloaded": true, "generation": generation }),
            ),
            Err(error) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({ "reloaded": false, "error": error.to_string() }),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Ready means: not draining, and the active pools have a backend that takes new work.
pub fn not_ready_reason(state: &State) -> Option<&'static str> {
    if state.is_draining() {
        return Some("draining\n");
    }
    let snapshot = state.snapshot();
    let any_usable = snapshot.active.iter().any(|(i, _)| {
        snapshot
            .pool(*i)
            .members
            .iter()
            .any(|m| m.backend.takes_new_work())
    });
    (!any_usable).then_some("no healthy backend in the active pool\n")
}

fn status(state: &State) -> serde_json::Value {
    let snapshot = state.snapshot();
    let sessions = state.sessions.count_by_owner();
    let pools: Vec<serde_json::Value> = snapshot
        .pools
        .iter()
        .map(|pool| {
            let active = snapshot
                .active
                .iter()
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
        "pools": pools,
        "draining": draining,
    })
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
