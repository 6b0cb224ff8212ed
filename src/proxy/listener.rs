//! Accepting client connections: bind (or take an inherited socket), enforce the connection
//! limit (the refusal and accept failures are in [`super::admission`]), read the PROXY header and
//! do the TLS handshake where the listener asks for them, then hand the connection to
//! [`super::serve`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Redirect;
use crate::state::State;

use super::admission::{AcceptErrors, Refusals};
use super::proxy_protocol;
use super::request::ConnInfo;
use super::serve::{CurrentHttp, Http, serve};

/// Binds a fresh listening socket. `SO_REUSEPORT` only when `reuse_port` asks for it: without
/// it a port another process holds is an error here rather than a silent split of its traffic.
pub fn bind(address: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // SO_REUSEADDR only lets a restart bind past connections in TIME_WAIT; Linux still refuses
    // a second listener on the port.
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(reuse_port)?;
    socket.set_nodelay(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

/// A listening socket opened before this process started serving: handed over by the process
/// it upgrades, or passed by systemd (`LISTEN_FDS`). Connections the kernel queued on it before
/// are accepted here, so none is lost.
#[derive(Debug)]
pub struct Inherited {
    /// The address the handing process's config named (`127.0.0.1:0` included); `None` from
    /// systemd, where only the bound address is known.
    pub configured: Option<SocketAddr>,
    /// Whether it served the admin API there; `None` from systemd.
    pub admin: Option<bool>,
    pub listener: std::net::TcpListener,
}

impl Inherited {
    fn local(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// Gives each configured address its socket: an inherited one where one matches, else a fresh
/// bind.
#[derive(Debug)]
pub struct Sockets {
    inherited: Vec<Inherited>,
    reuse_port: bool,
}

impl Sockets {
    pub fn new(inherited: Vec<Inherited>, reuse_port: bool) -> Sockets {
        Sockets {
            inherited,
            reuse_port,
        }
    }

    /// The socket for `address` (the admin API's when `admin`) and whether it was inherited.
    /// Matches, in this order: the same configured address and role (so `127.0.0.1:0` keeps its
    /// port across an upgrade), the same bound address, or, for a wildcard, a wildcard on the
    /// same port (systemd's `ListenStream=8080` is `[::]:8080`).
    pub fn open(
        &mut self,
        address: SocketAddr,
        admin: bool,
    ) -> std::io::Result<(TcpListener, bool)> {
        let same_port_wildcard = |local: SocketAddr| {
            address.port() != 0
                && local.port() == address.port()
                && local.ip().is_unspecified()
                && address.ip().is_unspecified()
        };
        let position =
            |matches: &dyn Fn(&Inherited) -> bool| self.inherited.iter().position(matches);
        let found =
            position(&|i| i.configured == Some(address) && i.admin.is_none_or(|was| was == admin))
                .or_else(|| position(&|i| i.local() == Some(address)))
                .or_else(|| position(&|i| i.local().is_some_and(same_port_wildcard)));
        match found {
            Some(index) => {
                let inherited = self.inherited.remove(index);
                inherited.listener.set_nonblocking(true)?;
                Ok((TcpListener::from_std(inherited.listener)?, true))
            }
            None => Ok((bind(address, self.reuse_port)?, false)),
        }
    }

    /// The bound addresses of inherited sockets no configured address took; they close when
    /// this is dropped.
    pub fn unused(&self) -> Vec<SocketAddr> {
        self.inherited.iter().filter_map(Inherited::local).collect()
    }
}

/// Accepts until `shutdown`; each connection runs on `state.tasks`. `index` is this listener's
/// place in `config.listeners`: each connection reads its listener's settings (TLS certificates
/// included) from the snapshot current when it was accepted, so a reload applies to new
/// connections and leaves open ones alone.
pub async fn accept_loop(
    listener: TcpListener,
    index: usize,
    state: Arc<State>,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut http = CurrentHttp::new(&state.snapshot());
    let refusals = Refusals::default();
    let mut errors = AcceptErrors::new("client");
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                errors.failed(&error).await;
                continue;
            }
        };
        errors.succeeded();
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            state.metrics.connections_refused.inc();
            state.tasks.spawn(refusals.clone().refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let snapshot = state.snapshot();
        let Some(settings) = Accepting::of(&snapshot, index) else {
            continue;
        };
        let task = handshake_and_serve(
            stream,
            peer,
            settings,
            snapshot.config.limits.handshake_timeout,
            Arc::clone(&state),
            http.of(&snapshot),
            shutdown.clone(),
            permit,
        );
        state.tasks.spawn(task);
    }
}

/// What one accepted connection needs of its listener's settings, taken from the snapshot current
/// when it was accepted.
struct Accepting {
    proxy_protocol: bool,
    redirect: Option<Redirect>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Accepting {
    fn of(snapshot: &crate::state::Snapshot, index: usize) -> Option<Accepting> {
        let listener = snapshot.config.listeners.get(index)?;
        Some(Accepting {
            proxy_protocol: listener.proxy_protocol,
            redirect: listener.redirect.clone(),
            tls: snapshot.loaded.listener_tls(index).cloned(),
        })
    }
}

/// PROXY header, then TLS, each within one `handshake_timeout`; any failure closes this
/// connection only.
#[allow(clippy::too_many_arguments)]
async fn handshake_and_serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    settings: Accepting,
    handshake_timeout: Duration,
    state: Arc<State>,
    http: Arc<Http>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    let peer = if settings.proxy_protocol {
        match tokio::time::timeout_at(deadline, proxy_protocol::read_header(&mut stream)).await {
            Ok(Ok(client)) => client.unwrap_or(peer),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "PROXY header refused; connection closed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no PROXY header in time; connection closed");
                return;
            }
        }
    } else {
        peer
    };
    let redirect = settings.redirect;
    let Some(tls_config) = settings.tls else {
        let (conn, taken) = ConnInfo::new(peer, false, None);
        serve(stream, conn, redirect, state, http, shutdown, permit, taken).await;
        return;
    };
    // Boxed: a TLS connection's state (rustls' session and a serve future around it, ~6 KB) in
    // line would size every connection's task for it, plain ones and their SSE streams too.
    let tls = TlsConnection {
        peer,
        redirect,
        state,
        http,
        shutdown,
        permit,
    };
    Box::pin(tls.accept_and_serve(stream, tls_config, deadline)).await;
}

/// What a TLS connection needs once its handshake is done.
struct TlsConnection {
    peer: SocketAddr,
    redirect: Option<Redirect>,
    state: Arc<State>,
    http: Arc<Http>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
}

impl TlsConnection {
    async fn accept_and_serve(
        self,
        stream: TcpStream,
        tls: Arc<rustls::ServerConfig>,
        deadline: tokio::time::Instant,
    ) {
        let peer = self.peer;
        let accepted = tokio::time::timeout_at(
            deadline,
            tokio_rustls::TlsAcceptor::from(tls).accept(stream),
        )
        .await;
        let outcome = match &accepted {
            Ok(Ok(_)) => "success",
            Ok(Err(_)) => "failure",
            Err(_) => "timeout",
        };
        self.state
            .metrics
            .tls_handshakes
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
        match accepted {
            Ok(Ok(stream)) => {
                let sni = stream.get_ref().1.server_name().map(Arc::from);
                let (conn, taken) = ConnInfo::new(peer, true, sni);
                let TlsConnection {
                    redirect,
                    state,
                    http,
                    shutdown,
                    permit,
                    ..
                } = self;
                serve(stream, conn, redirect, state, http, shutdown, permit, taken).await;
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inherited(configured: &str, admin: bool) -> (Inherited, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let socket = Inherited {
            configured: Some(configured.parse().unwrap()),
            admin: Some(admin),
            listener,
        };
        (socket, local)
    }

    #[tokio::test]
    async fn inherited_sockets_go_to_the_address_and_role_that_had_them() {
        let (listener, listener_at) = inherited("127.0.0.1:0", false);
        let (admin, admin_at) = inherited("127.0.0.1:0", true);
        let (removed, removed_at) = inherited("127.0.0.1:0", false);
        let (pinned, pinned_at) = inherited("127.0.0.1:0", false);
        let mut sockets = Sockets::new(vec![listener, admin, removed, pinned], false);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // The admin asks first, yet gets the admin's socket, not the first `127.0.0.1:0`.
        let (socket, was_inherited) = sockets.open(any, true).unwrap();
        assert_eq!(
            (socket.local_addr().unwrap(), was_inherited),
            (admin_at, true)
        );
        let (socket, _) = sockets.open(any, false).unwrap();
        assert_eq!(socket.local_addr().unwrap(), listener_at);
        // A config that now names the bound port takes that socket.
        let (socket, was_inherited) = sockets.open(pinned_at, false).unwrap();
        assert_eq!(
            (socket.local_addr().unwrap(), was_inherited),
            (pinned_at, true)
        );
        assert_eq!(sockets.unused(), vec![removed_at]);
        // Nothing matches: a fresh bind, and a busy port is an error, not a shared one.
        let (fresh, was_inherited) = sockets.open("127.0.0.1:0".parse().unwrap(), true).unwrap();
        assert!(!was_inherited);
        assert_ne!(fresh.local_addr().unwrap(), removed_at);
        let busy = sockets
            .open(fresh.local_addr().unwrap(), false)
            .unwrap_err();
        assert_eq!(busy.kind(), std::io::ErrorKind::AddrInUse);
    }
}
