//! The request on its way out: the head in one write, then the client's body frame by frame,
//! written straight from its `Bytes` (chunk framing in the same vectored write), never copied
//! into a buffer of ours.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::H1Error;
use super::io::Io;
use crate::upstream::body::RequestBody;

/// Pieces queued before a write (a chunk is three: size line, data, line end).
const GATHERED: usize = 8;

/// Bytes queued for the wire (the head, a chunk with its framing), written in order.
#[derive(Debug, Default)]
pub struct Pending(VecDeque<Bytes>);

impl Pending {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.0.push_back(bytes);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Writes until everything went or the socket is full; then flushes (TLS holds records).
    pub fn poll_write(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.0.is_empty() {
            let mut slices = [IoSlice::new(&[]); GATHERED + 3];
            let mut count = 0;
            for (slot, bytes) in slices.iter_mut().zip(&self.0) {
                *slot = IoSlice::new(bytes);
                count += 1;
            }
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        Pin::new(io).poll_flush(cx)
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.0.front_mut() else {
                return;
            };
            let step = written.min(front.len());
            front.advance(step);
            written -= step;
            if front.is_empty() {
                self.0.pop_front();
            }
        }
    }
}

/// The client's body, still to be sent.
#[derive(Debug)]
pub struct Outgoing {
    body: RequestBody,
    chunked: bool,
    /// The body ended and its last bytes (the last chunk) are queued.
    ended: bool,
}

impl Outgoing {
    pub fn new(body: RequestBody, chunked: bool) -> Outgoing {
        Outgoing {
            body,
            chunked,
            ended: false,
        }
    }

    /// Nothing more to send but what is already queued.
    pub fn finished() -> Outgoing {
        Outgoing {
            body: RequestBody::empty(),
            chunked: false,
            ended: true,
        }
    }

    /// Sends what the body has: `Ready(Ok)` once all of it is on the wire. What is ready is
    /// gathered first, so a head and a body that came whole leave in one write (one segment
    /// for the backend to read, not two).
    pub fn poll_send(
        &mut self,
        io: &mut Io,
        out: &mut Pending,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), H1Error>> {
        loop {
            let waiting = self.gather(out, cx)?;
            if out.is_empty() {
                return if self.ended {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            ready!(out.poll_write(io, cx))?;
            if waiting && !self.ended {
                return Poll::Pending;
            }
        }
    }

    /// Queues the frames the body has ready (a few writes' worth); true when it has no more yet.
    fn gather(&mut self, out: &mut Pending, cx: &mut Context<'_>) -> Result<bool, H1Error> {
        while !self.ended && out.len() < GATHERED {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Ok(true),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.queue(data, out);
                    }
                }
                Poll::Ready(Some(Err(error))) => return Err(H1Error::Body(error)),
                Poll::Ready(None) => {
                    self.ended = true;
                    if self.chunked {
                        out.push(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
            }
        }
        Ok(false)
    }

    fn queue(&self, data: Bytes, out: &mut Pending) {
        if data.is_empty() {
            return;
        }
        if self.chunked {
            out.push(Bytes::from(format!("{:x}\r\n", data.len())));
            out.push(data);
            out.push(Bytes::from_static(b"\r\n"));
        } else {
            out.push(data);
        }
    }
}
