//! hyper's HTTP/1.1 or HTTP/2 connection for an accepted socket, picked by its first bytes: the
//! HTTP/2 preface (h2c by prior knowledge, or `h2` after ALPN) or anything else.
//!
//! hyper-util's `auto` connection does the same, but hands hyper the bytes it read to decide
//! (up to 24) as a read of their own. hyper's first read then holds a part of a head, and the
//! next one, which must find room for 8 KiB more, reallocates its read buffer to 16 KiB — kept
//! for the connection's life (heaptrack: 16.3 KB of every idle keep-alive connection). Here the
//! first read hyper makes gets those bytes and whatever else the socket already has, in one.
//!
//! **Parking.** hyper's HTTP/1 connection keeps an 8 KiB read buffer, an 8 KiB write buffer and
//! a header map for as long as it lives, idle or not: 13 KB per idle keep-alive connection where
//! nginx holds under 1 KB. So an HTTP/1 connection that has had no request for
//! [`Builders::park_after`] leaves hyper: hyper finishes what it was writing and hands the socket
//! back, with what it had read of a next head, and nothing but the socket (and the service) waits
//! for the client's next bytes, which start a new hyper connection. A connection parks only once
//! its last request body was read to its end (the next byte then begins a head; a body cut short
//! leaves bytes that must never be read as a request), and never with bytes of a next head in
//! hand (those resume it at once). hyper hands a socket back only through its low-level API, so
//! the socket of a `101` is handed to the WebSocket tunnel here too ([`UpgradeSlot`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::activity::Activity;
use crate::upstream::h1::io::Prefixed;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A socket hyper can serve from a spawned task.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A service hyper can run on both versions: HTTP/2 spawns its requests, so they must be `Send`.
pub trait Service:
    HttpService<
        Incoming,
        Future: Send + Unpin + 'static,
        Error: Into<BoxError>,
        ResBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
    > + Send
    + Unpin
{
}
impl<S> Service for S where
    S: HttpService<
            Incoming,
            Future: Send + Unpin + 'static,
            Error: Into<BoxError>,
            ResBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
        > + Send
        + Unpin
{
}

/// hyper's two connection builders, configured once per snapshot, and how long an HTTP/1
/// connection waits for its next request before it parks.
pub struct Builders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    pub park_after: Duration,
}

/// A client's socket after a `101`, with what hyper had read past the request's head.
pub type ClientIo = Prefixed<Box<dyn Io>>;

/// Where an HTTP/1 connection hands its socket over after a `101`: the WebSocket tunnel asks for
/// it before the `101` goes out, and the connection sends it once hyper has written the `101`.
#[derive(Default)]
pub struct UpgradeSlot(Mutex<Option<oneshot::Sender<ClientIo>>>);

impl std::fmt::Debug for UpgradeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpgradeSlot")
    }
}

impl UpgradeSlot {
    /// The socket, once the `101` this request answers is written; an error if the connection
    /// ends first.
    pub fn expect(&self) -> oneshot::Receiver<ClientIo> {
        let (sender, receiver) = oneshot::channel();
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(sender);
        }
        receiver
    }

    fn take(&self) -> Option<oneshot::Sender<ClientIo>> {
        self.0.lock().ok()?.take()
    }
}

type Http1<I, S> = http1::Connection<TokioIo<Prefixed<I>>, S>;
type Http2<I, S> = http2::Connection<TokioIo<Prefixed<I>>, S, TokioExecutor>;

/// A connection being served: reading its first bytes (or, parked, the first of its next
/// request), hyper's HTTP/1 or HTTP/2, or shutting its socket down after hyper.
/// Each state is boxed: the task that serves a connection holds only a pointer for it.
pub enum Connection<I, S>
where
    S: HttpService<Incoming>,
{
    Detecting(Box<Detecting<I, S>>),
    Http1(Box<Serving<I, S>>),
    Http2(Pin<Box<Http2<I, S>>>),
    /// hyper is done: the socket is shut down for writing (TLS: `close_notify`), then closed.
    Closing(Box<Closing<I>>),
    /// Shut down, or ended by an error, before its first bytes had decided.
    Ended,
}

/// What a connection keeps in every state.
struct Setting {
    builders: Arc<Builders>,
    activity: Activity,
    upgrade: Arc<UpgradeSlot>,
    /// Counts the connection while it is parked.
    parked: Gauge,
}

/// A parked connection, counted until it wakes or closes.
struct Parked(Gauge);

impl Parked {
    fn new(gauge: &Gauge) -> Parked {
        gauge.inc();
        Parked(gauge.clone())
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reading the first bytes, with what the connection hyper serves next needs.
pub struct Detecting<I, S> {
    io: I,
    read: [u8; H2_PREFACE.len()],
    filled: usize,
    service: S,
    setting: Setting,
    /// Parked after a request: only HTTP/1 may follow.
    parked: Option<Parked>,
}

/// hyper's HTTP/1 connection, and when to take its socket back.
pub struct Serving<I, S>
where
    S: HttpService<Incoming>,
{
    connection: Http1<I, S>,
    setting: Setting,
    /// Created the first time the connection is idle, then re-armed only when it fires.
    park_timer: Option<Pin<Box<Sleep>>>,
    /// What hyper was asked to end for, if anything.
    ending: Option<Ending>,
    /// Since when the connection was idle when this hyper connection began. It parks only once a
    /// request has ended since: before its first answer hyper is not idle, and asked to let go
    /// it would answer the next request with `Connection: close` instead.
    idle_at_start: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Park,
    Close,
}

pub struct Closing<I> {
    io: I,
    error: Option<hyper::Error>,
}

impl<I: Io, S: Service> Connection<I, S> {
    /// `parked` counts the connection while it is parked.
    pub fn new(
        io: I,
        service: S,
        builders: Arc<Builders>,
        (activity, upgrade, parked): (Activity, Arc<UpgradeSlot>, Gauge),
    ) -> Connection<I, S> {
        let setting = Setting {
            builders,
            activity,
            upgrade,
            parked,
        };
        Connection::Detecting(Box::new(Detecting::new(io, service, setting, None)))
    }

    /// As hyper's own: HTTP/1 finishes the request in flight and closes, HTTP/2 sends GOAWAY. A
    /// connection that has not yet shown which it speaks, or is parked, is closed.
    pub fn graceful_shutdown(mut self: Pin<&mut Self>) {
        match &mut *self {
            Connection::Detecting(_) => *self = Connection::Ended,
            Connection::Http1(serving) => {
                serving.ending = Some(Ending::Close);
                Pin::new(&mut serving.connection).graceful_shutdown();
            }
            Connection::Http2(connection) => connection.as_mut().graceful_shutdown(),
            Connection::Closing(_) | Connection::Ended => {}
        }
    }

    /// The socket of an HTTP/1 connection, taken from hyper while a request is open whose
    /// response goes out another way ([`super::takeover`]). hyper has written nothing of that
    /// response, and every earlier one was flushed before hyper read this request; what it read
    /// past the request (pipelined requests) is dropped. `None` in any other state.
    pub fn take_socket(mut self: Pin<&mut Self>) -> Option<I> {
        if !matches!(*self, Connection::Http1(_)) {
            return None;
        }
        let Connection::Http1(serving) = std::mem::replace(&mut *self, Connection::Ended) else {
            return None;
        };
        let parts = serving.connection.into_parts();
        parts.io.into_inner().into_parts().map(|(_, io)| io)
    }

    /// Whether the connection waits for its next request without hyper.
    pub fn is_parked(&self) -> bool {
        match self {
            Connection::Detecting(detecting) => detecting.parked.is_some(),
            _ => false,
        }
    }
}

impl<I: Io, S: Service> Future for Connection<I, S> {
    type Output = Result<(), hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match &mut *self {
                Connection::Detecting(detecting) => match detecting.poll_version(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(http2)) => Step::Serve(http2),
                    // As hyper-util: the connection ends with the error unreported.
                    Poll::Ready(Err(error)) => {
                        tracing::debug!(%error, "reading the first bytes failed");
                        *self = Connection::Ended;
                        return Poll::Ready(Ok(()));
                    }
                },
                Connection::Http1(serving) => match serving.connection.poll_without_shutdown(cx) {
                    Poll::Pending if serving.is_due_to_park(cx) => {
                        serving.ending = Some(Ending::Park);
                        Pin::new(&mut serving.connection).graceful_shutdown();
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => Step::Done(result.err()),
                },
                Connection::Http2(connection) => return connection.as_mut().poll(cx),
                Connection::Closing(closing) => {
                    if let Err(error) = ready!(Pin::new(&mut closing.io).poll_shutdown(cx)) {
                        tracing::debug!(%error, "shutting a client connection down failed");
                    }
                    let error = closing.error.take();
                    *self = Connection::Ended;
                    return Poll::Ready(error.map_or(Ok(()), Err));
                }
                Connection::Ended => return Poll::Ready(Ok(())),
            };
            let state = std::mem::replace(&mut *self, Connection::Ended);
            *self = match (state, next) {
                (Connection::Detecting(detecting), Step::Serve(http2)) => (*detecting).serve(http2),
                (Connection::Http1(serving), Step::Done(error)) => (*serving).done(error),
                _ => Connection::Ended,
            };
        }
    }
}

/// Where a state goes once its poll has decided.
enum Step {
    Serve(bool),
    Done(Option<hyper::Error>),
}

impl<I: Io, S: Service> Detecting<I, S> {
    fn new(io: I, service: S, setting: Setting, parked: Option<Parked>) -> Detecting<I, S> {
        Detecting {
            io,
            read: [0; H2_PREFACE.len()],
            filled: 0,
            service,
            setting,
            parked,
        }
    }

    /// Reads until the bytes are the whole HTTP/2 preface (`true`), or are not a beginning of it
    /// (`false`), or the peer closed (`false`: hyper's HTTP/1 then sees the end). A parked
    /// connection needs one byte (or the end): it goes on in HTTP/1.
    fn poll_version(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while self.filled < H2_PREFACE.len() {
            let mut buf = ReadBuf::new(&mut self.read[self.filled..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            let got = buf.filled().len();
            let before = self.filled;
            self.filled += got;
            if got == 0
                || self.parked.is_some()
                || self.read[before..self.filled] != H2_PREFACE[before..self.filled]
            {
                return Poll::Ready(Ok(false));
            }
        }
        Poll::Ready(Ok(true))
    }

    fn serve(self, http2: bool) -> Connection<I, S> {
        let Detecting {
            io,
            read,
            filled,
            service,
            setting,
            ..
        } = self;
        let prefix = Bytes::copy_from_slice(read.get(..filled).unwrap_or_default());
        let io = TokioIo::new(Prefixed::new(prefix, io));
        if http2 {
            let connection = setting.builders.http2.serve_connection(io, service);
            Connection::Http2(Box::pin(connection))
        } else {
            Serving::start(io, service, setting)
        }
    }
}

impl<I: Io, S: Service> Serving<I, S> {
    fn start(io: TokioIo<Prefixed<I>>, service: S, setting: Setting) -> Connection<I, S> {
        let connection = setting.builders.http1.serve_connection(io, service);
        let idle_at_start = setting.activity.idle_since();
        Connection::Http1(Box::new(Serving {
            connection,
            setting,
            park_timer: None,
            ending: None,
            idle_at_start,
        }))
    }

    /// Whether the connection, pending in hyper, has been idle long enough to park. Reads the
    /// clock only when its timer fires; a busy connection leaves the timer alone.
    fn is_due_to_park(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ending.is_some() {
            return false;
        }
        let Some(since) = self.setting.activity.settled_since() else {
            return false;
        };
        if self.idle_at_start == Some(since) {
            return false;
        }
        let due = since + self.setting.builders.park_after;
        let timer = self
            .park_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() >= due {
                return true;
            }
            timer.as_mut().reset(due);
        }
        false
    }

    /// hyper has let the connection go: hand the socket to a WebSocket tunnel after a `101`,
    /// park it, or shut it down.
    fn done(self, error: Option<hyper::Error>) -> Connection<I, S> {
        let Serving {
            connection,
            setting,
            ending,
            ..
        } = self;
        let parts = connection.into_parts();
        let Some((unread, io)) = parts.io.into_inner().into_parts() else {
            return Connection::Ended;
        };
        let read_ahead = joined(parts.read_buf, unread);
        // Taken either way: after an error, the tunnel learns at once that no socket comes.
        let tunnel = setting.upgrade.take();
        if error.is_none()
            && let Some(tunnel) = tunnel
        {
            // A tunnel gone already drops the socket, which closes the connection.
            let _ = tunnel.send(Prefixed::new(read_ahead, Box::new(io)));
            return Connection::Ended;
        }
        match (ending, error) {
            (Some(Ending::Park), None) if read_ahead.is_empty() => {
                let parked = Some(Parked::new(&setting.parked));
                let detecting = Detecting::new(io, parts.service, setting, parked);
                Connection::Detecting(Box::new(detecting))
            }
            // A next head had begun: hyper goes on with it at once.
            (Some(Ending::Park), None) => {
                let io = TokioIo::new(Prefixed::new(read_ahead, io));
                Serving::start(io, parts.service, setting)
            }
            (_, error) => Connection::Closing(Box::new(Closing { io, error })),
        }
    }
}

fn joined(first: Bytes, then: Bytes) -> Bytes {
    if then.is_empty() {
        return first;
    }
    if first.is_empty() {
        return then;
    }
    let mut both = BytesMut::with_capacity(first.len() + then.len());
    both.extend_from_slice(&first);
    both.extend_from_slice(&then);
    both.freeze()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::convert::Infallible;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::upstream::h1::io::testing::socket_pair;

    fn setting(park_after: Duration) -> Setting {
        Setting {
            builders: Arc::new(Builders {
                http1: http1::Builder::new(),
                http2: http2::Builder::new(TokioExecutor::new()),
                park_after,
            }),
            activity: Activity::default(),
            upgrade: Arc::default(),
            parked: Gauge::default(),
        }
    }

    /// What the first bytes decide once the socket has them all: `None` for nothing yet.
    async fn version_of(sent: &[u8], then_close: bool) -> Option<bool> {
        let (mut client, server) = socket_pair().await;
        client.write_all(sent).await.unwrap();
        // Kept open unless asked: then only what was sent is there to read.
        let _open = (!then_close).then_some(client);
        server.readable().await.unwrap();
        let service = hyper::service::service_fn(|_: http::Request<Incoming>| {
            Box::pin(async { Ok::<_, Infallible>(http::Response::new(String::new())) })
        });
        let mut detecting = Detecting::new(server, service, setting(Duration::from_secs(60)), None);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Loopback delivers a write whole; a second poll picks up a close.
        for _ in 0..2 {
            if let Poll::Ready(version) = detecting.poll_version(&mut cx) {
                return Some(version.unwrap());
            }
            if then_close {
                detecting.io.readable().await.unwrap();
            }
        }
        None
    }

    #[tokio::test]
    async fn the_preface_means_http2_and_anything_else_http1() {
        assert_eq!(version_of(H2_PREFACE, false).await, Some(true));
        assert_eq!(
            version_of(b"GET / HTTP/1.1\r\n\r\n", false).await,
            Some(false)
        );
        // A beginning of the preface that goes on otherwise is HTTP/1 (hyper refuses it).
        assert_eq!(version_of(b"PRI * HTTP/1.1\r\n", false).await, Some(false));
        // A beginning of the preface alone decides nothing yet (the header timer bounds it).
        assert_eq!(version_of(b"PRI * HTTP/2.0", false).await, None);
        // A peer that leaves before deciding goes to HTTP/1, which sees the end.
        assert_eq!(version_of(b"PRI * HTTP/2.0", true).await, Some(false));
        assert_eq!(version_of(b"", true).await, Some(false));
    }

    type TestFuture =
        Pin<Box<dyn Future<Output = Result<http::Response<String>, Infallible>> + Send>>;

    /// A connection served as the proxy serves one: each request counted open until it is
    /// answered with its path; a `101` for a path `/upgrade`, after asking for the socket.
    fn connection(
        server: TcpStream,
        park_after: Duration,
        tunnels: oneshot::Sender<oneshot::Receiver<ClientIo>>,
    ) -> (Connection<TcpStream, impl Service>, Activity) {
        let setting = setting(park_after);
        let activity = setting.activity.clone();
        let upgrade = Arc::clone(&setting.upgrade);
        let tunnels = Mutex::new(Some(tunnels));
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let open = activity.request(&request);
            let path = request.uri().path().to_owned();
            let mut response = http::Response::new(path.clone());
            if path == "/upgrade" {
                let tunnel = tunnels.lock().unwrap().take().unwrap();
                assert!(tunnel.send(upgrade.expect()).is_ok());
                *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert("connection", http::HeaderValue::from_static("upgrade"));
                headers.insert("upgrade", http::HeaderValue::from_static("test"));
            }
            let answer: TestFuture = Box::pin(async move {
                drop(open);
                Ok(response)
            });
            answer
        });
        let activity = setting.activity.clone();
        let parts = (setting.activity, setting.upgrade, setting.parked);
        let connection = Connection::new(server, service, setting.builders, parts);
        (connection, activity)
    }

    /// Runs `step` while serving the connection; the connection must outlive it.
    async fn serving<C: Future + Unpin, T>(connection: &mut C, step: impl Future<Output = T>) -> T {
        tokio::select! {
            biased;
            _ = connection => panic!("the connection ended"),
            out = step => out,
        }
    }

    /// Sends `head` and reads one answer, whose body is its path.
    async fn ask(client: &mut TcpStream, head: &[u8]) -> String {
        client.write_all(head).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\n") || !String::from_utf8_lossy(&answer).contains('/') {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let body = String::from_utf8_lossy(&answer[end + 4..]).into_owned();
                if body.starts_with('/') {
                    return body;
                }
            }
        }
        unreachable!()
    }

    /// Polls the connection until it is parked, for 5 s at most.
    async fn until_parked<S: Service>(connection: &mut Pin<Box<Connection<TcpStream, S>>>) {
        let parked = std::future::poll_fn(|cx| {
            assert!(
                connection.as_mut().poll(cx).is_pending(),
                "the connection ended"
            );
            if connection.is_parked() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(5), parked)
            .await
            .expect("the connection parks");
    }

    const ONE: &[u8] = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n";
    const TWO: &[u8] = b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n";

    #[tokio::test]
    async fn an_idle_connection_parks_and_its_next_request_wakes_it() {
        let (mut client, server) = socket_pair().await;
        let (tunnels, _) = oneshot::channel();
        let (connection, _) = connection(server, Duration::from_millis(20), tunnels);
        let mut connection = Box::pin(connection);
        assert_eq!(
            serving(&mut connection, ask(&mut client, ONE)).await,
            "/one"
        );
        assert!(!connection.is_parked(), "parks only after a while");
        until_parked(&mut connection).await;
        assert_eq!(
            serving(&mut connection, ask(&mut client, TWO)).await,
            "/two"
        );
        assert!(!connection.is_parked());
        until_parked(&mut connection).await;
        // A parked connection shut down closes at once.
        connection.as_mut().graceful_shutdown();
        assert!(connection.as_mut().await.is_ok());
        assert_eq!(client.read(&mut [0u8; 16]).await.unwrap(), 0);
    }

    /// hyper had read part of the next head when asked to let go: the part is kept, hyper goes
    /// on with it at once, and the head's end completes the request.
    #[tokio::test]
    async fn a_head_begun_when_the_connection_parks_is_served_whole() {
        let (mut client, server) = socket_pair().await;
        let (tunnels, _) = oneshot::channel();
        // Tries to park as soon as a request has ended.
        let (connection, activity) = connection(server, Duration::ZERO, tunnels);
        let mut connection = Box::pin(connection);
        let two = b"GET /two HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        let (begun, rest) = two.split_at(two.len() - 6);
        // Pipelined: hyper has the beginning of the second head when the first is answered.
        let first = [ONE, begun].concat();
        assert_eq!(
            serving(&mut connection, ask(&mut client, &first)).await,
            "/one"
        );
        std::future::poll_fn(|cx| {
            let _ = connection.as_mut().poll(cx);
            // A hyper connection begun after the first answer: the park found the head begun.
            match &*connection {
                Connection::Http1(serving) if serving.idle_at_start == activity.idle_since() => {
                    Poll::Ready(())
                }
                _ => Poll::Pending,
            }
        })
        .await;
        assert!(!connection.is_parked());
        assert_eq!(
            serving(&mut connection, ask(&mut client, rest)).await,
            "/two"
        );
        until_parked(&mut connection).await;
    }

    /// After a `101`, the socket goes to the tunnel with the bytes sent right behind the head.
    #[tokio::test]
    async fn the_socket_of_a_101_goes_to_the_tunnel_with_what_followed_the_head() {
        let (mut client, server) = socket_pair().await;
        let (tunnels, tunnel) = oneshot::channel();
        let (connection, _) = connection(server, Duration::from_secs(60), tunnels);
        let mut connection = Box::pin(connection);
        let head = b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\nearly";
        client.write_all(head).await.unwrap();
        assert!(
            connection.as_mut().await.is_ok(),
            "the connection ends, the socket lives on"
        );
        let mut tunnel = tunnel.await.unwrap().await.unwrap();
        let mut answer = vec![0u8; 256];
        let n = client.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 101"),
            "{:?}",
            &answer[..n]
        );
        let mut early = [0u8; 5];
        tunnel.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");
        client.write_all(b"later").await.unwrap();
        tunnel.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"later");
        tunnel.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
