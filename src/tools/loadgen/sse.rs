//! SSE load: many open streams, delivery latency from the event's own send time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, header};
use http_body_util::{BodyExt as _, Empty};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::time::sleep_until;

use crate::tools::backend::bench::micros_since_epoch;

use super::*;

/// Counters of the SSE mode, shared by every stream task.
struct SseShared {
    opened: AtomicUsize,
    failed: AtomicUsize,
    events: AtomicU64,
    recording: AtomicBool,
    histogram: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
    /// What the progress line shows: events, failed streams, open streams.
    live: Arc<Live>,
}

/// How streams of an https:// URL are opened.
#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

pub(super) async fn sse(args: SseArgs) -> Result<Value, LoadgenError> {
    let tls = match &args.ca {
        Some(ca) => Some(Arc::new(Tls {
            connector: super::tls::tls_connector(ca)?,
            name: rustls::pki_types::ServerName::try_from(args.server_name.clone())
                .map_err(|e| LoadgenError::Tls(e.to_string()))?,
        })),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let target = Arc::new(target(&args.url, scheme)?);
    preflight(&target.authority).await?;
    let live = Arc::new(Live::default());
    let shared = Arc::new(SseShared {
        opened: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        events: AtomicU64::new(0),
        recording: AtomicBool::new(false),
        histogram: Mutex::new(new_histogram()?),
        first_error: Mutex::new(None),
        live: Arc::clone(&live),
    });
    let progress = Progress::start("sse", live, None);
    let before = sample(&args.common.watch_pid);
    let warm = if args.common.watch_pid.is_empty() {
        None
    } else {
        warm_up(&target, tls.as_deref()).await;
        Some(sample(&args.common.watch_pid))
    };
    let opening = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let open_started = Instant::now();
    let mut tasks = Vec::with_capacity(args.streams);
    for index in 0..args.streams {
        let source = std::net::Ipv4Addr::new(
            127,
            0,
            0,
            1 + (index % usize::from(args.source_ips.max(1))) as u8,
        );
        tasks.push(tokio::spawn(sse_stream(
            Arc::clone(&target),
            tls.clone(),
            Arc::clone(&shared),
            Arc::clone(&opening),
            source,
        )));
    }
    let open_deadline = open_started + Duration::from_secs_f64(args.open_timeout);
    while shared.opened.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < args.streams
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_seconds = open_started.elapsed().as_secs_f64();
    let window = Window::new(&args.common);
    sleep_until(window.measure_from.into()).await;
    shared.recording.store(true, Ordering::Relaxed);
    let cpu_before = sample(&args.common.watch_pid);
    sleep_until(window.end.into()).await;
    shared.recording.store(false, Ordering::Relaxed);
    let during = sample(&args.common.watch_pid);
    let opened = shared.opened.load(Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    drop(progress);
    let histogram = shared
        .histogram
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut line = json!({
        "mode": "sse",
        "label": args.common.label,
        "streams_wanted": args.streams,
        "streams_open": opened,
        "streams_failed": shared.failed.load(Ordering::Relaxed),
        "open_seconds": open_seconds,
        "events": histogram.len(),
        "events_total": shared.events.load(Ordering::Relaxed),
        "seconds": window.seconds(),
        "first_error": first_error,
    });
    merge(&mut line, latency_json(&histogram));
    if !args.common.watch_pid.is_empty() {
        let per_stream = |from: u64| {
            let grown = during.rss_kib.saturating_sub(from);
            (grown * 1024).checked_div(opened as u64).unwrap_or(0)
        };
        let warm_kib = warm.as_ref().map_or(before.rss_kib, |warm| warm.rss_kib);
        merge(
            &mut line,
            json!({
                "watched_rss_kib_before": before.rss_kib,
                "watched_rss_kib_warm": warm_kib,
                "watched_rss_kib": during.rss_kib,
                "rss_bytes_per_stream": per_stream(before.rss_kib),
                "rss_bytes_per_stream_warm": per_stream(warm_kib),
                "watched_cpu_seconds": during.cpu_seconds - cpu_before.cpu_seconds,
            }),
        );
    }
    Ok(line)
}

/// Opens one stream, reads its first event and closes it, then gives the proxy a moment to
/// notice. What a proxy pays once, on its first stream (code paged in on first use, tables and
/// pools set up), then shows in the cold figure (from `before`) and not in the warm one.
async fn warm_up(target: &Target, tls: Option<&Tls>) {
    const WAIT: Duration = Duration::from_secs(10);
    if let Ok(Ok(response)) =
        tokio::time::timeout(WAIT, open_sse(target, tls, std::net::Ipv4Addr::LOCALHOST)).await
    {
        let mut body = response.into_body();
        let _ = tokio::time::timeout(WAIT, body.frame()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn sse_stream(
    target: Arc<Target>,
    tls: Option<Arc<Tls>>,
    shared: Arc<SseShared>,
    opening: Arc<Semaphore>,
    source: std::net::Ipv4Addr,
) {
    let fail = |error: String| {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        shared.live.errors.fetch_add(1, Ordering::Relaxed);
        shared
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(error);
    };
    let permit = opening.acquire().await;
    let response = match open_sse(&target, tls.as_deref(), source).await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => return fail(format!("status {}", response.status())),
        Err(error) => return fail(error),
    };
    drop(permit);
    shared.opened.fetch_add(1, Ordering::Relaxed);
    shared.live.open.fetch_add(1, Ordering::Relaxed);
    let mut body = response.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = micros_since_epoch();
        for line in data.split(|&b| b == b'\n') {
            let Some(stamp) = line.strip_prefix(b"data: ") else {
                continue;
            };
            let Some(sent) = std::str::from_utf8(stamp)
                .ok()
                .and_then(|s| s.trim().parse::<u128>().ok())
            else {
                continue;
            };
            shared.events.fetch_add(1, Ordering::Relaxed);
            shared.live.ok.fetch_add(1, Ordering::Relaxed);
            if shared.recording.load(Ordering::Relaxed) {
                let micros = u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX);
                shared
                    .histogram
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .saturating_record(micros.max(1));
            }
        }
    }
}

async fn open_sse(
    target: &Target,
    tls: Option<&Tls>,
    source: std::net::Ipv4Addr,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let address = tokio::net::lookup_host(target.authority.as_str())
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if source != std::net::Ipv4Addr::LOCALHOST {
        socket.bind((source, 0).into()).map_err(|e| e.to_string())?;
    }
    let stream = socket.connect(address).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut sender = match tls {
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.name.clone(), stream)
                .await
                .map_err(|e| e.to_string())?;
            http1_client(stream).await?
        }
        None => http1_client(stream).await?,
    };
    let request = Request::get(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}
