//! Starting next to something else: a busy port, another Switchyard on the same config, a stale
//! upgrade socket, and sockets passed by systemd.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use switchyard::config::Config;
use switchyard::control::server::{Proxy, StartError};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::support::{TestBackend, TestProxy, config_for};

fn on(address: SocketAddr, text: &str) -> String {
    text.replacen("127.0.0.1:0", &address.to_string(), 1)
}

/// A port another process holds is a start error that says what to do, instead of a silent
/// split of its connections; processes that all opt into `reuse_port` may share one.
#[tokio::test]
async fn a_busy_port_is_a_start_error_unless_every_process_opts_into_reuse_port() {
    let backend = TestBackend::start("b1").await;
    let plain = config_for(&[("blue", &[&backend])], "\"blue\"", "");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap();
    let config = Config::parse(&on(busy, &plain), Path::new("busy.toml")).unwrap();
    let error = Proxy::start(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, StartError::Busy { address } if address == busy),
        "{error}"
    );
    assert!(error.to_string().contains("--upgrade"), "{error}");

    let sharing = config_for(
        &[("blue", &[&backend])],
        "\"blue\"",
        "[lifecycle]\nreuse_port = true\n",
    );
    let first = TestProxy::start(&sharing).await;
    let second = TestProxy::start(&on(first.address, &sharing)).await;
    assert_eq!(second.address, first.address);
    let config = Config::parse(&on(first.address, &plain), Path::new("plain.toml")).unwrap();
    let refused = Proxy::start(config, CancellationToken::new()).await;
    assert!(matches!(refused, Err(StartError::Busy { .. })));
}

/// The upgrade socket: a configured one that cannot be created and `--upgrade` with nothing to
/// take over are clear errors; a crashed
/// process's socket file does not stop a start; the new one is owner-only, named by `check`,
/// and removed at a plain shutdown; a second plain start on the same config is refused.
#[tokio::test]
async fn the_upgrade_socket_is_private_and_a_stale_one_does_not_block_a_start() {
    let backend = TestBackend::start("b1").await;
    let dir = test_dir("socket");
    let socket = dir.join("up.sock");
    let config = dir.join("switchyard.toml");
    let lifecycle = "[lifecycle]\nupgrade_socket = \"up.sock\"\n";
    write(
        &config,
        &config_for(&[("blue", &[&backend])], "\"blue\"", lifecycle),
    );
    let check = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&check.stdout);
    assert!(
        summary.contains(&format!("upgrade   {}", socket.display())),
        "{summary}"
    );

    // A configured path that cannot be created is a start error, not a silent loss of upgrades.
    let nowhere = dir.join("nowhere.toml");
    write(
        &nowhere,
        &config_for(
            &[("blue", &[&backend])],
            "\"blue\"",
            "[lifecycle]\nupgrade_socket = \"missing/up.sock\"\n",
        ),
    );
    let mut refused = Switchyard::run(&nowhere, &[]);
    refused.line("cannot create the upgrade socket", WAIT).await;
    assert_eq!(refused.exit(WAIT).await, Some(1));

    let mut lonely = Switchyard::run(&config, &["--upgrade"]);
    lonely.line("no running Switchyard answers at", WAIT).await;
    assert_eq!(lonely.exit(WAIT).await, Some(1));

    // What a crashed process leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut first = Switchyard::run(&config, &[]);
    let ready = first.line("upgrade socket ready", WAIT).await;
    assert_eq!(field(&ready, "path"), socket.display().to_string());
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let mut second = Switchyard::run(&config, &[]);
    second
        .line("another Switchyard with this config is running", WAIT)
        .await;
    assert_eq!(second.exit(WAIT).await, Some(1));
    assert!(first.running());

    first.signal("TERM");
    assert_eq!(first.exit(WAIT).await, Some(0));
    assert!(!socket.exists(), "left behind at a plain shutdown");
}

/// Starts the proxy as systemd does with a socket unit: `socket` as fd 3, `LISTEN_FDS=1`, and
/// `LISTEN_PID` the service's own pid.
fn activated(socket: &std::net::TcpListener, config: &Path) -> Switchyard {
    let fd = socket.as_raw_fd();
    let moved = if fd == 3 {
        String::new()
    } else {
        format!(" 3<&{fd} {fd}<&-")
    };
    let script = format!("export LISTEN_PID=$$; exec \"$0\" run --config \"$1\"{moved}");
    // bash: dash takes single-digit descriptors only.
    let mut command = Command::new("bash");
    command
        .args(["-c", &script, env!("CARGO_BIN_EXE_switchyard")])
        .arg(config)
        .env("LISTEN_FDS", "1");
    // Inherited by this one child only: close-on-exec again right after it started.
    rustix::io::fcntl_setfd(socket, rustix::io::FdFlags::empty()).unwrap();
    let child = Switchyard::spawn(command);
    rustix::io::fcntl_setfd(socket, rustix::io::FdFlags::CLOEXEC).unwrap();
    child
}

/// systemd socket activation: the proxy serves on the socket systemd passed (`LISTEN_FDS`,
/// `LISTEN_PID`) instead of binding, so between a stop and the next start the kernel queues
/// connections instead of refusing them, and the next process answers them.
#[tokio::test]
async fn systemd_socket_activation_queues_connections_across_a_restart() {
    let backend = TestBackend::start("b1").await;
    let dir = test_dir("systemd");
    // The socket systemd would hold for the socket unit.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let config = dir.join("switchyard.toml");
    write(
        &config,
        &on(
            address,
            &config_for(&[("blue", &[&backend])], "\"blue\"", ""),
        ),
    );
    let mut first = activated(&socket, &config);
    let listening = first.line("inherited=", WAIT).await;
    assert!(
        listening.contains(&format!("address={address} inherited=true")),
        "{listening}"
    );
    assert_eq!(
        request_on_new_connection(address, "/name").await,
        Outcome::Answered
    );
    first.signal("TERM");
    assert_eq!(first.exit(WAIT).await, Some(0));

    // No process runs: the connection and its request wait in the kernel.
    let mut queued = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(
        &mut queued,
        b"GET /name HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut second = activated(&socket, &config);
    assert_eq!(second.address().await, address);
    queued.set_nonblocking(true).unwrap();
    let mut queued = tokio::net::TcpStream::from_std(queued).unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, queued.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with("b1"), "{response}");
    second.signal("TERM");
    assert_eq!(second.exit(WAIT).await, Some(0));
}
