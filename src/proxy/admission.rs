//! At the door, before a connection is served: the `503` of a connection over its listener's
//! limit, and what to do when `accept` itself fails (out of file descriptors, most often).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The whole life of one refused connection: reading its request head, answering, and reading
/// what the client still sends, so that closing the socket does not reset it.
const REFUSAL_BUDGET: Duration = Duration::from_secs(2);
/// What a refused client may send before the socket is closed regardless.
const REFUSAL_READ_LIMIT: usize = 1024 * 1024;
/// Refusals that may take their budget at once; beyond, the `503` is written without waiting, so
/// a flood over the limit cannot hold more than this many extra file descriptors.
const LINGERING_REFUSALS: usize = 256;

const REFUSAL: &str = concat!(
    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n",
    "connection: close\r\ncontent-length: 61\r\n\r\n",
    r#"{"error":{"status":503,"message":"connection limit reached"}}"#,
);

/// The connection-limit answer of one listener.
#[derive(Debug, Clone)]
pub struct Refusals {
    lingering: Arc<Semaphore>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            lingering: Arc::new(Semaphore::new(LINGERING_REFUSALS)),
        }
    }
}

impl Refusals {
    /// A complete `503` for a connection over the limit, never a silent queue. The request head
    /// is read first (an HTTP client takes a response that comes before its request as an
    /// error), and after the answer what the client still sends is read and dropped: closing a
    /// socket with unread data sends a reset, which can destroy the `503` before it is read.
    pub async fn refuse(self, mut stream: TcpStream) {
        let lingering = Arc::clone(&self.lingering).try_acquire_owned().ok();
        let budget = if lingering.is_some() {
            REFUSAL_BUDGET
        } else {
            Duration::ZERO
        };
        let deadline = tokio::time::Instant::now() + budget;
        let mut read = 0;
        let _ = tokio::time::timeout_at(deadline, read_head(&mut stream, &mut read)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(REFUSAL.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
        let _ = tokio::time::timeout_at(deadline, drain(&mut stream, &mut read)).await;
    }
}

/// Starts a PROXY protocol v2 header, and holds a blank line that ends no request head.
const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The first byte of a TLS ClientHello, whose client sends nothing more until it is answered.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Reads until the end of a request head (a blank line), EOF or the read limit; at once for a
/// TLS client, which waits for the server.
async fn read_head(stream: &mut (impl AsyncRead + Unpin), read: &mut usize) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while *read < REFUSAL_READ_LIMIT {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut fresh = &buf[..n];
        if *read == 0 {
            if fresh.first() == Some(&TLS_HANDSHAKE_RECORD) {
                return Ok(());
            }
            fresh = fresh.strip_prefix(PROXY_V2_SIGNATURE).unwrap_or(fresh);
        }
        *read += n;
        // A blank line may be split across reads: keep the last three bytes.
        head.extend_from_slice(fresh);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(());
        }
        let keep = head.len().saturating_sub(3);
        head.drain(..keep);
    }
    Ok(())
}

/// Reads and drops until EOF or the read limit.
async fn drain(stream: &mut (impl AsyncRead + Unpin), read: &mut usize) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    while *read < REFUSAL_READ_LIMIT {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        *read += n;
    }
    Ok(())
}

/// The shortest and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_millis(500));
/// At most one log line per this long about failing accepts.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A failing `accept` (EMFILE: every file descriptor in use) fails again at once until some
/// connection closes: pause, longer each time in a row, and log once per interval with a count
/// instead of a line per attempt.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    backoff: Duration,
    log: LogEvery,
}

impl AcceptErrors {
    /// `listener` names the listener in the log: `client` or `admin`.
    pub fn new(listener: &'static str) -> AcceptErrors {
        AcceptErrors {
            listener,
            backoff: ACCEPT_BACKOFF.0,
            log: LogEvery::new(ACCEPT_LOG_INTERVAL),
        }
    }

    pub async fn failed(&mut self, error: &std::io::Error) {
        tokio::time::sleep(self.note(error, Instant::now())).await;
    }

    pub fn succeeded(&mut self) {
        self.backoff = ACCEPT_BACKOFF.0;
    }

    /// Logs `error` if its turn has come; returns the pause before the next accept.
    fn note(&mut self, error: &std::io::Error, now: Instant) -> Duration {
        if let Some(since_last) = self.log.allow(now) {
            tracing::warn!(
                listener = self.listener,
                %error,
                failures_since_last_line = since_last,
                backoff_ms = self.backoff.as_millis() as u64,
                "accept failed; pausing accepts (EMFILE: raise the open-file limit or lower max_connections)",
            );
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF.1);
        pause
    }
}

/// Lets one event through per interval and counts the ones it held back.
#[derive(Debug)]
pub struct LogEvery {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogEvery {
    pub fn new(interval: Duration) -> LogEvery {
        LogEvery {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when an event at `now` should be logged, `n` being the events held back since
    /// the last one logged; `None` when it should be held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.interval)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_every_lets_one_line_through_per_interval_and_counts_the_rest() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut log = LogEvery::new(Duration::from_secs(10));
        assert_eq!(log.allow(at(0)), Some(0));
        for ms in 1..=1000 {
            assert_eq!(log.allow(at(ms)), None);
        }
        assert_eq!(log.allow(at(9_999)), None);
        assert_eq!(log.allow(at(10_000)), Some(1001));
        assert_eq!(log.allow(at(10_001)), None);
        assert_eq!(log.allow(at(60_000)), Some(1));
        assert_eq!(log.allow(at(70_000)), Some(0));
    }

    #[test]
    fn the_refusal_states_its_own_length() {
        let (head, body) = REFUSAL.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    /// Whether `read_head` returns once `sent` has been written, the writer kept open.
    async fn head_read_after(sent: &[&[u8]]) -> bool {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        for part in sent {
            client.write_all(part).await.unwrap();
        }
        let mut read = 0;
        let wait = Duration::from_millis(100);
        let done = tokio::time::timeout(wait, read_head(&mut server, &mut read)).await;
        drop(client);
        done.is_ok()
    }

    #[tokio::test]
    async fn the_refusal_waits_for_a_request_head_but_not_for_a_tls_client() {
        let head: &[u8] = b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\nbody";
        assert!(head_read_after(&[head]).await);
        assert!(head_read_after(&[&head[..20], &head[20..]]).await);
        assert!(!head_read_after(&[&head[..30]]).await, "head not complete");
        assert!(head_read_after(&[&[TLS_HANDSHAKE_RECORD, 3, 1, 0, 200]]).await);
        let mut proxied = PROXY_V2_SIGNATURE.to_vec();
        proxied.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 2, 0, 1, 0, 2]);
        assert!(
            !head_read_after(&[&proxied]).await,
            "the v2 signature is no head"
        );
        assert!(head_read_after(&[&proxied, head]).await);
    }

    #[test]
    fn accept_backoff_doubles_to_its_ceiling_and_resets_and_logs_once_per_interval() {
        let mut errors = AcceptErrors::new("client");
        let emfile = std::io::Error::from_raw_os_error(24);
        let now = Instant::now();
        let pauses: Vec<u128> = (0..8)
            .map(|_| errors.note(&emfile, now).as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 500, 500]);
        // The first failure was logged; the seven after it within the interval were held back.
        assert_eq!(errors.log.allow(now + ACCEPT_LOG_INTERVAL), Some(7));
        errors.succeeded();
        assert_eq!(errors.note(&emfile, now).as_millis(), 10);
    }
}
