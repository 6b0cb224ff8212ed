//! hyper's HTTP/1.1 or HTTP/2 connection for an accepted socket, picked by its first bytes: the
//! HTTP/2 preface (h2c by prior knowledge, or `h2` after ALPN) or anything else.
//!
//! hyper-util's `auto` connection does the same, but hands hyper the bytes it read to decide
//! (up to 24) as a read of their own. hyper's first read then holds a part of a head, and the
//! next one, which must find room for 8 KiB more, reallocates its read buffer to 16 KiB — kept
//! for the connection's life (heaptrack: 16.3 KB of every idle keep-alive connection). Here the
//! first read hyper makes gets those bytes and whatever else the socket already has, in one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
        Future: Send + 'static,
        Error: Into<BoxError>,
        ResBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
    > + Send
{
}
impl<S> Service for S where
    S: HttpService<
            Incoming,
            Future: Send + 'static,
            Error: Into<BoxError>,
            ResBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
        > + Send
{
}

/// hyper's two connection builders, configured once per snapshot.
pub struct Builders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

type Http1<I, S> = http1::UpgradeableConnection<TokioIo<Prefixed<I>>, S>;
type Http2<I, S> = http2::Connection<TokioIo<Prefixed<I>>, S, TokioExecutor>;

/// A connection being served: still reading its first bytes, or hyper's HTTP/1 or HTTP/2.
/// Each state is boxed: the task that serves a connection holds only a pointer for it.
pub enum Connection<I, S>
where
    S: HttpService<Incoming>,
{
    Detecting(Box<Detecting<I, S>>),
    Http1(Pin<Box<Http1<I, S>>>),
    Http2(Pin<Box<Http2<I, S>>>),
    /// Shut down, or ended by an error, before its first bytes had decided.
    Ended,
}

/// Reading the first bytes, with what the connection hyper serves next needs.
pub struct Detecting<I, S> {
    io: I,
    read: [u8; H2_PREFACE.len()],
    filled: usize,
    service: S,
    builders: Arc<Builders>,
}

impl<I: Io, S: Service> Connection<I, S> {
    pub fn new(io: I, service: S, builders: Arc<Builders>) -> Connection<I, S> {
        Connection::Detecting(Box::new(Detecting {
            io,
            read: [0; H2_PREFACE.len()],
            filled: 0,
            service,
            builders,
        }))
    }

    /// As hyper's own: HTTP/1 finishes the request in flight and closes, HTTP/2 sends GOAWAY. A
    /// connection that has not yet shown which it speaks is closed.
    pub fn graceful_shutdown(mut self: Pin<&mut Self>) {
        match &mut *self {
            Connection::Detecting(_) => *self = Connection::Ended,
            Connection::Http1(connection) => connection.as_mut().graceful_shutdown(),
            Connection::Http2(connection) => connection.as_mut().graceful_shutdown(),
            Connection::Ended => {}
        }
    }
}

impl<I: Io, S: Service> Future for Connection<I, S> {
    type Output = Result<(), hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut *self {
                Connection::Detecting(detecting) => {
                    let http2 = match detecting.poll_version(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(http2)) => http2,
                        // As hyper-util: the connection ends with the error unreported.
                        Poll::Ready(Err(error)) => {
                            tracing::debug!(%error, "reading the first bytes failed");
                            *self = Connection::Ended;
                            return Poll::Ready(Ok(()));
                        }
                    };
                    let Connection::Detecting(detecting) =
                        std::mem::replace(&mut *self, Connection::Ended)
                    else {
                        return Poll::Ready(Ok(()));
                    };
                    *self = (*detecting).serve(http2);
                }
                Connection::Http1(connection) => return connection.as_mut().poll(cx),
                Connection::Http2(connection) => return connection.as_mut().poll(cx),
                Connection::Ended => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<I: Io, S: Service> Detecting<I, S> {
    /// Reads until the bytes are the whole HTTP/2 preface (`true`), or are not a beginning of it
    /// (`false`), or the peer closed (`false`: hyper's HTTP/1 then sees the end).
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
            if got == 0 || self.read[before..self.filled] != H2_PREFACE[before..self.filled] {
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
            builders,
        } = self;
        let prefix = Bytes::copy_from_slice(read.get(..filled).unwrap_or_default());
        let io = TokioIo::new(Prefixed::new(prefix, io));
        if http2 {
            Connection::Http2(Box::pin(builders.http2.serve_connection(io, service)))
        } else {
            let connection = builders.http1.serve_connection(io, service);
            Connection::Http1(Box::pin(connection.with_upgrades()))
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::upstream::h1::io::testing::socket_pair;

    /// What the first bytes decide once the socket has them all: `None` for nothing yet.
    async fn version_of(sent: &[u8], then_close: bool) -> Option<bool> {
        let (mut client, server) = socket_pair().await;
        client.write_all(sent).await.unwrap();
        // Kept open unless asked: then only what was sent is there to read.
        let _open = (!then_close).then_some(client);
        server.readable().await.unwrap();
        let service = hyper::service::service_fn(|_: http::Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
        let builders = Arc::new(Builders {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
        });
        let mut detecting = Detecting {
            io: server,
            read: [0; H2_PREFACE.len()],
            filled: 0,
            service,
            builders,
        };
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
}
