//! What the proxy lets through and what it blames (issue 15, sections 3 and 4): failures are
//! counted against whoever caused them, error answers say nothing internal, client-address
//! headers cannot be forged, lenient HTTP is refused, a full session table never breaks an
//! admitted session.
//!
//! This module holds the area's fixtures: raw HTTP/1 exchanges, a backend that answers fixed
//! bytes, metric lookups and a log capture; the tests are in the submodules, one per concern.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod blame;
mod errors;
mod forwarded;
mod h2;
mod sessions;
mod strict;

const WAIT: Duration = Duration::from_secs(10);

/// One active pool `blue` of `backends` plus `extra` TOML, listener and admin on port 0.
fn config(backends: &[SocketAddr], extra: &str) -> String {
    config_for_addresses(&[("blue", backends)], "\"blue\"", extra)
}

/// Sends `bytes` on a new connection and returns the first complete response.
async fn raw_exchange(address: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_response(&mut stream).await
}

/// Reads one response: its head, then a body framed by `Content-Length`, by chunks, or by the
/// end of the connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = async {
        loop {
            if response_complete(&buf) {
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a complete response in time");
    String::from_utf8_lossy(&buf).into_owned()
}

fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let (head, body) = (&text[..end], &text[end + 4..]);
    if let Some(length) = header_in(head, "content-length") {
        return body.len() >= length.parse::<usize>().unwrap_or(usize::MAX);
    }
    if header_in(head, "transfer-encoding").is_some() {
        return body.ends_with("0\r\n\r\n");
    }
    false
}

fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

fn header_of(response: &str, name: &str) -> Option<String> {
    let end = response.find("\r\n\r\n").unwrap_or(response.len());
    header_in(&response[..end], name)
}

fn body_of(response: &str) -> &str {
    response
        .find("\r\n\r\n")
        .map_or("", |end| &response[end + 4..])
}

/// The headers a `TestBackend` saw, from its `/headers` answer in `response`.
fn seen_headers(response: &str) -> serde_json::Map<String, serde_json::Value> {
    let body: serde_json::Value = serde_json::from_str(body_of(response))
        .unwrap_or_else(|e| panic!("{e}: not a /headers answer: {response}"));
    body.as_object().unwrap().clone()
}

/// The value of the sample whose line starts with `series` (name and labels as exposed), or 0.
async fn metric(proxy: &TestProxy, series: &str) -> f64 {
    let text = get_text(&proxy.admin_url("/metrics")).await;
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A backend that answers every request with the same raw bytes, then closes the connection:
/// what a broken or hostile server sends.
struct RawBackend {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(answer: &'static [u8]) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let _ = stream.write_all(answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawBackend { address, task }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Log lines written while the guard lives, as JSON, by code running on this thread: the test's
/// own runtime (`#[tokio::test]` is single-threaded, so the proxy's tasks run here too).
///
/// One process-wide subscriber, installed on first use, whose filter asks per event whether the
/// writing thread is capturing. A callsite's interest is computed once, by whichever thread hits
/// it first, and cached: a filter that answers from the metadata alone (`filter_fn`) is taken to
/// be cacheable, so a callsite first hit by a thread that was not capturing was "never" for
/// everyone after (the 502 access line was lost in CI runs three times). A dynamic filter
/// (`dynamic_filter_fn`) gives every callsite the interest "sometimes": asked again per event.
struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static CAPTURING: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Ends the capture when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.with(|sink| sink.borrow_mut().take());
    }
}

impl Logs {
    fn capture() -> (Capturing, Logs) {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            use tracing_subscriber::Layer;
            use tracing_subscriber::layer::SubscriberExt;
            let capturing = tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
                *meta.level() <= tracing::Level::INFO
                    && CAPTURING.with(|sink| sink.borrow().is_some())
            });
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(|| LogWriter)
                .with_filter(capturing);
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::set_global_default(subscriber).unwrap();
            // Callsites that registered while it was being installed.
            tracing::callsite::rebuild_interest_cache();
        });
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURING.with(|sink| *sink.borrow_mut() = Some(Arc::clone(&buffer)));
        (Capturing, Logs(buffer))
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// Appends to the writing thread's capture buffer.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|sink| {
            if let Some(buffer) = sink.borrow().as_ref() {
                buffer.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A callsite first hit by a thread that is not capturing still logs for one that is: the
/// capture's filter is asked per event, not once per callsite.
#[test]
fn a_capture_sees_a_line_another_thread_logged_first() {
    fn probe() {
        tracing::info!(target: "capture_probe", "probe");
    }
    // Installs the subscriber; this thread stops capturing at once.
    drop(Logs::capture());
    std::thread::spawn(probe).join().unwrap();
    let (_capturing, logs) = Logs::capture();
    probe();
    assert!(
        logs.lines().iter().any(|l| l["target"] == "capture_probe"),
        "{:?}",
        logs.lines()
    );
}
