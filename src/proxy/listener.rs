//! Accepting client connections: bind with `SO_REUSEPORT`, enforce the connection limit (the
//! refusal and accept failures are in [`super::admission`]), read the PROXY header and do the TLS
//! handshake where the listener asks for them, then hand the connection to [`super::serve`].

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

/// Binds with `SO_REUSEPORT`, so a new proxy process can bind the same port before the old one
/// drains (zero-gap restarts).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(address)?;
    socket.listen(4096)
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
    let Some(tls) = settings.tls else {
        let conn = ConnInfo {
            peer,
            tls: false,
            sni: None,
        };
        serve(stream, conn, redirect, state, http, shutdown, permit).await;
        return;
    };
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
    state
        .metrics
        .tls_handshakes
        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
        .inc();
    match accepted {
        Ok(Ok(stream)) => {
            let sni = stream.get_ref().1.server_name().map(Arc::from);
            let conn = ConnInfo {
                peer,
                tls: true,
                sni,
            };
            serve(stream, conn, redirect, state, http, shutdown, permit).await;
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}
