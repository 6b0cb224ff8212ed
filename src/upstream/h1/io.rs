//! The byte stream of an upstream connection, plain TCP or TLS, read through lent buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
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

/// Waits for readiness without a buffer, then reads with one.
fn poll_fill_tcp(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        buffers::ready_for_read(buf);
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buffers::release(buf),
            result => return Poll::Ready(result),
        }
    }
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
