//! The running proxy: listeners, admin endpoint and background tasks around one shared [`State`].

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, LoadedConfig};
use crate::proxy::listener::{Inherited, Sockets};
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file the config names could not be loaded (`FILE:LINE:COL: message`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The OS error is in the message (with what to do about it), not a `source`: a caller that
    /// prints the chain would repeat it.
    #[error("{}", bind_failure(*address, error))]
    Bind {
        address: SocketAddr,
        error: std::io::Error,
    },
    /// Another process listens on the address: maybe the Switchyard this one should replace.
    #[error("{}; if it is a running Switchyard, take over from it without losing a connection \
             with `switchyard run --config FILE --upgrade`, or share the port on purpose with \
             [lifecycle] reuse_port = true", bind_failure(*address, &std::io::ErrorKind::AddrInUse.into()))]
    Busy { address: SocketAddr },
}

impl StartError {
    fn bind(address: SocketAddr, source: std::io::Error) -> StartError {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartError::Busy { address }
        } else {
            StartError::Bind {
                address,
                error: source,
            }
        }
    }
}

/// A listening socket this process serves, as a hand-over offers it to the process replacing it.
#[derive(Debug)]
pub struct Listening {
    /// As the config wrote it, `127.0.0.1:0` included: the successor matches its own config
    /// against this.
    pub configured: SocketAddr,
    pub local: SocketAddr,
    pub admin: bool,
    /// Taken over from the previous process or systemd rather than bound here.
    pub inherited: bool,
    /// A duplicate of the socket: whoever receives it accepts from the same kernel queue.
    pub fd: OwnedFd,
}

/// What handing over needs of a running proxy: its sockets, and the way to step down once the
/// successor accepts on them.
#[derive(Debug)]
pub struct Handover {
    pub sockets: Vec<Listening>,
    shutdown: CancellationToken,
    admin_stop: CancellationToken,
}

impl Handover {
    /// The successor accepts on every socket: stop accepting here, the admin API included (so
    /// readiness is answered by the successor alone), and drain.
    pub fn step_down(&self) {
        self.admin_stop.cancel();
        self.shutdown.cancel();
    }

    /// The proxy's shutdown token: once cancelled there is nothing left to hand over.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// Why binding `address` failed, and what to do instead: the proxy's listeners and the reference
/// backend say the same.
pub fn bind_failure(address: SocketAddr, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let port = address.port();
    match error.kind() {
        ErrorKind::AddrInUse => format!(
            "cannot listen on {address}: another process already listens there \
             (`ss -ltnp 'sport = :{port}'` shows which); stop it or choose another port"
        ),
        ErrorKind::PermissionDenied => format!(
            "cannot listen on {address}: permission denied; ports below 1024 need root or \
             CAP_NET_BIND_SERVICE: choose a port of 1024 or above, or grant the capability"
        ),
        ErrorKind::AddrNotAvailable => format!(
            "cannot listen on {address}: no interface of this machine has that address; \
             use one of its own addresses, 127.0.0.1, or 0.0.0.0 for all of them"
        ),
        _ => format!("cannot listen on {address}: {error}"),
    }
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
    admin_stop: CancellationToken,
    /// Duplicates of the listening sockets for a hand-over; dropped as soon as accepting stops,
    /// so no socket stays open with nobody accepting from it.
    handover: Vec<Listening>,
}

/// The sockets a start opened, in config order.
struct Opened {
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    handover: Vec<Listening>,
}

/// Takes an inherited socket or binds a fresh one for every listener and the admin API.
fn open_sockets(config: &Config, inherited: Vec<Inherited>) -> Result<Opened, StartError> {
    let mut sockets = Sockets::new(inherited, config.lifecycle.reuse_port);
    let mut handover = Vec::new();
    let mut open = |configured: SocketAddr, admin: bool| {
        let failed = |source| StartError::bind(configured, source);
        let (listener, inherited) = sockets.open(configured, admin).map_err(failed)?;
        let local = listener.local_addr().map_err(failed)?;
        let fd = listener.as_fd().try_clone_to_owned().map_err(failed)?;
        handover.push(Listening {
            configured,
            local,
            admin,
            inherited,
            fd,
        });
        Ok::<_, StartError>(listener)
    };
    let listeners = config
        .listeners
        .iter()
        .map(|l| open(l.bind, false))
        .collect::<Result<Vec<_>, _>>()?;
    let admin = config
        .admin
        .as_ref()
        .map(|a| open(a.bind, true))
        .transpose()?;
    for address in sockets.unused() {
        tracing::warn!(%address, "an inherited socket matches no [[listener]] or [admin]: closed");
    }
    Ok(Opened {
        listeners,
        admin,
        handover,
    })
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
        Proxy::start_with(ready, shutdown, Vec::new()).await
    }

    /// Like [`Proxy::start_loaded`], serving on `inherited` sockets where they match a listener
    /// or the admin address, and binding the others.
    pub async fn start_with(
        ready: LoadedConfig,
        shutdown: CancellationToken,
        inherited: Vec<Inherited>,
    ) -> Result<Proxy, StartError> {
        let opened = open_sockets(&ready.config, inherited)?;
        let max_connections = ready.config.limits.max_connections;
        let admin_cap = ready.config.admin.as_ref().map_or(0, |a| a.max_connections);
        crate::control::open_files::raise_and_log(max_connections, admin_cap);
        let state = Arc::new(State::new(ready));
        let background = CancellationToken::new();
        // Before accepting: hostname pools must have their addresses when the first request comes.
        crate::control::discovery::start(&state, background.clone()).await;
        let connections = Arc::new(Semaphore::new(max_connections));

        let mut addresses = Vec::new();
        let mut accept_loops = JoinSet::new();
        let sockets = opened.handover.iter().filter(|l| !l.admin);
        for (index, (listener, socket)) in opened.listeners.into_iter().zip(sockets).enumerate() {
            addresses.push(socket.local);
            accept_loops.spawn(crate::proxy::listener::accept_loop(
                listener,
                index,
                Arc::clone(&state),
                Arc::clone(&connections),
                shutdown.clone(),
            ));
        }
        let admin_stop = background.child_token();
        let admin_address = opened
            .admin
            .and_then(|listener| spawn_admin(listener, admin_cap, &state, &admin_stop));
        spawn_background(&state, &background);
        for socket in opened.handover.iter().filter(|l| !l.admin) {
            let (address, inherited) = (socket.local, socket.inherited);
            tracing::info!(%address, inherited, "listening");
        }
        Ok(Proxy {
            state,
            listeners: addresses,
            admin: admin_address,
            shutdown,
            accept_loops,
            background,
            admin_stop,
            handover: opened.handover,
        })
    }

    /// The listening sockets and the means to step down, for handing over to a new process.
    /// Taken once; later calls give no sockets.
    pub fn handover(&mut self) -> Handover {
        Handover {
            sockets: std::mem::take(&mut self.handover),
            shutdown: self.shutdown.clone(),
            admin_stop: self.admin_stop.clone(),
        }
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
        self.handover.clear();
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
    max_connections: usize,
    state: &Arc<State>,
    stop: &CancellationToken,
) -> Option<SocketAddr> {
    let address = listener.local_addr().ok();
    if let Some(address) = address {
        tracing::info!(%address, "admin listening");
    }
    tokio::spawn(crate::control::admin::serve(
        listener,
        max_connections,
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
    tokio::spawn(crate::control::policy::upkeep(
        Arc::clone(state),
        stop.clone(),
    ));
}

/// Periodic upkeep: session expiry, drain deadlines, the series of backends that left, pruning
/// the connection pools (so that check-in on the request path never scans them), and returning
/// freed memory to the system.
async fn maintain(state: Arc<State>, stop: CancellationToken) {
    let mut last_expiry = Instant::now();
    let mut last_trim = Instant::now();
    let trimmer = Arc::new(std::sync::Mutex::new(super::memory::Trimmer::default()));
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
        state.forget_departed();
        let idle = state.snapshot().config.sessions.idle_timeout;
        if now.duration_since(last_expiry) >= Duration::from_secs(10).min(idle) {
            last_expiry = now;
            let expired = state.sessions.expire(idle);
            state.metrics.sessions_expired.inc_by(expired as u64);
        }
        if now.duration_since(last_trim) >= super::memory::TRIM_EVERY {
            last_trim = now;
            trim_memory(&trimmer);
        }
    }
}

/// Runs beside the workers: a trim walks every heap, which takes milliseconds once the heap holds
/// tens of thousands of connections. The lock only orders ticks: one trim at a time.
fn trim_memory(trimmer: &Arc<std::sync::Mutex<super::memory::Trimmer>>) {
    let trimmer = Arc::clone(trimmer);
    tokio::task::spawn_blocking(move || {
        let Ok(mut trimmer) = trimmer.try_lock() else {
            return;
        };
        let started = Instant::now();
        if let Some(trim) = trimmer.tick() {
            tracing::debug!(
                free_bytes = trim.free_before,
                released = trim.released,
                took_us = started.elapsed().as_micros() as u64,
                "allocator trimmed"
            );
        }
    });
}
