//! What a connection's requests tell the connection: whether the first request head has
//! arrived, how many requests (HTTP/2 streams) are open, when the last one ended, and whether its
//! body was read to the end. [`super::serve::drive`] reads it for its timers, and an HTTP/1
//! connection to decide when to set its socket aside ([`super::version`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::body::BodyRead;

#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<Counts>);

/// Shared by the service (which writes) and the connection (which reads).
#[derive(Debug)]
struct Counts {
    arrived: AtomicBool,
    http2: AtomicBool,
    open_requests: AtomicUsize,
    /// When the last request ended, as nanoseconds since `opened`.
    last_end: AtomicU64,
    opened: Instant,
    body_read: BodyRead,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts::new(BodyRead::default())
    }
}

impl Counts {
    fn new(body_read: BodyRead) -> Counts {
        Counts {
            arrived: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            open_requests: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            opened: Instant::now(),
            body_read,
        }
    }
}

impl Activity {
    /// `body_read` is the one the connection's request bodies tell when they were read whole.
    pub fn new(body_read: BodyRead) -> Activity {
        Activity(Arc::new(Counts::new(body_read)))
    }

    /// A request head has arrived; the request is open until the guard is dropped, with its
    /// response body after the last byte.
    pub fn request<B: http_body::Body>(&self, request: &http::Request<B>) -> OpenRequest {
        let counts = &self.0;
        counts.arrived.store(true, Ordering::Relaxed);
        if request.version() == http::Version::HTTP_2 {
            counts.http2.store(true, Ordering::Relaxed);
        }
        counts.body_read.arrived(!request.body().is_end_stream());
        counts.open_requests.fetch_add(1, Ordering::AcqRel);
        OpenRequest(Arc::clone(counts))
    }

    pub fn has_arrived(&self) -> bool {
        self.0.arrived.load(Ordering::Relaxed)
    }

    pub fn is_http2(&self) -> bool {
        self.0.http2.load(Ordering::Relaxed)
    }

    /// Since when the connection has had no open request; `None` while one is open.
    pub fn idle_since(&self) -> Option<Instant> {
        let counts = &self.0;
        if counts.open_requests.load(Ordering::Acquire) > 0 {
            return None;
        }
        let nanos = counts.last_end.load(Ordering::Acquire);
        Some(counts.opened + Duration::from_nanos(nanos))
    }

    /// As [`Activity::idle_since`], but `None` also while the last request's body has bytes
    /// that were never read: the connection's next byte is then not known to begin a head.
    pub fn settled_since(&self) -> Option<Instant> {
        self.idle_since().filter(|_| self.0.body_read.is_read())
    }
}

/// An open request of a connection, carried by its response body to the last byte.
#[derive(Debug)]
pub struct OpenRequest(Arc<Counts>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let since_open = Instant::now().saturating_duration_since(self.0.opened);
        let nanos = u64::try_from(since_open.as_nanos()).unwrap_or(u64::MAX);
        self.0.last_end.fetch_max(nanos, Ordering::AcqRel);
        self.0.open_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use http_body_util::{Empty, Full};

    use super::*;

    /// A request with a body nobody read leaves the connection idle but not settled: its next
    /// byte may be the rest of that body, so it must not park. The next request head settles it.
    #[test]
    fn a_body_left_unread_keeps_the_connection_from_settling_until_the_next_request() {
        let activity = Activity::default();
        assert!(
            activity.settled_since().is_some(),
            "a new connection is settled"
        );
        let post = http::Request::post("/")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        drop(activity.request(&post));
        assert!(activity.idle_since().is_some());
        assert!(activity.settled_since().is_none());
        let get = http::Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let open = activity.request(&get);
        assert!(activity.settled_since().is_none(), "a request is open");
        drop(open);
        assert_eq!(activity.settled_since(), activity.idle_since());
        assert!(activity.settled_since().is_some());
    }
}
