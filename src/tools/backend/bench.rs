//! The benchmark routes of the reference backend: `POST /bench/echo` and `GET /bench/sse`.
//!
//! They exist so that Switchyard, nginx and HAProxy can be compared in front of the same fast
//! backend (`benches/compare.sh`). Self-contained: the caller routes `/bench/*` here.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};

/// Largest echo body accepted; a benchmark never needs more.
const MAX_ECHO_BYTES: usize = 1024 * 1024;

pub async fn handle(request: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/bench/echo") => echo(request).await,
        (&Method::GET, "/bench/sse") => sse(sse_params(request.uri().query().unwrap_or(""))),
        _ => plain(StatusCode::NOT_FOUND, "no such benchmark route\n"),
    }
}

async fn echo(request: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_ECHO_BYTES);
    match limited.collect().await {
        Ok(collected) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(collected.to_bytes()).boxed())
            .unwrap_or_else(|_| internal_error()),
        Err(_) => plain(StatusCode::BAD_REQUEST, "unreadable or oversized body\n"),
    }
}

/// What `GET /bench/sse` sends: an event every `every_ms` (default 1000, at least 1), `count`
/// times (default: unlimited), the first at once or, with `phase=random`, after a random part
/// of the period.
#[derive(Debug, PartialEq)]
struct SseParams {
    every: Duration,
    count: Option<u64>,
    random_phase: bool,
}

fn sse_params(query: &str) -> SseParams {
    let mut params = SseParams {
        every: Duration::from_secs(1),
        count: None,
        random_phase: false,
    };
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("every_ms", value)) => {
                if let Ok(ms) = value.parse::<u64>() {
                    params.every = Duration::from_millis(ms.max(1));
                }
            }
            Some(("count", value)) => params.count = value.parse::<u64>().ok(),
            Some(("phase", value)) => params.random_phase = value == "random",
            _ => {}
        }
    }
    params
}

/// One `data: <µs since the epoch>` event every `every`, `count` times, then the stream ends.
///
/// A random phase is for fan-out measurements: streams opened in one burst would otherwise send
/// in the same millisecond for as long as they live, and the delivery latency measured would be
/// how many events share a millisecond (decided by how fast the proxy opened the streams), not
/// what an event costs. Independent clients' notifications do not line up that way.
fn sse(params: SseParams) -> Response<BoxBody<Bytes, Infallible>> {
    let SseParams {
        every,
        count,
        random_phase,
    } = params;
    let first = if random_phase {
        tokio::time::Instant::now() + every.mul_f64(fastrand::f64())
    } else {
        tokio::time::Instant::now()
    };
    let mut ticker = tokio::time::interval_at(first, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events =
        futures_util::stream::unfold((ticker, 0u64), move |(mut ticker, sent)| async move {
            if count.is_some_and(|count| sent >= count) {
                return None;
            }
            ticker.tick().await;
            let event = format!("data: {}\n\n", micros_since_epoch());
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(event))),
                (ticker, sent + 1),
            ))
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap_or_else(|_| internal_error())
}

pub fn micros_since_epoch() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros())
        .unwrap_or(0)
}

fn plain(status: StatusCode, text: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}

fn internal_error() -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(every_ms: u64, count: Option<u64>, random_phase: bool) -> SseParams {
        SseParams {
            every: Duration::from_millis(every_ms),
            count,
            random_phase,
        }
    }

    #[test]
    fn sse_params_have_defaults_and_floor() {
        assert_eq!(sse_params(""), params(1000, None, false));
        assert_eq!(sse_params("every_ms=0&count=5"), params(1, Some(5), false));
        assert_eq!(sse_params("count=x&every_ms=250"), params(250, None, false));
        assert_eq!(
            sse_params("every_ms=20&phase=random"),
            params(20, None, true)
        );
        assert_eq!(sse_params("phase=aligned"), params(1000, None, false));
    }
}
