//! The response body as it comes off the connection, framed as its head said, and handed on as
//! `Bytes` split off the read buffer, which goes back as soon as it is empty. Once the body is
//! complete the connection can serve another request; an upgrade hands over the whole stream.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::chunked::ChunkDecoder;
use super::codec::Framing;
use super::conn::H1Conn;
use super::io::{Io, Prefixed};
use super::send::{Outgoing, Pending};
use super::{H1Error, buffers};

/// Where the body stands.
#[derive(Debug)]
enum Reader {
    /// No body at all (`HEAD`, `204`, `304`, `1xx`): its length is not known to be 0, as any
    /// `Content-Length` the head has speaks of another answer.
    None,
    Length(u64),
    Chunked(ChunkDecoder),
    UntilClose,
    Done,
}

impl Reader {
    /// The next data in `buf`, consuming framing; `None` when `buf` has none to give.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, H1Error> {
        let data = match self {
            Reader::Length(left) => {
                let take = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
                *left -= take as u64;
                (take > 0).then(|| buf.split_to(take).freeze())
            }
            Reader::Chunked(decoder) => {
                let data = decoder
                    .decode(buf)
                    .map_err(|e| H1Error::Invalid(e.reason()))?;
                // The last chunk often comes with the data before it: the body ends now. An error
                // here is met again (and returned) by the next read.
                let _ = decoder.framing(buf);
                data
            }
            Reader::UntilClose => (!buf.is_empty()).then(|| buf.split().freeze()),
            Reader::None | Reader::Done => None,
        };
        if matches!(self, Reader::Length(0))
            || matches!(self, Reader::Chunked(decoder) if decoder.is_done())
        {
            *self = Reader::Done;
        }
        Ok(data)
    }
}

/// A response body read from an upstream connection by whoever polls it.
#[derive(Debug)]
pub struct H1Body {
    conn: Option<H1Conn>,
    reader: Reader,
    /// The head allowed another exchange on the connection, and nothing has ruled it out since.
    reusable: bool,
    /// The rest of the request body, for a backend that answered before it had all of it.
    /// Boxed: that is rare, and inline it would add 200 bytes to every open stream.
    outgoing: Option<Box<(Outgoing, Pending)>>,
}

impl H1Body {
    pub(super) fn new(
        conn: H1Conn,
        framing: Framing,
        reusable: bool,
        (outgoing, out): (Option<Outgoing>, Pending),
    ) -> H1Body {
        let reader = match framing {
            Framing::Empty => Reader::None,
            Framing::Length(0) => Reader::Done,
            Framing::Length(length) => Reader::Length(length),
            Framing::Chunked => Reader::Chunked(ChunkDecoder::default()),
            Framing::UntilClose => Reader::UntilClose,
        };
        let outgoing = (outgoing.is_some() || !out.is_empty())
            .then(|| Box::new((outgoing.unwrap_or_else(Outgoing::finished), out)));
        let mut body = H1Body {
            conn: Some(conn),
            reader,
            reusable,
            outgoing,
        };
        if let (Reader::Chunked(decoder), Some(conn)) = (&mut body.reader, body.conn.as_mut()) {
            // The whole body may have come with the head (an error is met again by the read).
            let _ = decoder.framing(&mut conn.buf);
            if decoder.is_done() {
                body.reader = Reader::Done;
            }
        }
        body
    }

    /// The connection, once the body was read to its end, for the next request; `None` when it
    /// cannot serve one (framing or `Connection: close` said so, or the request body was not
    /// all sent, or the backend sent more than it framed).
    pub fn into_reusable(mut self) -> Option<H1Conn> {
        self.take_reusable()
    }

    /// Like [`H1Body::into_reusable`], leaving a body that yields nothing more.
    pub fn take_reusable(&mut self) -> Option<H1Conn> {
        let done = matches!(self.reader, Reader::Done | Reader::None);
        let mut conn = self.conn.take()?;
        let clean = done && self.reusable && self.outgoing.is_none() && conn.buf.is_empty();
        buffers::release(&mut conn.buf);
        clean.then(|| {
            conn.mark_reused();
            conn
        })
    }

    /// The connection of a `101` answer, as a byte stream for the tunnel.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        let (io, read_ahead) = self.conn.take()?.into_parts();
        Some(Prefixed::new(read_ahead, io))
    }

    /// Sends more of the request body if it is waiting; a failure only stops the sending.
    fn poll_outgoing(&mut self, cx: &mut Context<'_>) {
        let (Some(sending), Some(conn)) = (self.outgoing.as_mut(), self.conn.as_mut()) else {
            return;
        };
        let (outgoing, out) = &mut **sending;
        match outgoing.poll_send(&mut conn.io, out, cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => self.outgoing = None,
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "request body not sent to the end");
                self.outgoing = None;
                self.reusable = false;
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        this.poll_outgoing(cx);
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = this.reader.decode(&mut conn.buf);
            buffers::release(&mut conn.buf);
            match decoded {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if matches!(this.reader, Reader::Done | Reader::None) => {
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => return Poll::Ready(Some(Err(this.broken(error)))),
            }
            match ready!(conn.io.poll_fill(cx, &mut conn.buf)) {
                Ok(0) if matches!(this.reader, Reader::UntilClose) => {
                    this.reader = Reader::Done;
                    this.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(this.broken(H1Error::Closed)))),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(this.broken(H1Error::Io(error))))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reader, Reader::Done | Reader::None)
    }

    fn size_hint(&self) -> SizeHint {
        match self.reader {
            Reader::Done => SizeHint::with_exact(0),
            Reader::Length(left) => SizeHint::with_exact(left),
            Reader::None | Reader::Chunked(_) | Reader::UntilClose => SizeHint::default(),
        }
    }
}

impl H1Body {
    /// The body cannot go on: the connection is closed now.
    fn broken(&mut self, error: H1Error) -> H1Error {
        self.conn = None;
        self.reusable = false;
        self.outgoing = None;
        error
    }
}

/// The connection after a `101`: what was read past the head comes first.
pub type Upgraded = Prefixed<Io>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::upstream::body::RequestBody;
    use crate::upstream::h1::Outbound;

    /// A connection to a socket the test plays the backend on, and the response head sent on it.
    async fn stream_from(head: &[u8]) -> (H1Body, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut backend, _) = listener.accept().await.unwrap();
        let request = http::Request::get("/sse")
            .body(RequestBody::empty())
            .unwrap();
        let sent = tokio::spawn(H1Conn::new(Io::Plain(client)).send(Outbound::boxed(request)));
        let mut seen = Vec::new();
        while !seen.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            backend.read_exact(&mut byte).await.unwrap();
            seen.push(byte[0]);
        }
        assert!(seen.starts_with(b"GET /sse HTTP/1.1\r\n"));
        backend.write_all(head).await.unwrap();
        let response = sent.await.unwrap().unwrap();
        (response.into_body(), backend)
    }

    fn held(body: &H1Body) -> usize {
        body.conn.as_ref().map_or(0, |c| c.buf.capacity())
    }

    #[tokio::test]
    async fn an_open_stream_holds_no_read_buffer_between_events() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     transfer-encoding: chunked\r\n\r\n";
        let (mut body, mut backend) = stream_from(head).await;
        assert_eq!(held(&body), 0, "after the head");
        for (wire, data) in [
            (&b"9\r\ndata: 1\n\n\r\n"[..], &b"data: 1\n\n"[..]),
            (b"9\r\ndata", b"data"),
            (b": 2\n\n\r\n", b": 2\n\n"),
        ] {
            backend.write_all(wire).await.unwrap();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), data);
            assert_eq!(held(&body), 0, "between events");
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(held(&body), 0, "while waiting");
        backend.write_all(b"0\r\n\r\n").await.unwrap();
        assert!(body.frame().await.is_none());
        assert!(body.into_reusable().is_some());
    }
}
