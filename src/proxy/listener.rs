//! Accepting client connections: bind with `SO_REUSEPORT`, enforce the connection limit, read the
//! PROXY header and do the TLS handshake where the listener asks for them, then hand the
//! connection to [`super::serve`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Redirect;
use crate::state::State;

use super::proxy_protocol;
use super::request::ConnInfo;
use super::serve::{SharedBuilder, http_builder, serve};

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
    let mut builder: (u64, SharedBuilder) = {
        let snapshot = state.snapshot();
        (
            snapshot.generation,
            Arc::new(http_builder(&snapshot.config.limits)),
        )
    };
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            state.metrics.connections_refused.inc();
            state.tasks.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let snapshot = state.snapshot();
        if snapshot.generation != builder.0 {
            builder = (
                snapshot.generation,
                Arc::new(http_builder(&snapshot.config.limits)),
            );
        }
        let Some(settings) = Accepting::of(&snapshot, index) else {
            continue;
        };
        let task = handshake_and_serve(
            stream,
            peer,
            settings,
            snapshot.config.limits.handshake_timeout,
            Arc::clone(&state),
            Arc::clone(&builder.1),
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
    builder: SharedBuilder,
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
        serve(stream, conn, redirect, state, builder, shutdown, permit).await;
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
            serve(stream, conn, redirect, state, builder, shutdown, permit).await;
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Over the connection limit: a fast, complete `503` instead of a silent queue.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":{"status":503,"message":"connection limit reached"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
    let _ = stream.shutdown().await;
}
