//! The body of a request on its way to a backend: the client's body, streamed frame by frame and
//! cut at the size limit, or nothing (health probes).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

/// Errors a body can yield to hyper.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A client's request body on its way to a backend.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: Option<u64>,
    received: u64,
    /// Counts bytes received from clients (`switchyard_bytes_in_total`).
    bytes_in: Option<Counter>,
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            limit: None,
            received: 0,
            bytes_in: None,
        }
    }

    pub fn streaming(body: Incoming, limit: Option<u64>, bytes_in: Counter) -> RequestBody {
        RequestBody {
            inner: Some(body),
            limit,
            received: 0,
            bytes_in: Some(bytes_in),
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
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let len = data.map_or(0, |d| d.len() as u64);
            this.received += len;
            if let Some(bytes_in) = &this.bytes_in {
                bytes_in.inc_by(len);
            }
            if let Some(limit) = this.limit.filter(|limit| this.received > *limit) {
                this.inner = None;
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
