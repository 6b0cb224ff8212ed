//! Restarts that lose no connection: a new process takes the running one's listening sockets
//! instead of binding next to them (`switchyard run --upgrade`), as nginx's binary upgrade,
//! HAProxy's `-x`, Envoy's hot restart and Pingora's `--upgrade` do; and sockets passed by
//! systemd socket activation (`LISTEN_FDS`).
//!
//! A listening socket is never closed while connections may be queued on it: the new process
//! receives duplicates of the very sockets the old one accepts on (see [`wire`] for the
//! exchange), starts accepting, and only then does the old one stop accepting and drain. The
//! two find each other through a Unix socket, `[lifecycle] upgrade_socket` or a path derived
//! from the config file's; each refuses a peer running as another user.

mod wire;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use crate::config::Config;
use crate::proxy::listener::Inherited;

use super::server::Handover;
use wire::{Message, SocketInfo, WireError};

/// How long the old process waits for the new one to say it accepts: its start (discovery's
/// first lookups included) must fit.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new process waits for the old one to answer a message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "no running Switchyard answers at {}: {source} (start without --upgrade when none runs; \
         both processes must use the same config file or [lifecycle] upgrade_socket)",
        path.display()
    )]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another Switchyard with this config is running (it answers at {}): start this one \
         with --upgrade to take over its sockets, or stop it first",
        path.display()
    )]
    AlreadyRunning { path: PathBuf },
    #[error("the process at the upgrade socket runs as user {theirs}, this one as {ours}")]
    Stranger { theirs: u32, ours: u32 },
    #[error("the running Switchyard refused the hand-over: {0}")]
    Refused(String),
    #[error("hand-over failed: {0}")]
    Wire(#[from] WireError),
    #[error("hand-over failed: {0}")]
    Protocol(String),
    #[error("cannot create the upgrade socket {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "systemd passed file descriptor {fd}, which is not a TCP listening socket: {source} \
         (the socket unit's ListenStream= must name a TCP address)"
    )]
    Activation { fd: usize, source: std::io::Error },
}

/// The upgrade socket of `config`: `[lifecycle] upgrade_socket`, or
/// `$TMPDIR/switchyard-<hash of the config file's canonical path>.sock`, so two processes
/// started on the same file find each other however the path was spelled.
pub fn socket_path(config: &Config) -> PathBuf {
    if let Some(file) = &config.lifecycle.upgrade_socket {
        return file.path.clone();
    }
    let source = std::fs::canonicalize(&config.source)
        .or_else(|_| std::path::absolute(&config.source))
        .unwrap_or_else(|_| config.source.clone());
    let hash = crate::mcp::hash::stable_hash(source.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("switchyard-{hash:016x}.sock"))
}

/// The listening sockets systemd passed (`LISTEN_FDS`), in the socket unit's order. Reads and
/// clears the `LISTEN_*` variables, so it must run before any other thread starts.
pub fn systemd_sockets() -> Result<Vec<Inherited>, UpgradeError> {
    let mut passed = listenfd::ListenFd::from_env();
    let mut sockets = Vec::new();
    for index in 0..passed.len() {
        let fd = 3 + index;
        match passed.take_tcp_listener(index) {
            Ok(Some(listener)) => sockets.push(Inherited {
                configured: None,
                admin: None,
                listener,
            }),
            Ok(None) => {}
            Err(source) => return Err(UpgradeError::Activation { fd, source }),
        }
    }
    Ok(sockets)
}

/// A hand-over under way, seen from the new process: the old one's sockets are here, and it
/// keeps accepting until [`TakeOver::confirm`].
#[derive(Debug)]
pub struct TakeOver {
    stream: UnixStream,
    old_pid: u32,
    sockets: Vec<Inherited>,
}

/// Connects to the running process at `path` and receives its listening sockets.
pub async fn take_over(path: &Path) -> Result<TakeOver, UpgradeError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| UpgradeError::NotRunning {
            path: path.to_path_buf(),
            source,
        })?;
    same_user(&stream)?;
    let (message, fds) = answer(wire::receive(&stream)).await?;
    let (old_pid, infos) = match message {
        Message::Offer { pid, sockets } => (pid, sockets),
        Message::Refused { reason } => return Err(UpgradeError::Refused(reason)),
        other => return Err(unexpected(&other)),
    };
    if fds.len() != infos.len() {
        return Err(UpgradeError::Protocol(format!(
            "{} sockets described, {} received",
            infos.len(),
            fds.len()
        )));
    }
    let sockets = infos
        .into_iter()
        .zip(fds)
        .map(|(info, fd)| Inherited {
            configured: Some(info.configured),
            admin: Some(info.admin),
            listener: std::net::TcpListener::from(fd),
        })
        .collect();
    Ok(TakeOver {
        stream,
        old_pid,
        sockets,
    })
}

impl TakeOver {
    /// The sockets to serve on; taken once.
    pub fn take_sockets(&mut self) -> Vec<Inherited> {
        std::mem::take(&mut self.sockets)
    }

    /// Tells the old process this one accepts on every socket, and waits for it to step down.
    /// Returns its pid. An error means it did not: it keeps serving.
    pub async fn confirm(self) -> Result<u32, UpgradeError> {
        let ready = Message::Ready {
            pid: std::process::id(),
        };
        answer(wire::send(&self.stream, &ready, &[])).await?;
        match answer(wire::receive(&self.stream)).await? {
            (Message::SteppingDown, _) => Ok(self.old_pid),
            (other, _) => Err(unexpected(&other)),
        }
    }
}

async fn answer<T>(
    exchange: impl Future<Output = Result<T, WireError>>,
) -> Result<T, UpgradeError> {
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| UpgradeError::Protocol(format!("no answer within {ANSWER_TIMEOUT:?}")))?
        .map_err(UpgradeError::from)
}

fn unexpected(message: &Message) -> UpgradeError {
    UpgradeError::Protocol(format!("unexpected message {message:?}"))
}

/// Refuses a peer that runs as another user: whoever holds the sockets can take the ports.
fn same_user(stream: &UnixStream) -> Result<(), UpgradeError> {
    let theirs = stream
        .peer_cred()
        .map_err(|e| UpgradeError::Protocol(format!("cannot read the peer's credentials: {e}")))?
        .uid();
    let ours = rustix::process::geteuid().as_raw();
    if theirs == ours {
        Ok(())
    } else {
        Err(UpgradeError::Stranger { theirs, ours })
    }
}

/// Refuses a plain start while another process with the same upgrade socket runs: its ports
/// would be busy anyway, and `--upgrade` is what the operator meant. A socket file nobody
/// listens on (a crashed process's) is no obstacle.
pub async fn ensure_not_running(path: &Path) -> Result<(), UpgradeError> {
    match UnixStream::connect(path).await {
        Ok(_) => Err(UpgradeError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(_) => Ok(()),
    }
}

/// This process's upgrade socket file; removed at exit unless a successor took the path over.
#[derive(Debug)]
pub struct UpgradeSocket {
    path: PathBuf,
    identity: (u64, u64),
    handed_over: Arc<AtomicBool>,
}

impl UpgradeSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file after a plain shutdown, if it is still this process's: after a
    /// hand-over the path belongs to the successor.
    pub fn remove(&self) {
        if self.handed_over.load(Ordering::SeqCst) {
            return;
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An upgrade socket bound under a temporary name and made owner-only, not yet reachable at its
/// path: binding it can fail before anything is taken over, placing it hardly can.
#[derive(Debug)]
pub struct Prepared {
    listener: Option<std::os::unix::net::UnixListener>,
    temporary: PathBuf,
    path: PathBuf,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Binds the upgrade socket for `path` under a temporary name beside it, owner-only.
pub fn prepare(path: &Path) -> Result<Prepared, UpgradeError> {
    let failed = |source| UpgradeError::Listen {
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_file_name(format!(".{}.new", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = std::os::unix::net::UnixListener::bind(&temporary).map_err(failed)?;
    let prepared = Prepared {
        listener: Some(listener),
        temporary,
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(&prepared.temporary, std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    Ok(prepared)
}

impl Prepared {
    /// Renames the socket over its path, replacing a stale file or the predecessor's in one
    /// step, and serves hand-overs of `handover`'s sockets until this process shuts down or
    /// hands over.
    pub fn offer(mut self, handover: Handover) -> Result<UpgradeSocket, UpgradeError> {
        let failed = |source| UpgradeError::Listen {
            path: self.path.clone(),
            source,
        };
        std::fs::rename(&self.temporary, &self.path).map_err(failed)?;
        let meta = std::fs::symlink_metadata(&self.path).map_err(failed)?;
        let listener = self
            .listener
            .take()
            .ok_or_else(|| UpgradeError::Protocol("upgrade socket already offered".into()))?;
        listener.set_nonblocking(true).map_err(failed)?;
        let listener = UnixListener::from_std(listener).map_err(failed)?;
        let handed_over = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve(listener, handover, Arc::clone(&handed_over)));
        Ok(UpgradeSocket {
            path: self.path.clone(),
            identity: (meta.dev(), meta.ino()),
            handed_over,
        })
    }
}

/// One hand-over at a time; a failed one leaves this process serving as before.
async fn serve(listener: UnixListener, handover: Handover, handed_over: Arc<AtomicBool>) {
    let stop = handover.shutdown().clone();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "upgrade socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match hand_over(&stream, &handover).await {
            Ok(successor) => {
                handed_over.store(true, Ordering::SeqCst);
                super::notify::stand_down();
                tracing::info!(
                    successor,
                    "listening sockets handed over; no longer accepting, draining"
                );
                handover.step_down();
                return;
            }
            Err(error) => tracing::warn!(%error, "hand-over not completed; still serving"),
        }
    }
}

/// Offers the sockets, waits for the successor to accept on them, and acknowledges. Returns
/// the successor's pid.
async fn hand_over(stream: &UnixStream, handover: &Handover) -> Result<u32, UpgradeError> {
    same_user(stream)?;
    if handover.sockets.len() > wire::MAX_SOCKETS {
        let reason = format!("more than {} listening sockets", wire::MAX_SOCKETS);
        let _ = wire::send(stream, &Message::Refused { reason }, &[]).await;
        return Err(UpgradeError::Protocol(
            "too many sockets to hand over".into(),
        ));
    }
    let sockets = handover
        .sockets
        .iter()
        .map(|s| SocketInfo {
            configured: s.configured,
            local: s.local,
            admin: s.admin,
        })
        .collect();
    let fds: Vec<BorrowedFd<'_>> = handover.sockets.iter().map(|s| s.fd.as_fd()).collect();
    let offer = Message::Offer {
        pid: std::process::id(),
        sockets,
    };
    wire::send(stream, &offer, &fds).await?;
    let reply = tokio::time::timeout(CONFIRM_TIMEOUT, wire::receive(stream))
        .await
        .map_err(|_| {
            UpgradeError::Protocol(format!(
                "the new process did not start accepting within {CONFIRM_TIMEOUT:?}"
            ))
        })??;
    match reply {
        (Message::Ready { pid }, _) => {
            wire::send(stream, &Message::SteppingDown, &[]).await?;
            Ok(pid)
        }
        (other, _) => Err(unexpected(&other)),
    }
}
