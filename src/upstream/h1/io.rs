//! The byte stream of an upstream connection, plain TCP or TLS, read through lent buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::buffers;

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Io {
    /// Reads what is ready into `buf`, taking a lent buffer only once bytes are there; `Ok(0)`
    /// is the end of the stream. While pending, an empty `buf` holds no storage.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let result = match self {
            Io::Plain(stream) => poll_fill_tcp(stream, cx, buf),
            Io::Tls(stream) => {
                buffers::ready_for_read(buf);
                // `read_buf` keeps no state between polls: a pending one is simply dropped.
                let read = stream.read_buf(buf);
                std::pin::pin!(read).as_mut().poll(cx)
            }
        };
        if result.is_pending() {
            buffers::release(buf);
        }
        result
    }

    /// Whether a parked connection is unusable: the backend closed it, reset it, or sent bytes
    /// no request asked for.
    pub fn is_stale(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self {
            // Readiness first: when the runtime saw nothing since the last read, no syscall.
            Io::Plain(stream) => match stream.poll_read_ready(&mut cx) {
                Poll::Pending => false,
                Poll::Ready(Err(_)) => true,
                Poll::Ready(Ok(())) => !matches!(
                    stream.try_read(&mut byte),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                ),
            },
            Io::Tls(stream) => {
                let mut read = ReadBuf::new(&mut byte);
                Pin::new(stream).poll_read(&mut cx, &mut read).is_ready()
            }
        }
    }
}

use std::future::Future;

/// Waits for readiness without a buffer, then reads with one. The read goes through
/// `poll_read`, not `try_read`: a read shorter than the room given clears the socket's
/// readiness, so the check-out's staleness look at a parked connection (`is_stale`) costs no
/// syscall; after a `try_read` the readiness stayed set and every check-out paid a `recvfrom`
/// that failed with `EAGAIN`.
fn poll_fill_tcp(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    ready!(stream.poll_read_ready(cx))?;
    buffers::ready_for_read(buf);
    // `read_buf` keeps no state between polls: a pending one is simply dropped.
    let read = stream.read_buf(buf);
    std::pin::pin!(read).as_mut().poll(cx)
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A byte stream some of whose first bytes were already read: they come first, in the same
/// read as what the stream has after them. Serves a client connection whose first bytes told its
/// HTTP version (hyper then sees a whole head at once) and a backend connection after a `101`
/// (what was read past the head).
#[derive(Debug)]
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
    /// An error met after the prefix was handed out in the same read: the next read reports it.
    error: Option<io::Error>,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Bytes, io: I) -> Prefixed<I> {
        Prefixed {
            prefix,
            io,
            error: None,
        }
    }

    /// The bytes not yet handed out and the stream; `None` once a read has failed.
    pub fn into_parts(self) -> Option<(Bytes, I)> {
        match self.error {
            Some(_) => None,
            None => Some((self.prefix, self.io)),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.error.take() {
            return Poll::Ready(Err(error));
        }
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let take = this.prefix.len().min(buf.remaining());
        buf.put_slice(this.prefix.get(..take).unwrap_or_default());
        this.prefix.advance(take);
        if this.prefix.is_empty() && buf.remaining() > 0 {
            // What the socket has now joins the prefix; nothing yet is fine, the prefix is data.
            if let Poll::Ready(Err(error)) = Pin::new(&mut this.io).poll_read(cx, buf) {
                this.error = Some(error);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// For tests of this crate that need a real socket.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used)]

    use tokio::net::{TcpListener, TcpStream};

    /// The two ends of a new loopback TCP connection: the client's and the server's.
    pub(crate) async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::testing::socket_pair;
    use super::*;

    /// The bytes read to decide and what followed them come in one read: hyper parses the head
    /// from its first read and never grows its buffer past 8 KiB for it.
    #[tokio::test]
    async fn the_first_read_joins_the_prefix_and_what_the_socket_has() {
        let (mut client, server) = socket_pair().await;
        client
            .write_all(b"TP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut prefixed = Prefixed::new(Bytes::from_static(b"GET / HT"), server);
        // Wait until the socket has the rest, so the read below can take it.
        prefixed.io.readable().await.unwrap();
        let mut buf = vec![0; 8192];
        let n = prefixed.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    /// An answer read whole leaves the socket marked not ready, so the check-out that looks at
    /// the parked connection next asks the runtime, not the kernel; once the backend closes
    /// it, the look sees that.
    #[tokio::test]
    async fn a_short_read_leaves_a_parked_connection_to_be_checked_without_a_syscall() {
        let (client, mut server) = socket_pair().await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let mut io = Io::Plain(client);
        let mut buf = BytesMut::new();
        let n = std::future::poll_fn(|cx| io.poll_fill(cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r\n\r\n");
        let Io::Plain(stream) = &io else {
            unreachable!()
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            stream.poll_read_ready(&mut cx).is_pending(),
            "the readiness outlived a short read"
        );
        assert!(!io.is_stale());
        drop(server);
        let Io::Plain(stream) = &io else {
            unreachable!()
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.readable())
            .await
            .expect("the close never made the socket ready")
            .unwrap();
        assert!(io.is_stale());
    }

    #[tokio::test]
    async fn a_prefix_longer_than_the_read_is_handed_out_in_parts() {
        let (_client, server) = socket_pair().await;
        let mut prefixed = Prefixed::new(Bytes::from_static(b"abcdef"), server);
        let mut buf = [0; 4];
        assert_eq!(prefixed.read(&mut buf).await.unwrap(), 4);
        assert_eq!(&buf, b"abcd");
        let mut rest = [0; 2];
        assert_eq!(prefixed.read(&mut rest).await.unwrap(), 2);
        assert_eq!(&rest, b"ef");
    }
}
