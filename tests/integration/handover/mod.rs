//! Restarts and upgrades that lose no request: `run --upgrade` takes the running process's
//! listening sockets, systemd socket activation, a busy port as a start error, and the grace a
//! connection gets at shutdown to send its first request.
//!
//! This module holds the area's fixtures: the `switchyard` binary run as a child whose log lines
//! the test reads, a config directory per test, and the per-request client that tells a refused
//! connection from a reset one. The tests are in the submodules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{KillOnDrop, TempDir};

mod notify;
mod restart;
mod start;

/// A fresh directory for one test's config and sockets, removed when the test ends. The tag is
/// short: a Unix socket's path must fit in 108 bytes.
fn test_dir(test: &str) -> TempDir {
    TempDir::new(&format!("ho-{test}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A `switchyard` process and its log lines.
struct Switchyard {
    child: KillOnDrop,
    pid: u32,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Switchyard {
    /// `switchyard run --config CONFIG` followed by `extra`.
    fn run(config: &Path, extra: &[&str]) -> Switchyard {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command.args(["run", "--config", config.to_str().unwrap()]);
        command.args(extra);
        Switchyard::spawn(command)
    }

    fn spawn(mut command: Command) -> Switchyard {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        // Reads to the end, so a chatty child never blocks on a full pipe.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Switchyard {
            pid: child.id(),
            child: KillOnDrop(Some(child)),
            lines,
        }
    }

    /// The next log line containing `needle`; fails the test after `timeout`, or if the process
    /// ends first, with what it printed.
    async fn line(&mut self, needle: &str, timeout: Duration) -> String {
        let mut printed = Vec::new();
        let found = tokio::time::timeout(timeout, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
                printed.push(line);
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no line with {needle:?}; the process printed:\n{}",
                printed.join("\n")
            ),
        }
    }

    /// The client listener's address, from the `listening` line.
    async fn address(&mut self) -> SocketAddr {
        loop {
            let line = self.line("listening address=", WAIT).await;
            if !line.contains("admin listening") {
                return field(&line, "address").parse().unwrap();
            }
        }
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit on its own within `timeout`; its exit code.
    async fn exit(mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.0.take().unwrap();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("process {} did not exit within {timeout:?}", self.pid);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    fn running(&mut self) -> bool {
        self.child.0.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Everything printed so far (for assertions on an exited process).
    fn printed(&mut self) -> String {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            out.push(line);
        }
        out.join("\n")
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// The value of `name=` in a text log line.
fn field(line: &str, name: &str) -> String {
    let rest = line.split(&format!("{name}=")).nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_string()
}

/// How one request on its own connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    /// Connection refused: nobody listened.
    Refused,
    /// Reset by the server (a closed listener with the connection still queued, or a close with
    /// unread data).
    Reset,
    /// Closed without a byte of response ("server disconnected without sending a response").
    Disconnected,
    /// Any other status or error.
    Failed,
}

/// One `GET path` on a new connection with `Connection: close`, like a client with keep-alive
/// off: raw, so a refusal, a reset and a silent close are told apart.
async fn request_on_new_connection(address: SocketAddr, path: &str) -> Outcome {
    let exchange = async {
        let mut stream = match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Outcome::Refused;
            }
            Err(_) => return Outcome::Failed,
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n");
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return classify(&e);
        }
        let mut response = Vec::new();
        match stream.read_to_end(&mut response).await {
            Err(e) => classify(&e),
            Ok(_) if response.is_empty() => Outcome::Disconnected,
            Ok(_) if response.starts_with(b"HTTP/1.1 200 ") => Outcome::Answered,
            Ok(_) => Outcome::Failed,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or(Outcome::Failed)
}

fn classify(error: &std::io::Error) -> Outcome {
    match error.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Outcome::Reset,
        _ => Outcome::Failed,
    }
}

/// Counts of [`Outcome`]s from every load client.
#[derive(Default)]
struct Tally {
    counts: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
}

impl Tally {
    fn add(&self, what: &str) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(what.to_string())
            .or_default() += 1;
    }

    fn get(&self, what: &str) -> usize {
        self.counts.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    fn summary(&self) -> String {
        format!("{:?}", self.counts.lock().unwrap())
    }
}

/// Clients that each send one request per new connection until `stop`, with a pause between.
fn per_request_load(
    address: SocketAddr,
    clients: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    tally: &std::sync::Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (stop, tally) = (stop.clone(), tally.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let outcome = request_on_new_connection(address, "/name").await;
                    tally.add(&format!("{outcome:?}"));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}
