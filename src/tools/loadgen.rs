//! `switchyard loadgen`: the load generator behind `benches/compare.sh`, for what wrk cannot
//! measure — open-loop latency from the intended send time, SSE delivery latency, WebSocket
//! round trips and full TLS handshakes. Each run prints one JSON line.
//!
//! Latency is measured from when a request was *meant* to go out, so a stalled server is charged
//! for every request it delayed (no coordinated omission).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use http::{Request, Uri, header};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::sleep_until;

use crate::tools::backend::bench::micros_since_epoch;

#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Keep-alive JSON POSTs: maximum throughput, or a fixed open-loop `--rate`.
    Post(PostArgs),
    /// Open `--streams` SSE streams of timestamped events; delivery latency and memory per stream.
    Sse(SseArgs),
    /// JSON-RPC `ping` round trips over WebSocket (subprotocol `mcp`).
    Ws(WsArgs),
    /// New full TLS handshakes per second (no resumption).
    Tls(TlsArgs),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Process ids (comma-separated) whose CPU time and resident memory are reported.
    #[arg(long, value_delimiter = ',')]
    watch_pid: Vec<u32>,
    /// Free text copied into the output line.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, clap::Args)]
struct PostArgs {
    /// e.g. http://127.0.0.1:8080/bench/echo
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Requests per second over all connections; without it, as fast as answers come.
    #[arg(long)]
    rate: Option<f64>,
    /// Size of the JSON body sent.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct SseArgs {
    /// e.g. http://127.0.0.1:8080/bench/sse?every_ms=1000
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 256)]
    open_concurrency: usize,
    /// Spread client connections over 127.0.0.1..=127.0.0.N, for more streams than one source
    /// address has ephemeral ports.
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Give up opening streams after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    open_timeout: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct WsArgs {
    /// e.g. ws://127.0.0.1:8080/ws
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Pings per second over all connections; without it, back to back.
    #[arg(long)]
    rate: Option<f64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// host:port of the TLS listener.
    #[arg(long)]
    address: String,
    /// PEM file of the CA that signed the server certificate.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("bad url {0:?}: needs scheme://host:port/path")]
    Url(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot read CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("bad TLS setup: {0}")]
    Tls(String),
    #[error("cannot create a histogram: {0}")]
    Histogram(String),
    #[error("every connection failed; first error: {0}")]
    AllFailed(String),
}

/// Runs one measurement on a single-threaded runtime and returns its JSON line.
pub fn run_cli(args: LoadgenArgs) -> Result<String, LoadgenError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LoadgenError::Runtime)?;
    let line = runtime.block_on(async {
        match args.mode {
            Mode::Post(args) => post(args).await,
            Mode::Sse(args) => sse(args).await,
            Mode::Ws(args) => ws(args).await,
            Mode::Tls(args) => tls(args).await,
        }
    })?;
    Ok(line.to_string())
}

/// The measurement window and the counters every mode shares.
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn new(common: &Common) -> Window {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(common.warmup.max(0.0));
        Window {
            start,
            measure_from,
            end: measure_from + Duration::from_secs_f64(common.seconds.max(0.1)),
        }
    }

    fn counts(&self, sent_at: Instant, done: Instant) -> bool {
        sent_at >= self.measure_from && done <= self.end
    }

    fn seconds(&self) -> f64 {
        (self.end - self.measure_from).as_secs_f64()
    }
}

/// 1 µs to 100 s at 3 significant digits.
fn new_histogram() -> Result<Histogram<u64>, LoadgenError> {
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .map_err(|e| LoadgenError::Histogram(e.to_string()))
}

fn latency_json(histogram: &Histogram<u64>) -> Value {
    json!({
        "p50_us": histogram.value_at_quantile(0.50),
        "p90_us": histogram.value_at_quantile(0.90),
        "p99_us": histogram.value_at_quantile(0.99),
        "p999_us": histogram.value_at_quantile(0.999),
        "max_us": histogram.max(),
        "mean_us": histogram.mean().round(),
    })
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// CPU seconds (user + system) and resident KiB of the watched processes, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    cpu_seconds: f64,
    rss_kib: u64,
}

fn sample(pids: &[u32]) -> ProcSample {
    // Linux reports CPU time in clock ticks of USER_HZ, 100 on every mainstream architecture.
    const TICKS_PER_SECOND: f64 = 100.0;
    let mut total = ProcSample::default();
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
                .sum();
            total.cpu_seconds += ticks as f64 / TICKS_PER_SECOND;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            total.rss_kib += status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Samples the watched processes at the start and end of the window, in the background.
fn watch(pids: Vec<u32>, window: &Window) -> tokio::task::JoinHandle<Value> {
    let (from, end) = (window.measure_from, window.end);
    tokio::spawn(async move {
        if pids.is_empty() {
            return json!({});
        }
        sleep_until(from.into()).await;
        let before = sample(&pids);
        sleep_until(end.into()).await;
        let after = sample(&pids);
        json!({
            "watched_cpu_seconds": after.cpu_seconds - before.cpu_seconds,
            "watched_rss_kib": after.rss_kib,
        })
    })
}

struct Target {
    authority: String,
    path: String,
}

fn target(url: &str) -> Result<Target, LoadgenError> {
    let uri: Uri = url.parse().map_err(|_| LoadgenError::Url(url.to_owned()))?;
    let authority = uri
        .authority()
        .filter(|a| a.port().is_some())
        .ok_or_else(|| LoadgenError::Url(url.to_owned()))?
        .to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok(Target { authority, path })
}

async fn connect(authority: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What one connection of a request/response mode measured.
struct ConnStats {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ConnStats {
    fn new(histogram: &Histogram<u64>) -> ConnStats {
        ConnStats {
            histogram: histogram.clone(),
            ok: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, window: &Window, sent_at: Instant, done: Instant, ok: bool) {
        if !window.counts(sent_at, done) {
            return;
        }
        if ok {
            self.ok += 1;
            let micros = u64::try_from((done - sent_at).as_micros()).unwrap_or(u64::MAX);
            self.histogram.saturating_record(micros.max(1));
        } else {
            self.errors += 1;
        }
    }

    fn fail(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }
}

/// Sums the connections' results into the output line.
fn summarize(
    mode: &str,
    common: &Common,
    window: &Window,
    stats: Vec<ConnStats>,
) -> Result<Value, LoadgenError> {
    let mut histogram = new_histogram()?;
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for conn in stats {
        let _ = histogram.add(&conn.histogram);
        ok += conn.ok;
        errors += conn.errors;
        first_error = first_error.or(conn.first_error);
    }
    if ok == 0 {
        return Err(LoadgenError::AllFailed(
            first_error.unwrap_or_else(|| "no answer in the window".to_owned()),
        ));
    }
    let mut line = json!({
        "mode": mode,
        "label": common.label,
        "ok": ok,
        "errors": errors,
        "seconds": window.seconds(),
        "per_second": (ok as f64 / window.seconds()).round(),
    });
    merge(&mut line, latency_json(&histogram));
    if let Some(error) = first_error {
        merge(&mut line, json!({ "first_error": error }));
    }
    Ok(line)
}

/// The send schedule of one connection: back to back, or every `interval` from its own offset.
struct Schedule {
    interval: Option<Duration>,
    next: Instant,
}

impl Schedule {
    fn new(rate: Option<f64>, connections: usize, index: usize, start: Instant) -> Schedule {
        let interval = rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(connections as f64 / r));
        // Stagger the connections evenly over one interval, so the aggregate rate is smooth.
        let offset = interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(index as f64 / connections as f64)
        });
        Schedule {
            interval,
            next: start + offset,
        }
    }

    /// Waits for the next intended send time and returns it (now, when not rate-limited).
    async fn wait(&mut self) -> Instant {
        let Some(interval) = self.interval else {
            return Instant::now();
        };
        let intended = self.next;
        self.next += interval;
        sleep_until(intended.into()).await;
        intended
    }
}

fn json_body(size: usize) -> Bytes {
    let head = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":""#;
    let tail = r#""}}}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(fill)))
}

async fn post(args: PostArgs) -> Result<Value, LoadgenError> {
    let target = Arc::new(target(&args.url)?);
    let body = json_body(args.body_bytes);
    run_connections(
        "post",
        &args.common,
        args.connections,
        args.rate,
        |stats, window, schedule| {
            tokio::spawn(post_connection(
                stats,
                Arc::clone(&target),
                body.clone(),
                window,
                schedule,
            ))
        },
    )
    .await
}

/// Runs `connections` scheduled connections (each started by `start`) over one measurement
/// window and summarises them, with the watched processes' CPU and memory, in one JSON line.
async fn run_connections(
    kind: &str,
    common: &Common,
    connections: usize,
    rate: Option<f64>,
    start: impl Fn(ConnStats, Arc<Window>, Schedule) -> tokio::task::JoinHandle<ConnStats>,
) -> Result<Value, LoadgenError> {
    let window = Arc::new(Window::new(common));
    let histogram = new_histogram()?;
    let watcher = watch(common.watch_pid.clone(), &window);
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|index| {
            let schedule = Schedule::new(rate, connections.max(1), index, window.start);
            start(ConnStats::new(&histogram), Arc::clone(&window), schedule)
        })
        .collect();
    let stats = join_all(tasks).await;
    let mut line = summarize(kind, common, &window, stats)?;
    merge(
        &mut line,
        json!({ "connections": connections, "target_rate": rate }),
    );
    merge(&mut line, watcher.await.unwrap_or_default());
    Ok(line)
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<ConnStats>>) -> Vec<ConnStats> {
    let mut stats = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(conn) = task.await {
            stats.push(conn);
        }
    }
    stats
}

async fn post_connection(
    mut stats: ConnStats,
    target: Arc<Target>,
    body: Bytes,
    window: Arc<Window>,
    mut schedule: Schedule,
) -> ConnStats {
    // Reconnects after a failure, so one reset connection does not end the run.
    'connection: while Instant::now() < window.end {
        let sender = match connect(&target.authority).await {
            Ok(stream) => hyper::client::conn::http1::handshake(TokioIo::new(stream)).await,
            Err(error) => {
                stats.fail(error);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut sender = match sender {
            Ok((sender, connection)) => {
                tokio::spawn(connection);
                sender
            }
            Err(error) => {
                stats.fail(error);
                continue;
            }
        };
        while Instant::now() < window.end {
            let sent_at = schedule.wait().await;
            // A server may close a keep-alive connection after N requests (nginx's
            // `keepalive_requests`): not a failed request, just open another connection.
            if sender.ready().await.is_err() {
                continue 'connection;
            }
            let request = Request::post(target.path.as_str())
                .header(header::HOST, target.authority.as_str())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json, text/event-stream")
                .body(Full::new(body.clone()));
            let Ok(request) = request else {
                stats.fail("cannot build request");
                return stats;
            };
            let outcome = match sender.send_request(request).await {
                Ok(response) => {
                    let success = response.status().is_success();
                    response.into_body().collect().await.is_ok() && success
                }
                Err(error) => {
                    stats.fail(error);
                    continue 'connection;
                }
            };
            stats.record(&window, sent_at, Instant::now(), outcome);
        }
    }
    stats
}

/// Counters of the SSE mode, shared by every stream task.
struct SseShared {
    opened: AtomicUsize,
    failed: AtomicUsize,
    events: AtomicU64,
    recording: AtomicBool,
    histogram: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

async fn sse(args: SseArgs) -> Result<Value, LoadgenError> {
    let target = Arc::new(target(&args.url)?);
    let shared = Arc::new(SseShared {
        opened: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        events: AtomicU64::new(0),
        recording: AtomicBool::new(false),
        histogram: Mutex::new(new_histogram()?),
        first_error: Mutex::new(None),
    });
    let before = sample(&args.common.watch_pid);
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
        let grown = during.rss_kib.saturating_sub(before.rss_kib);
        merge(
            &mut line,
            json!({
                "watched_rss_kib_before": before.rss_kib,
                "watched_rss_kib": during.rss_kib,
                "rss_bytes_per_stream": if opened > 0 { (grown * 1024) / opened as u64 } else { 0 },
                "watched_cpu_seconds": during.cpu_seconds - cpu_before.cpu_seconds,
            }),
        );
    }
    Ok(line)
}

async fn sse_stream(
    target: Arc<Target>,
    shared: Arc<SseShared>,
    opening: Arc<Semaphore>,
    source: std::net::Ipv4Addr,
) {
    let fail = |error: String| {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        shared
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(error);
    };
    let permit = opening.acquire().await;
    let response = match open_sse(&target, source).await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => return fail(format!("status {}", response.status())),
        Err(error) => return fail(error),
    };
    drop(permit);
    shared.opened.fetch_add(1, Ordering::Relaxed);
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
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
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

async fn ws(args: WsArgs) -> Result<Value, LoadgenError> {
    let target = Arc::new(target(&args.url)?);
    let url = Arc::new(args.url.clone());
    run_connections(
        "ws",
        &args.common,
        args.connections,
        args.rate,
        |stats, window, schedule| {
            tokio::spawn(ws_connection(
                stats,
                Arc::clone(&target),
                Arc::clone(&url),
                window,
                schedule,
            ))
        },
    )
    .await
}

async fn ws_connection(
    mut stats: ConnStats,
    target: Arc<Target>,
    url: Arc<String>,
    window: Arc<Window>,
    mut schedule: Schedule,
) -> ConnStats {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = match url.as_str().into_client_request() {
        Ok(request) => request,
        Err(error) => {
            stats.fail(error);
            return stats;
        }
    };
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static("mcp"),
    );
    let stream = match connect(&target.authority).await {
        Ok(stream) => stream,
        Err(error) => {
            stats.fail(error);
            return stats;
        }
    };
    let mut socket = match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => socket,
        Err(error) => {
            stats.fail(error);
            return stats;
        }
    };
    let mut id: u64 = 0;
    while Instant::now() < window.end {
        let sent_at = schedule.wait().await;
        id += 1;
        let ping = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        if let Err(error) = socket.send(Message::text(ping)).await {
            stats.fail(error);
            return stats;
        }
        let answered = loop {
            match socket.next().await {
                Some(Ok(Message::Text(_))) => break true,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break false,
            }
        };
        stats.record(&window, sent_at, Instant::now(), answered);
        if !answered {
            stats.fail("websocket closed");
            return stats;
        }
    }
    let _ = socket.close(None).await;
    stats
}

async fn tls(args: TlsArgs) -> Result<Value, LoadgenError> {
    let connector = tls_connector(&args.ca)?;
    let server_name = rustls::pki_types::ServerName::try_from(args.server_name.clone())
        .map_err(|e| LoadgenError::Tls(e.to_string()))?;
    let address = Arc::new(args.address.clone());
    let window = Arc::new(Window::new(&args.common));
    let histogram = new_histogram()?;
    let watcher = watch(args.common.watch_pid.clone(), &window);
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let (connector, server_name) = (connector.clone(), server_name.clone());
            let (address, window) = (Arc::clone(&address), Arc::clone(&window));
            let mut stats = ConnStats::new(&histogram);
            tokio::spawn(async move {
                while Instant::now() < window.end {
                    let started = Instant::now();
                    let outcome = handshake(&connector, &address, server_name.clone()).await;
                    stats.record(&window, started, Instant::now(), outcome.is_ok());
                    if let Err(error) = outcome {
                        stats.first_error.get_or_insert(error);
                    }
                }
                stats
            })
        })
        .collect();
    let stats = join_all(tasks).await;
    let mut line = summarize("tls", &args.common, &window, stats)?;
    merge(&mut line, json!({ "connections": args.connections }));
    merge(&mut line, watcher.await.unwrap_or_default());
    Ok(line)
}

/// X25519 only and no resumption: every server pays the same full handshake, whatever groups
/// its TLS library prefers.
fn tls_connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector, LoadgenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let ca_error = |reason: String| LoadgenError::Ca {
        path: ca.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| ca_error(e.to_string()))? {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LoadgenError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    address: &str,
    server_name: rustls::pki_types::ServerName<'static>,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let stream = connect(address).await.map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(server_name, stream)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tls.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_has_the_asked_size_and_parses() {
        let body = json_body(300);
        assert_eq!(body.len(), 300);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["method"], "tools/call");
    }

    #[test]
    fn target_needs_an_explicit_port() {
        assert!(target("http://127.0.0.1/x").is_err());
        let t = target("http://127.0.0.1:8080/bench/sse?every_ms=5").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/bench/sse?every_ms=5");
    }

    #[test]
    fn open_loop_schedule_staggers_connections() {
        let start = Instant::now();
        let first = Schedule::new(Some(1000.0), 10, 0, start);
        let sixth = Schedule::new(Some(1000.0), 10, 5, start);
        assert_eq!(first.interval, Some(Duration::from_millis(10)));
        assert_eq!(sixth.next - start, Duration::from_millis(5));
        assert!(Schedule::new(None, 10, 3, start).interval.is_none());
    }
}
