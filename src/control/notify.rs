//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram to
//! `$NOTIFY_SOCKET` when the listeners serve, around each reload and when a drain starts. With
//! the variable unset (not under systemd, or a unit of another type) nothing is sent.
//!
//! A process that handed its sockets over stays silent from then on: the new one has told
//! systemd it is the main process (`MAINPID=`), and a `STOPPING=1` from the old one's drain
//! would stop the whole service.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

static SILENT: AtomicBool = AtomicBool::new(false);

/// The listeners are bound and accept.
pub fn ready() {
    send("READY=1\n");
}

/// Ready, as the process systemd is to follow: the new one of a hand-over.
pub fn ready_as_main() {
    send(&format!("MAINPID={}\nREADY=1\n", std::process::id()));
}

/// A reload starts; [`ready`] ends it, whatever its outcome.
pub fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let micros = now.tv_sec.saturating_mul(1_000_000) + now.tv_nsec / 1_000;
    send(&format!("RELOADING=1\nMONOTONIC_USEC={micros}\n"));
}

/// The drain of a shutdown starts.
pub fn stopping() {
    send("STOPPING=1\n");
}

/// This process handed its sockets over: it tells systemd nothing more.
pub fn stand_down() {
    SILENT.store(true, Ordering::SeqCst);
}

fn send(state: &str) {
    if SILENT.load(Ordering::SeqCst) {
        return;
    }
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(error) = send_to(&socket, state) {
        tracing::warn!(%error, socket = %socket.display(), "cannot notify systemd");
    }
}

/// A path, or an abstract socket name when it starts with `@`.
fn send_to(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let address = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("switchyard-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let by_path = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\n").unwrap();
        let mut buffer = [0u8; 256];
        let n = by_path.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1\n");

        let name = format!("switchyard-notify-test-{}", std::process::id());
        let abstract_address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let by_name = UnixDatagram::bind_addr(&abstract_address).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1\n").unwrap();
        let n = by_name.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
