//! The body of a request on its way to a backend: the client's body, streamed frame by frame and
//! cut at the size limit or when the client goes quiet, or nothing (health probes).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
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
        }
    }

    pub fn streaming(body: Incoming, limits: BodyLimits, bytes_in: Counter) -> RequestBody {
        let upload = (!body.is_end_stream()).then(|| Upload(Arc::new(AtomicU8::new(FORWARDING))));
        RequestBody {
            inner: Some(body),
            limit: limits.max,
            received: 0,
            bytes_in: Some(bytes_in),
            idle: limits.idle.map(IdleTimer::new),
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
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                this.note(AWAITING_CLIENT);
                return this.poll_idle(cx);
            }
        };
        this.note(match &frame {
            Some(Ok(_)) => FORWARDING,
            None | Some(Err(_)) => FINISHED,
        });
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
        }
        Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl RequestBody {
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
