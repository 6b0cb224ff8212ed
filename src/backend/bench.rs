//! Plain-HTTP routes for the benchmark harness (`switchyard loadgen`), no MCP involved.
//!
//! Contract: `POST /bench/echo` answers 200 `application/json` with the request body;
//! `GET /bench/sse?every_ms=N&count=M` is a `text/event-stream` of M events (default: no end),
//! one every N ms (default 1000), each `data: <microseconds since the UNIX epoch>\n\n`.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;

/// Echo bodies beyond this are refused with 413.
const MAX_ECHO_BYTES: usize = 16 * 1024 * 1024;

/// Answers a request whose path starts with `/bench/`.
pub async fn handle<B>(request: Request<B>) -> Response<BoxBody<Bytes, Infallible>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/bench/echo") => echo(request).await,
        (&Method::GET, "/bench/sse") => sse(request.uri().query().unwrap_or("")),
        _ => plain(StatusCode::NOT_FOUND, "no such bench route\n"),
    }
}

async fn echo<B>(request: Request<B>) -> Response<BoxBody<Bytes, Infallible>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(request.into_body(), MAX_ECHO_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(collected.to_bytes()).boxed())
            .unwrap_or_else(|_| Response::new(BoxBody::default())),
        Err(_) => plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large or broken\n"),
    }
}

fn sse(query: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut every = Duration::from_millis(1000);
    let mut count: Option<u64> = None;
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        match (key, value.parse::<u64>()) {
            ("every_ms", Ok(ms)) => every = Duration::from_millis(ms.max(1)),
            ("count", Ok(n)) => count = Some(n),
            ("every_ms" | "count", Err(_)) => {
                return plain(StatusCode::BAD_REQUEST, "every_ms and count are integers\n");
            }
            _ => {}
        }
    }
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events =
        futures_util::stream::unfold((ticker, 0u64), move |(mut ticker, sent)| async move {
            if count.is_some_and(|count| sent >= count) {
                return None;
            }
            ticker.tick().await;
            let micros = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_micros());
            let frame = Frame::data(Bytes::from(format!("data: {micros}\n\n")));
            Some((Ok::<_, Infallible>(frame), (ticker, sent + 1)))
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap_or_else(|_| Response::new(BoxBody::default()))
}

fn plain(status: StatusCode, text: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}
