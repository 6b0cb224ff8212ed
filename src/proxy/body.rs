//! Bodies that stream through the proxy frame by frame, never buffered.
//!
//! [`ResponseBody`] carries everything whose life must end with the response: the in-flight guard
//! (least-connections counts a stream for as long as it is open), the upstream connection (back to
//! the pool at end of body, closed if the client left early, so the backend sees the disconnect),
//! the SSE watch (keepalives, endpoint learning, drain close) and the access-log record.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::mcp::session::SessionSlot;
use crate::mcp::sse::{BoundaryTracker, DRAIN_RETRY, EndpointScanner, KEEPALIVE};
use crate::state::State;
use crate::upstream::backend::{InFlightGuard, PoolLimits};
use crate::upstream::body::RequestBody;

/// What the access log says about one request, written when its response body ends.
#[derive(Debug)]
pub struct AccessRecord {
    pub state: Arc<State>,
    pub method: http::Method,
    pub path: String,
    pub class: crate::mcp::classify::RouteClass,
    pub status: u16,
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub pool: Arc<str>,
    pub session: Option<String>,
    pub request_id: super::request_id::RequestId,
    pub client: std::net::IpAddr,
    pub user_agent: Option<http::HeaderValue>,
    pub started: Instant,
    pub bytes: u64,
    pub stream: bool,
}

impl AccessRecord {
    /// Writes the access-log line (and stream metrics) for a request that ended with `outcome`.
    pub fn finish(&self, outcome: &'static str) {
        let elapsed = self.started.elapsed();
        if self.stream {
            self.state
                .metrics
                .stream_duration
                .get_or_create(&crate::metrics::ClassLabels {
                    class: self.class.as_str(),
                })
                .observe(elapsed.as_secs_f64());
        }
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            class = self.class.as_str(),
            status = self.status,
            route = %self.route,
            backend = %self.backend,
            pool = %self.pool,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            bytes = self.bytes,
            session = self.session.as_deref().unwrap_or(""),
            request_id = %self.request_id,
            client = %self.client,
            user_agent = super::request::user_agent(self.user_agent.as_ref()),
            outcome,
        );
    }
}

/// What watches an SSE response as it passes.
pub struct SseWatch {
    boundary: BoundaryTracker,
    /// Set on a legacy `GET /sse` stream until its `endpoint` event was seen.
    endpoint: Option<EndpointScanner>,
    /// Room in the session table for the session the `endpoint` event names; given back once
    /// the scan ends without one.
    slot: Option<SessionSlot>,
    keepalive: Option<(Pin<Box<Sleep>>, Duration)>,
    close: Pin<Box<WaitForCancellationFutureOwned>>,
    closing: bool,
    /// Set when the endpoint event's session id must be sealed.
    seal: Option<Arc<crate::mcp::seal::Sealer>>,
    /// Set when the route stripped this prefix: the endpoint URL gets it back.
    prefix: Option<Arc<str>>,
    /// While the endpoint event is rewritten (sealed or prefixed), the stream's head is held
    /// back here (bounded by the scan limit) until that event is complete.
    held: Vec<u8>,
    /// The legacy session this stream's `endpoint` event named: it lives as long as the stream,
    /// so the table forgets it when the stream ends rather than at the idle timeout.
    learned: Option<String>,
}

impl SseWatch {
    pub fn new(
        slot: Option<SessionSlot>,
        learn_endpoint: bool,
        keepalive: Option<Duration>,
        close: tokio_util::sync::CancellationToken,
    ) -> SseWatch {
        SseWatch {
            boundary: BoundaryTracker::default(),
            endpoint: learn_endpoint.then(EndpointScanner::default),
            slot,
            keepalive: keepalive.map(|every| (Box::pin(tokio::time::sleep(every)), every)),
            close: Box::pin(close.cancelled_owned()),
            closing: false,
            seal: None,
            prefix: None,
            held: Vec::new(),
            learned: None,
        }
    }

    /// Seals the session id of the legacy `endpoint` event as it passes.
    pub fn sealing(mut self, sealer: Arc<crate::mcp::seal::Sealer>) -> SseWatch {
        self.seal = Some(sealer);
        self
    }

    /// Puts `prefix` back in front of the legacy `endpoint` event's path as it passes.
    pub fn prefixing(mut self, prefix: Arc<str>) -> SseWatch {
        self.prefix = Some(prefix);
        self
    }

    /// Whether the endpoint event will be rewritten (and so change length).
    pub fn rewrites_endpoint(&self) -> bool {
        self.endpoint.is_some() && (self.seal.is_some() || self.prefix.is_some())
    }
}

/// The parts of a proxied response that live until its last byte.
pub struct UpstreamBody {
    inner: Option<Incoming>,
    guard: Option<InFlightGuard>,
    sender: Option<SendRequest<RequestBody>>,
    pool_limits: PoolLimits,
    idle: Option<(Pin<Box<Sleep>>, Duration)>,
    sse: Option<Box<SseWatch>>,
    record: Option<AccessRecord>,
    /// Set when a drain must close the stream right after the frame just passed.
    close_next: bool,
}

pub struct UpstreamParts {
    pub body: Incoming,
    pub guard: InFlightGuard,
    /// `None` when the connection must not serve another request.
    pub sender: Option<SendRequest<RequestBody>>,
    pub pool_limits: PoolLimits,
    pub idle_timeout: Option<Duration>,
    pub sse: Option<SseWatch>,
    pub record: AccessRecord,
}

/// The body of every response the proxy sends.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }

    pub fn upstream(parts: UpstreamParts) -> ResponseBody {
        ResponseBody::Upstream(Box::new(UpstreamBody {
            inner: Some(parts.body),
            guard: Some(parts.guard),
            sender: parts.sender,
            pool_limits: parts.pool_limits,
            idle: parts
                .idle_timeout
                .map(|d| (Box::pin(tokio::time::sleep(d)), d)),
            sse: parts.sse.map(Box::new),
            record: Some(parts.record),
            close_next: false,
        }))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Upstream(body) => body.inner.is_none() && !body.close_next,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Upstream(body) => body
                .inner
                .as_ref()
                .filter(|_| body.sse.is_none())
                .map_or_else(SizeHint::default, Body::size_hint),
        }
    }
}

impl UpstreamBody {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if std::mem::take(&mut self.close_next) {
            return Poll::Ready(Some(Ok(self.close_for_drain())));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Some(frame) = self.hold_endpoint(frame) else {
                    // Held back: the endpoint event is still incomplete; read on.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                };
                let frame = self.pass(frame);
                // Servers stop polling once a sized body is written: finish now, or the
                // connection would never return to the pool.
                if self.inner.as_ref().is_some_and(Body::is_end_stream) && !self.close_next {
                    self.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.end("upstream_error");
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                let held = self.release_held();
                let frame = held.map(|bytes| self.pass(Frame::data(bytes)));
                self.complete();
                Poll::Ready(frame.map(Ok))
            }
            Poll::Pending => self.poll_timers(cx),
        }
    }

    /// Forwards one frame as it is, noting what the SSE watch and the timers need.
    fn pass(&mut self, frame: Frame<Bytes>) -> Frame<Bytes> {
        if let Some(data) = frame.data_ref() {
            if let Some(record) = &mut self.record {
                record.bytes += data.len() as u64;
                record.state.metrics.bytes_out.inc_by(data.len() as u64);
            }
            if let Some((sleep, every)) = &mut self.idle {
                sleep.as_mut().reset(tokio::time::Instant::now() + *every);
            }
            if let Some(sse) = &mut self.sse {
                sse.boundary.observe(data);
                if let Some((sleep, every)) = &mut sse.keepalive {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *every);
                }
                self.scan_endpoint(data);
                if self
                    .sse
                    .as_ref()
                    .is_some_and(|s| s.closing && s.boundary.at_boundary())
                {
                    self.close_next = true;
                }
            }
        }
        frame
    }

    /// On a legacy stream whose endpoint is rewritten, keeps the head back until the `endpoint`
    /// event is complete, then gives it out rewritten. `None` while still holding.
    fn hold_endpoint(&mut self, frame: Frame<Bytes>) -> Option<Frame<Bytes>> {
        let Some(sse) = self.sse.as_mut() else {
            return Some(frame);
        };
        if !sse.rewrites_endpoint() {
            return Some(frame);
        }
        let (Some(scanner), Some(data)) = (sse.endpoint.as_mut(), frame.data_ref()) else {
            return Some(frame);
        };
        sse.held.extend_from_slice(data);
        let url = scanner.feed(data);
        if url.is_none() && !scanner.is_done() {
            // Only comments so far (any real event ends the scan): they pass now, so only the
            // endpoint event's own bytes wait.
            let at_boundary = sse.held.ends_with(b"\n\n") || sse.held.ends_with(b"\n\r\n");
            return at_boundary.then(|| Frame::data(Bytes::from(std::mem::take(&mut sse.held))));
        }
        sse.endpoint = None;
        let held = std::mem::take(&mut sse.held);
        let Some(url) = url else {
            sse.slot = None;
            return Some(Frame::data(Bytes::from(held)));
        };
        self.learn_endpoint(&url);
        let rewritten = self.rewritten_endpoint(&url).and_then(|new_url| {
            crate::mcp::sse::replace_first(&held, url.as_bytes(), new_url.as_bytes())
        });
        match rewritten {
            Some(bytes) => Some(Frame::data(Bytes::from(bytes))),
            None => {
                tracing::warn!("cannot rewrite the endpoint event's URL; passing it as is");
                Some(Frame::data(Bytes::from(held)))
            }
        }
    }

    /// The endpoint URL as the client must see it: its session id sealed, the route's stripped
    /// prefix put back in front of its path.
    fn rewritten_endpoint(&self, url: &str) -> Option<String> {
        let sse = self.sse.as_ref()?;
        let mut url = url.to_string();
        if let Some(sealer) = &sse.seal {
            let owner = &self.guard.as_ref()?.backend().address;
            let id = crate::mcp::session::legacy_session_id(url.split_once('?')?.1)?;
            let token = sealer.seal(owner, id)?;
            url = crate::mcp::seal::with_session_id(&url, &token)?;
        }
        if let Some(prefix) = &sse.prefix {
            url = crate::mcp::sse::prefixed_endpoint(&url, prefix);
        }
        Some(url)
    }

    /// Bytes still held when the stream ends before its endpoint event completed.
    fn release_held(&mut self) -> Option<Bytes> {
        let sse = self.sse.as_mut()?;
        sse.endpoint
            .take_if(|_| sse.seal.is_some() || sse.prefix.is_some());
        let held = std::mem::take(&mut sse.held);
        (!held.is_empty()).then(|| Bytes::from(held))
    }

    /// Learns the legacy session from the `endpoint` event before the client can see it, so the
    /// client's first POST already finds its owner.
    fn scan_endpoint(&mut self, data: &Bytes) {
        let Some(sse) = self.sse.as_mut() else { return };
        // With sealing, `hold_endpoint` already fed these bytes to the scanner.
        if sse.seal.is_some() {
            return;
        }
        let Some(scanner) = sse.endpoint.as_mut() else {
            return;
        };
        let Some(url) = scanner.feed(data) else {
            if scanner.is_done() {
                sse.endpoint = None;
                sse.slot = None;
            }
            return;
        };
        sse.endpoint = None;
        self.learn_endpoint(&url);
    }

    fn learn_endpoint(&mut self, url: &str) {
        let query = url.split_once('?').map(|(_, q)| q);
        let (Some(id), Some(guard), Some(record)) = (
            query.and_then(crate::mcp::session::legacy_session_id),
            self.guard.as_ref(),
            self.record.as_mut(),
        ) else {
            return;
        };
        let slot = self.sse.as_mut().and_then(|sse| {
            sse.learned = Some(id.to_owned());
            sse.slot.take()
        });
        record.state.learn_session(id, guard.backend(), slot);
        record.session = Some(crate::mcp::session::session_tag(id));
    }

    fn poll_timers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let backend_lost = self
            .guard
            .as_ref()
            .is_some_and(|g| !g.backend().serves_its_sessions());
        if let Some(sse) = &mut self.sse {
            if !sse.closing && sse.close.as_mut().poll(cx).is_ready() {
                sse.closing = true;
            }
            if sse.closing && sse.boundary.at_boundary() {
                return Poll::Ready(Some(Ok(self.close_for_drain())));
            }
            if sse.closing && backend_lost {
                // Mid-event on a backend that is down: the rest of the event will never come.
                // A clean end makes the client drop the partial event and reconnect.
                self.end("backend_unhealthy");
                return Poll::Ready(None);
            }
            if let Some((sleep, every)) = &mut sse.keepalive
                && sleep.as_mut().poll(cx).is_ready()
            {
                sleep.as_mut().reset(tokio::time::Instant::now() + *every);
                // Registers the waker for the next tick.
                let _ = sleep.as_mut().poll(cx);
                if sse.boundary.at_boundary() && !sse.closing {
                    sse.boundary.observe(KEEPALIVE);
                    if let Some(record) = &self.record {
                        record.state.metrics.keepalives.inc();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEPALIVE)))));
                }
            }
        }
        if let Some((sleep, _)) = &mut self.idle
            && sleep.as_mut().poll(cx).is_ready()
        {
            self.end("idle_timeout");
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Ends a stream that must close for a drain, at an event boundary: the last frame asks
    /// the client to reconnect soon (and so land on the pool that now takes new work).
    fn close_for_drain(&mut self) -> Frame<Bytes> {
        if let Some(record) = &self.record {
            record.state.metrics.streams_drained.inc();
        }
        self.end("drained");
        Frame::data(Bytes::from_static(DRAIN_RETRY))
    }

    /// The backend finished the response: the connection can serve another request.
    fn complete(&mut self) {
        if let (Some(sender), Some(guard)) = (self.sender.take(), self.guard.as_ref()) {
            guard.backend().checkin(sender, self.pool_limits);
        }
        self.finish("complete");
    }

    /// The response ends early: dropping the upstream body and connection closes it, so the
    /// backend sees the request cancelled.
    fn end(&mut self, outcome: &'static str) {
        self.inner = None;
        self.sender = None;
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: &'static str) {
        self.inner = None;
        self.idle = None;
        self.guard = None;
        let learned = self.sse.as_mut().and_then(|sse| sse.learned.take());
        if let (Some(id), Some(record)) = (learned, &self.record) {
            record.state.sessions.forget(&id);
        }
        if let Some(record) = self.record.take() {
            record.finish(outcome);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.finish("client_closed");
        }
    }
}
