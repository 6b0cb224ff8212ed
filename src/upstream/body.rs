//! The body of a request on its way to a backend: the client's body, streamed frame by frame and
//! cut at the size limit or when the client goes quiet, or nothing (health probes).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

/// Errors a body can yield to hyper.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the client sent no request body data for {timeout:?}")]
    Idle { timeout: Duration },
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// Where a client's upload stands, seen from the request waiting for the response head while
/// the body streams in the connection task: it tells a stalled client from a stalled backend.
#[derive(Debug, Clone)]
pub struct Upload(Arc<AtomicU8>);

const FORWARDING: u8 = 0;
const AWAITING_CLIENT: u8 = 1;
const FINISHED: u8 = 2;

impl Upload {
    /// The proxy is waiting for the client's next body bytes (the backend took all it was given).
    pub fn awaits_client(&self) -> bool {
        self.0.load(Ordering::Relaxed) == AWAITING_CLIENT
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Relaxed);
    }
}

/// Whether the latest request body of a client connection has been read to its end. Only then does
/// the connection's next byte begin a request head, so only then may an HTTP/1 connection set its
/// socket aside between requests (`proxy::version`): a body cut short (too large, too slow, or
/// answered without being read) leaves bytes that must never be read as a request.
#[derive(Debug, Clone)]
pub struct BodyRead(Arc<AtomicBool>);

impl Default for BodyRead {
    fn default() -> BodyRead {
        BodyRead(Arc::new(AtomicBool::new(true)))
    }
}

impl BodyRead {
    /// A request head has arrived, with a body still to come or not.
    pub fn arrived(&self, with_body: bool) {
        self.0.store(!with_body, Ordering::Relaxed);
    }

    pub fn is_read(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn read_to_end(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A client's request body on its way to a backend.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: Option<u64>,
    received: u64,
    /// Counts bytes received from clients (`switchyard_bytes_in_total`).
    bytes_in: Option<Counter>,
    idle: Option<IdleTimer>,
    /// Only for bodies that have bytes to come: a request without one cannot stall on its client.
    upload: Option<Upload>,
    /// Frames read from `inner` before the request was sent (a policy needed the body's head),
    /// given out first.
    head: VecDeque<Frame<Bytes>>,
    tap: Option<Box<dyn Tap>>,
    /// Told when the client's body has been read to its end (not when it was cut).
    read: Option<BodyRead>,
}

/// Sees a request body's data as it passes to the backend, and its end.
pub trait Tap: std::fmt::Debug + Send + Sync {
    fn data(&mut self, data: &[u8]);
    fn end(&mut self);
}

/// What a client's body may do: grow to `max` bytes, pause `idle` between reads.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max: Option<u64>,
    pub idle: Option<Duration>,
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            limit: None,
            received: 0,
            bytes_in: None,
            idle: None,
            upload: None,
            head: VecDeque::new(),
            tap: None,
            read: None,
        }
    }

    pub fn streaming(
        body: Incoming,
        limits: BodyLimits,
        bytes_in: Counter,
        read: &BodyRead,
    ) -> RequestBody {
        let upload = (!body.is_end_stream()).then(|| Upload(Arc::new(AtomicU8::new(FORWARDING))));
        if upload.is_none() {
            // Nothing left to read: a policy may have read it all already.
            read.read_to_end();
        }
        RequestBody {
            inner: Some(body),
            limit: limits.max,
            received: 0,
            bytes_in: Some(bytes_in),
            idle: limits.idle.map(IdleTimer::new),
            head: VecDeque::new(),
            tap: None,
            read: upload.is_some().then(|| read.clone()),
            upload,
        }
    }

    /// The handle that tells how far the upload got; `None` for a request without a body.
    pub fn upload(&self) -> Option<Upload> {
        self.upload.clone()
    }

    fn note(&self, state: u8) {
        if let Some(upload) = &self.upload {
            upload.set(state);
        }
    }

    /// Frames already read from the body, to be sent before the rest.
    pub fn put_back(&mut self, frames: Vec<Frame<Bytes>>) {
        self.head.extend(frames);
    }

    /// Shows every data frame (and the end) to `tap` as it passes.
    pub fn tap(&mut self, tap: Box<dyn Tap>) {
        self.tap = Some(tap);
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = match this.head.pop_front() {
            Some(frame) => Some(Ok(frame)),
            None => {
                let Some(inner) = this.inner.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        this.note(AWAITING_CLIENT);
                        return this.poll_idle(cx);
                    }
                }
            }
        };
        this.note(match &frame {
            Some(Ok(_)) => FORWARDING,
            None | Some(Err(_)) => FINISHED,
        });
        if this.read.is_some()
            && this.is_read_to_end(&frame)
            && let Some(read) = this.read.take()
        {
            read.read_to_end();
        }
        if let Some(idle) = &mut this.idle {
            idle.waiting_since = None;
        }
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let len = data.map_or(0, |d| d.len() as u64);
            this.received += len;
            if let Some(bytes_in) = &this.bytes_in {
                bytes_in.inc_by(len);
            }
            if let Some(limit) = this.limit.filter(|limit| this.received > *limit) {
                this.inner = None;
                this.note(FINISHED);
                return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
            }
            if let (Some(tap), Some(data)) = (this.tap.as_mut(), data) {
                tap.data(data);
            }
        }
        if frame.is_none()
            && let Some(tap) = this.tap.as_mut()
        {
            tap.end();
        }
        Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self
            .inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        if self.head.is_empty() {
            return rest;
        }
        let held: u64 = self
            .head
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

impl RequestBody {
    /// Whether `frame` (just read from the client) leaves nothing of the body unread: the end
    /// itself, or a last frame after which the sender need not ask again.
    fn is_read_to_end(&self, frame: &Option<Result<Frame<Bytes>, hyper::Error>>) -> bool {
        match frame {
            None => self.inner.is_some(),
            Some(Ok(_)) => self.inner.as_ref().is_some_and(Body::is_end_stream),
            Some(Err(_)) => false,
        }
    }

    /// The client has nothing for us yet: pending, or an error once it has been quiet too long.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(idle) = self.idle.as_mut() else {
            return Poll::Pending;
        };
        if !idle.expired(cx) {
            return Poll::Pending;
        }
        let timeout = idle.timeout;
        self.inner = None;
        self.note(FINISHED);
        Poll::Ready(Some(Err(BodyError::Idle { timeout })))
    }
}

/// The client body idle timeout, armed lazily: a body that arrives whole never creates a timer,
/// and a read costs a clock read rather than a timer reset. The one timer, once created, keeps
/// its deadline; when it fires early (the client has sent more since) it is moved to the
/// current wait's deadline.
#[derive(Debug)]
struct IdleTimer {
    timeout: Duration,
    /// When the current wait for client data began; `None` while data is flowing.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> IdleTimer {
        IdleTimer {
            timeout,
            waiting_since: None,
            timer: None,
        }
    }

    /// Whether the current wait has lasted `timeout`; if not, `cx` is woken when it might have.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let deadline = *self.waiting_since.get_or_insert(now) + self.timeout;
        if now >= deadline {
            return true;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;
    use crate::upstream::h1::io::testing::socket_pair;

    /// hyper's body of a `POST` declaring `length` bytes, of which `sent` are on the wire; the
    /// client side is returned to keep the connection open.
    async fn incoming(length: usize, sent: &[u8]) -> (Incoming, TcpStream) {
        let (mut client, server) = socket_pair().await;
        let (to_test, body) = tokio::sync::oneshot::channel();
        let to_test = std::sync::Mutex::new(Some(to_test));
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            if let Some(to_test) = to_test.lock().unwrap().take() {
                let _ = to_test.send(request.into_body());
            }
            // hyper reads the body on while the answer is pending.
            std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>()
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service);
        tokio::spawn(connection);
        let head = format!("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {length}\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(sent).await.unwrap();
        (body.await.unwrap(), client)
    }

    fn limits(max: Option<u64>) -> BodyLimits {
        BodyLimits { max, idle: None }
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_told() {
        let read = BodyRead::default();
        read.arrived(true);
        let (body, _client) = incoming(5, b"hello").await;
        let body = RequestBody::streaming(body, limits(None), Counter::default(), &read);
        assert!(!read.is_read(), "nothing read yet");
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert!(read.is_read());
    }

    /// Cut at the limit with bytes still to come: those bytes are not a request head, so the
    /// connection is never told the body was read.
    #[tokio::test]
    async fn a_body_cut_at_the_limit_is_not_told() {
        let read = BodyRead::default();
        read.arrived(true);
        let (body, _client) = incoming(10, b"hello!").await;
        let body = RequestBody::streaming(body, limits(Some(4)), Counter::default(), &read);
        let cut = body.collect().await.expect_err("over the limit");
        assert!(matches!(cut, BodyError::TooLarge { limit: 4 }), "{cut}");
        assert!(!read.is_read());
    }
}
