//! `switchyard loadgen`: the load generator behind `benches/compare.sh`, for what wrk cannot
//! measure — open-loop latency from the intended send time, SSE delivery latency, WebSocket
//! round trips and full TLS handshakes. Each run prints one JSON line.
//!
//! Latency is measured from when a request was *meant* to go out, so a stalled server is charged
//! for every request it delayed (no coordinated omission).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::Uri;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::sleep_until;

use progress::{Live, Progress};

mod idle;
mod post;
mod progress;
mod sse;
mod tls;
mod ws;

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
    /// Open `--connections` keep-alive connections, one POST each, and keep them idle; resident
    /// memory per idle connection (`--warmup` is the wait before measuring).
    Idle(IdleArgs),
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
    /// For an https:// URL: PEM file of the CA that signed the server certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The name sent in SNI and checked against the certificate (https:// only).
    #[arg(long, default_value = "localhost")]
    server_name: String,
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
struct IdleArgs {
    /// e.g. http://127.0.0.1:8080/bench/echo
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Size of the JSON body sent.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Seconds after the first sample for a second one, once the proxy has settled (freed
    /// memory returned to the system); 0: none.
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
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
    #[error(
        "{url}: this mode speaks {scheme}:// only; give the address of a plain listener \
         (`loadgen tls` measures TLS handshakes; `loadgen sse --ca` opens streams over TLS)"
    )]
    Scheme { url: String, scheme: &'static str },
    #[error("cannot connect to {authority}: {error}; is the server running there?")]
    Connect {
        authority: String,
        error: std::io::Error,
    },
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
            Mode::Post(args) => post::post(args).await,
            Mode::Sse(args) => sse::sse(args).await,
            Mode::Ws(args) => ws::ws(args).await,
            Mode::Tls(args) => tls::tls(args).await,
            Mode::Idle(args) => idle::idle(args).await,
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

#[derive(Debug)]
struct Target {
    authority: String,
    path: String,
}

/// The target of `url`, which must use `scheme`: refused before the run, not after it.
fn target(url: &str, scheme: &'static str) -> Result<Target, LoadgenError> {
    let uri: Uri = url.parse().map_err(|_| LoadgenError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some(scheme) {
        return Err(LoadgenError::Scheme {
            url: url.to_owned(),
            scheme,
        });
    }
    let authority = uri
        .authority()
        .filter(|a| a.port().is_some())
        .ok_or_else(|| LoadgenError::Url(url.to_owned()))?
        .to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok(Target { authority, path })
}

/// One connection before the run: a server that is not there is an error now, not an
/// "every connection failed" when the run is over.
async fn preflight(authority: &str) -> Result<(), LoadgenError> {
    connect(authority)
        .await
        .map(drop)
        .map_err(|error| LoadgenError::Connect {
            authority: authority.to_owned(),
            error,
        })
}

/// An HTTP/1 client on `stream`, its connection driven by a task of its own.
async fn http1_client<B, S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
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
    live: Arc<Live>,
}

impl ConnStats {
    fn new(histogram: &Histogram<u64>, live: &Arc<Live>) -> ConnStats {
        ConnStats {
            histogram: histogram.clone(),
            ok: 0,
            errors: 0,
            first_error: None,
            live: Arc::clone(live),
        }
    }

    fn record(&mut self, window: &Window, sent_at: Instant, done: Instant, ok: bool) {
        let live = if ok { &self.live.ok } else { &self.live.errors };
        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        self.live
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

/// Runs `connections` scheduled connections (each started by `start`) over one measurement
/// window and summarises them, with the watched processes' CPU and memory, in one JSON line.
async fn run_connections(
    kind: &'static str,
    common: &Common,
    connections: usize,
    rate: Option<f64>,
    start: impl Fn(ConnStats, Arc<Window>, Schedule) -> tokio::task::JoinHandle<ConnStats>,
) -> Result<Value, LoadgenError> {
    let window = Arc::new(Window::new(common));
    let histogram = new_histogram()?;
    let watcher = watch(common.watch_pid.clone(), &window);
    let live = Arc::new(Live::default());
    let progress = Progress::start(kind, Arc::clone(&live), Some(window.end));
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|index| {
            let schedule = Schedule::new(rate, connections.max(1), index, window.start);
            start(
                ConnStats::new(&histogram, &live),
                Arc::clone(&window),
                schedule,
            )
        })
        .collect();
    let stats = join_all(tasks).await;
    drop(progress);
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

#[cfg(test)]
mod tests {
    use super::post::json_body;
    use super::*;

    #[test]
    fn json_body_has_the_asked_size_and_parses() {
        let body = json_body(300);
        assert_eq!(body.len(), 300);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["method"], "tools/call");
    }

    #[test]
    fn target_needs_an_explicit_port_and_the_mode_s_scheme() {
        assert!(target("http://127.0.0.1/x", "http").is_err());
        let refused = target("https://127.0.0.1:8443/x", "http").unwrap_err();
        assert!(refused.to_string().contains("http:// only"), "{refused}");
        assert!(target("wss://127.0.0.1:8443/ws", "ws").is_err());
        let t = target("http://127.0.0.1:8080/bench/sse?every_ms=5", "http").unwrap();
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
