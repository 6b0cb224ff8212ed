//! The bundled reference MCP server (`switchyard backend`).
//!
//! One MCP server implementation ([`mcp::ReferenceServer`], built on `rmcp`) reachable over every
//! transport a proxy in front of it must handle: Streamable HTTP at `/mcp` (the SDK's own
//! transport), legacy HTTP+SSE at `/sse` + `/messages` and WebSocket at `/ws` (the two the SDK
//! lacks, in [`legacy_sse`] and [`ws`]). [`http`] routes requests and serves the operational
//! endpoints; [`bench`] holds plain-HTTP routes for the benchmark harness.

pub mod bench;
mod http;
mod legacy_sse;
pub mod mcp;
mod stats;
mod transport;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use stats::Stats;

/// Command-line options of `switchyard backend`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Address to listen on, e.g. 127.0.0.1:3001 (port 0 picks a free port; the bound address
    /// is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub listen: SocketAddr,
    /// Name reported by the `server_status` tool and in logs.
    #[arg(long, default_value = "backend")]
    pub name: String,
    /// Browser origins allowed besides localhost ones (repeatable), e.g. https://app.example.com.
    /// Requests without an `Origin` header are always allowed; any other origin gets 403.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Host header values accepted on /mcp (repeatable; DNS-rebinding protection). Default:
    /// localhost names when listening on loopback, any host otherwise. "*" accepts any host.
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,
    /// On SIGTERM, how long in-flight tool calls may take before the backend exits anyway.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub drain_timeout: Duration,
    /// Serve /mcp without sessions (every request stands alone; JSON responses where possible).
    #[arg(long)]
    pub stateless: bool,
    /// Serve GET /metrics (OpenMetrics). Off by default: the MCP listener is what a proxy
    /// forwards clients to, and they have no business reading the backend's counters.
    #[arg(long)]
    pub metrics: bool,
    /// Serve the benchmark harness's plain-HTTP routes, POST /bench/echo and GET /bench/sse
    /// (`benches/compare.sh` passes it). Off by default: reachable through a proxy, they would
    /// let any client hold streams open or echo large bodies off the MCP path.
    #[arg(long)]
    pub bench_routes: bool,
}

impl BackendArgs {
    /// Defaults for a backend started in-process (tests, `switchyard demo`).
    pub fn new(name: &str) -> BackendArgs {
        BackendArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            name: name.to_string(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            drain_timeout: Duration::from_secs(10),
            stateless: false,
            metrics: false,
            bench_routes: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{}", crate::control::server::bind_failure(*address, error))]
    Bind {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the reference backend until SIGTERM/SIGINT, then drains.
pub async fn run_cli(args: BackendArgs) -> Result<(), BackendError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| BackendError::Bind {
            address: args.listen,
            error,
        })?;
    let address = listener.local_addr()?;
    // Scripts start backends on port 0 and read the bound address from this line.
    println!("listening on {address} as {}", args.name);
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    run(listener, args, shutdown).await
}

/// SIGTERM and SIGINT drain. SIGHUP is logged and ignored: the backend has no config to reload,
/// and a `kill -HUP` meant for the proxy (or a closed terminal) must not take a fleet down.
fn spawn_signal_handler(shutdown: CancellationToken) -> Result<(), BackendError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP ignored: the reference backend has no config to reload");
                }
            }
        }
        tracing::info!("signal received: draining");
        shutdown.cancel();
    });
    Ok(())
}

/// Serves on `listener` until `shutdown` is cancelled, then drains: `/readyz` answers 503 at
/// once, new sessions are refused, in-flight tool calls finish (up to `drain_timeout`), and
/// the open sessions and streams are closed.
pub async fn run(
    listener: TcpListener,
    args: BackendArgs,
    shutdown: CancellationToken,
) -> Result<(), BackendError> {
    let address = listener.local_addr()?;
    let stats = Arc::new(Stats::new(&args.name));
    let sessions_end = CancellationToken::new();
    let app = Arc::new(http::App::new(
        &args,
        address,
        Arc::clone(&stats),
        sessions_end.clone(),
    ));
    tracing::info!(%address, name = %args.name, "reference backend listening");

    let connections = TaskTracker::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let accept_loop = accept(
        listener,
        Arc::clone(&app),
        builder,
        connections.clone(),
        sessions_end.clone(),
    );
    let accepting = tokio::spawn(accept_loop);

    shutdown.cancelled().await;
    let deadline = Instant::now() + args.drain_timeout;
    stats.start_draining();
    tracing::info!(name = %args.name, "draining: waiting for in-flight tool calls");
    while stats.calls_in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Tool calls are done (or out of time): end every session and stream, then the connections.
    sessions_end.cancel();
    let _ = accepting.await;
    connections.close();
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing the remaining connections");
    }
    tracing::info!(name = %args.name, "stopped");
    Ok(())
}

async fn accept(
    listener: TcpListener,
    app: Arc<http::App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let builder = Arc::clone(&builder);
        let stop = stop.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, std::convert::Infallible>(app.handle(request).await) }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
}
