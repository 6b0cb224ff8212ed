//! systemd's readiness protocol (`Type=notify`): the real binary, with `NOTIFY_SOCKET` naming a
//! datagram socket the test holds, says READY=1 once its port answers, RELOADING=1 and READY=1
//! around a reload, STOPPING=1 when it drains; the new process of a hand-over says it is the
//! main process now, and the old one says nothing more.

use std::os::unix::net::UnixDatagram;

use super::*;
use crate::support::{TestBackend, config_for};

/// The datagram socket systemd would hold.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        NotifySocket { socket, path }
    }

    /// The next message; fails the test after [`WAIT`].
    async fn next(&self) -> String {
        let socket = self.socket.try_clone().unwrap();
        tokio::task::spawn_blocking(move || {
            let mut buffer = [0u8; 512];
            let n = socket.recv(&mut buffer).expect("a notification in time");
            String::from_utf8(buffer[..n].to_vec()).unwrap()
        })
        .await
        .unwrap()
    }

    /// A message already waiting, if any.
    fn pending(&self) -> Option<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 512];
        let got = self.socket.recv(&mut buffer).ok();
        self.socket.set_nonblocking(false).unwrap();
        got.map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned())
    }

    fn run(&self, config: &Path, extra: &[&str]) -> Switchyard {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command.args(["run", "--config", config.to_str().unwrap()]);
        command.args(extra).env("NOTIFY_SOCKET", &self.path);
        Switchyard::spawn(command)
    }
}

fn notified_config(test: &str, backend: &TestBackend) -> (TempDir, PathBuf) {
    let dir = test_dir(test);
    let config = dir.join("switchyard.toml");
    let lifecycle = "[lifecycle]\nupgrade_socket = \"up.sock\"\n";
    write(
        &config,
        &config_for(&[("blue", &[backend])], "\"blue\"", lifecycle),
    );
    (dir, config)
}

#[tokio::test]
async fn ready_reloading_and_stopping_reach_the_notify_socket() {
    let backend = TestBackend::start("b1").await;
    let (dir, config) = notified_config("notify", &backend);
    let systemd = NotifySocket::bind(&dir);
    let mut proxy = systemd.run(&config, &[]);
    assert_eq!(systemd.next().await, "READY=1\n");
    let address = proxy.address().await;
    assert_eq!(
        request_on_new_connection(address, "/name").await,
        Outcome::Answered,
        "ready means the port answers"
    );

    proxy.signal("HUP");
    let reloading = systemd.next().await;
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{reloading:?}"));
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    assert!(usec > 0 && usec <= now_usec, "{usec} vs now {now_usec}");
    assert_eq!(systemd.next().await, "READY=1\n");

    proxy.signal("TERM");
    assert_eq!(systemd.next().await, "STOPPING=1\n");
    assert_eq!(proxy.exit(WAIT).await, Some(0));
}

#[tokio::test]
async fn the_new_process_of_a_hand_over_tells_systemd_it_is_the_main_one() {
    let backend = TestBackend::start("b1").await;
    let (dir, config) = notified_config("notify-upgrade", &backend);
    let systemd = NotifySocket::bind(&dir);
    let mut old = systemd.run(&config, &[]);
    assert_eq!(systemd.next().await, "READY=1\n");
    old.line("upgrade socket ready", WAIT).await;

    let mut new = systemd.run(&config, &["--upgrade"]);
    assert_eq!(
        systemd.next().await,
        format!("MAINPID={}\nREADY=1\n", new.pid)
    );
    let address = new.address().await;
    assert_eq!(
        request_on_new_connection(address, "/name").await,
        Outcome::Answered
    );
    // The old one drains and exits without a word: a STOPPING=1 from it would stop the service.
    assert_eq!(old.exit(WAIT).await, Some(0));
    assert_eq!(systemd.pending(), None);

    new.signal("TERM");
    assert_eq!(systemd.next().await, "STOPPING=1\n");
    assert_eq!(new.exit(WAIT).await, Some(0));
}
