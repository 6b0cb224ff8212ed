//! The running proxy: listeners, admin endpoint and background tasks around one shared [`State`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, LoadedConfig};
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file the config names could not be loaded (`FILE:LINE:COL: message`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A started proxy. Dropping it does not stop it: cancel the shutdown token, then [`Proxy::wait`].
#[derive(Debug)]
pub struct Proxy {
    state: Arc<State>,
    listeners: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    accept_loops: JoinSet<()>,
    background: CancellationToken,
}

impl Proxy {
    /// Loads the files `config` names, then starts as [`Proxy::start_loaded`] does.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Proxy, StartError> {
        Proxy::start_loaded(LoadedConfig::from_config(config)?, shutdown).await
    }

    /// Binds every listener and starts serving; stops accepting when `shutdown` is cancelled.
    pub async fn start_loaded(
        ready: LoadedConfig,
        shutdown: CancellationToken,
    ) -> Result<Proxy, StartError> {
        let config = &ready.config;
        let bind = |address: SocketAddr| {
            crate::proxy::listener::bind(address)
                .map_err(|source| StartError::Bind { address, source })
        };
        let listeners = config
            .listeners
            .iter()
            .map(|l| bind(l.bind))
            .collect::<Result<Vec<_>, _>>()?;
        let admin = config.admin.as_ref().map(|a| bind(a.bind)).transpose()?;
        let max_connections = config.limits.max_connections;
        let state = Arc::new(State::new(ready));
        let background = CancellationToken::new();
        // Before accepting: hostname pools must have their addresses when the first request comes.
        crate::control::discovery::start(&state, background.clone()).await;
        let connections = Arc::new(Semaphore::new(max_connections));

        let mut addresses = Vec::new();
        let mut accept_loops = JoinSet::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            addresses.push(listener.local_addr().map_err(|source| StartError::Bind {
                address: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?);
            accept_loops.spawn(crate::proxy::listener::accept_loop(
                listener,
                index,
                Arc::clone(&state),
                Arc::clone(&connections),
                shutdown.clone(),
            ));
        }
        let admin_address = admin.and_then(|listener| spawn_admin(listener, &state, &background));
        spawn_background(&state, &background);
        for address in &addresses {
            tracing::info!(%address, "listening");
        }
        Ok(Proxy {
            state,
            listeners: addresses,
            admin: admin_address,
            shutdown,
            accept_loops,
            background,
        })
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The bound addresses of the client listeners, in config order.
    pub fn listeners(&self) -> &[SocketAddr] {
        &self.listeners
    }

    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Waits for the shutdown signal, then drains: readiness fails at once, listeners close,
    /// in-flight requests finish, and streams still open at the drain timeout are closed at an
    /// event boundary with a `retry:` hint.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        self.state.begin_drain();
        while self.accept_loops.join_next().await.is_some() {}
        let drain = self.state.snapshot().config.timeouts.drain;
        self.state.tasks.close();
        tracing::info!(?drain, "draining connections");
        if tokio::time::timeout(drain, self.state.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!("drain timeout reached; closing remaining streams");
            self.state.stream_root.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.state.tasks.wait()).await;
        }
        self.background.cancel();
    }
}

/// Serves the admin API on `listener` until `stop`; returns the address it is bound to.
fn spawn_admin(
    listener: tokio::net::TcpListener,
    state: &Arc<State>,
    stop: &CancellationToken,
) -> Option<SocketAddr> {
    let address = listener.local_addr().ok();
    if let Some(address) = address {
        tracing::info!(%address, "admin listening");
    }
    tokio::spawn(crate::control::admin::serve(
        listener,
        Arc::clone(state),
        stop.clone(),
    ));
    address
}

/// Upkeep, the config file watch (when on) and health probes, until `stop`.
fn spawn_background(state: &Arc<State>, stop: &CancellationToken) {
    tokio::spawn(maintain(Arc::clone(state), stop.clone()));
    if let Some(interval) = state.snapshot().config.watch_interval {
        tokio::spawn(crate::control::reload::watch(
            Arc::clone(state),
            interval,
            stop.clone(),
        ));
    }
    tokio::spawn(crate::control::health::supervise(
        Arc::clone(state),
        stop.clone(),
    ));
}

/// Periodic upkeep: session expiry, drain deadlines, and pruning the connection pools (so that
/// check-in on the request path never scans them).
async fn maintain(state: Arc<State>, stop: CancellationToken) {
    let mut last_expiry = Instant::now();
    let mut ticks = super::periodic::Ticks::new(Duration::from_millis(250), &stop);
    while ticks.next().await {
        let now = Instant::now();
        let snapshot = state.snapshot();
        let pruned_at = tokio::time::Instant::from_std(now);
        for backend in snapshot.backends.values() {
            backend.prune_idle(snapshot.pool_limits, pruned_at);
        }
        let finished = state.reap_drained(now);
        if finished > 0 {
            tracing::info!(
                backends = finished,
                "drain deadline reached; remaining streams closed"
            );
        }
        let idle = state.snapshot().config.sessions.idle_timeout;
        if now.duration_since(last_expiry) >= Duration::from_secs(10).min(idle) {
            last_expiry = now;
            let expired = state.sessions.expire(idle);
            state.metrics.sessions_expired.inc_by(expired as u64);
        }
    }
}
