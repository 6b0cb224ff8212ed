//! A connection to a backend and one exchange on it, up to the response head: the head goes
//! out, the client's body follows as it comes, and the response head is read meanwhile (a
//! backend may answer before it has the whole body). Interim `1xx` answers are skipped; a `101`
//! ends the exchange when the request asked for an upgrade.

use std::future::poll_fn;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;

use super::body::H1Body;
use super::codec::{
    AddedFields, RequestFraming, ResponseHead, encode_head, parse_head, parse_head_reusing,
};
use super::io::Io;
use super::send::{Outgoing, Pending};
use super::{H1Error, buffers};
use crate::upstream::body::RequestBody;

/// An HTTP/1.1 connection between exchanges: a socket and, only while a response is being
/// read, the bytes read ahead of it.
pub struct H1Conn {
    pub(super) io: Io,
    pub(super) buf: BytesMut,
    /// It served an exchange before: the backend may have closed it meanwhile.
    reused: bool,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("tls", &matches!(self.io, Io::Tls(_)))
            .field("buffered", &self.buf.len())
            .finish()
    }
}

/// A request on its way to a backend: the client's request as the proxy rewrote it, and the
/// fields the proxy adds to it, written after the request's own.
#[derive(Debug)]
pub struct Outbound {
    pub request: Request<RequestBody>,
    pub added: AddedFields,
}

impl Outbound {
    /// `request` with nothing added (health probes, key fetches).
    pub fn boxed(request: Request<RequestBody>) -> Box<Outbound> {
        Box::new(Outbound {
            request,
            added: AddedFields::default(),
        })
    }
}

/// Why an exchange brought no response head; `unsent` gives the request back when the backend
/// cannot have seen it.
#[derive(Debug)]
pub struct SendError {
    pub error: H1Error,
    pub unsent: Option<Box<Outbound>>,
}

impl H1Conn {
    pub fn new(io: Io) -> H1Conn {
        H1Conn {
            io,
            buf: BytesMut::new(),
            reused: false,
        }
    }

    /// A parked connection that cannot serve a request: closed, reset, or sent unasked bytes.
    pub fn is_stale(&mut self) -> bool {
        !self.buf.is_empty() || self.io.is_stale()
    }

    pub(super) fn mark_reused(&mut self) {
        self.reused = true;
    }

    /// The connection as a byte stream, with what was read past the response head.
    pub(super) fn into_parts(self) -> (Io, Bytes) {
        (self.io, self.buf.freeze())
    }

    /// Sends `request` and reads its response head; the body reads on from the same connection.
    pub async fn send(self, outbound: Box<Outbound>) -> Result<Response<H1Body>, SendError> {
        let Outbound { request, added } = *outbound;
        let (mut parts, body) = request.into_parts();
        let framing = framing_of(&body);
        let head = Bytes::from(encode_head(&parts, &added, framing));
        let upgrade = parts.headers.contains_key(http::header::UPGRADE);
        let (outgoing, bodiless) = match framing {
            RequestFraming::Empty => (None, Some(body)),
            _ => (
                Some(Outgoing::new(body, framing == RequestFraming::Chunked)),
                None,
            ),
        };
        let mut exchange = Exchange {
            conn: self,
            out: Pending::default(),
            outgoing,
            bodiless,
            write_error: None,
            read_any: false,
            upgrade,
            method: parts.method.clone(),
        };
        exchange.out.push(head);
        match poll_fn(|cx| exchange.poll_head(cx, &mut parts.headers)).await {
            Ok(head) => Ok(exchange.into_response(head)),
            Err(error) => {
                let unsent = exchange.unsent().map(|body| {
                    Box::new(Outbound {
                        request: Request::from_parts(parts, body),
                        added,
                    })
                });
                Err(SendError { error, unsent })
            }
        }
    }
}

/// The framing the client's body gets: its length when known, else chunks.
fn framing_of(body: &RequestBody) -> RequestFraming {
    if body.is_end_stream() {
        return RequestFraming::Empty;
    }
    match body.size_hint().exact() {
        Some(length) => RequestFraming::Length(length),
        None => RequestFraming::Chunked,
    }
}

struct Exchange {
    conn: H1Conn,
    out: Pending,
    /// The body still to send; `None` once sent.
    outgoing: Option<Outgoing>,
    /// The request's empty body, kept to give the request back.
    bodiless: Option<RequestBody>,
    /// Writing failed: the response may still come (a backend may answer and close early).
    write_error: Option<H1Error>,
    read_any: bool,
    upgrade: bool,
    method: Method,
}

impl Exchange {
    /// The head is parsed into `request_headers`' map once the backend has sent something:
    /// from then on the request cannot go to another connection (`unsent`), so its head is
    /// not needed again.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        request_headers: &mut HeaderMap,
    ) -> Poll<Result<ResponseHead, H1Error>> {
        if let Poll::Ready(Err(error)) = self.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        loop {
            let parsed = if self.conn.buf.is_empty() {
                None
            } else if self.read_any {
                parse_head_reusing(&self.conn.buf, &self.method, request_headers)
                    .map_err(H1Error::Invalid)?
            } else {
                parse_head(&self.conn.buf, &self.method).map_err(H1Error::Invalid)?
            };
            if let Some((head, length)) = parsed {
                self.conn.buf.advance(length);
                if let Some(head) = self.final_head(head)? {
                    return Poll::Ready(Ok(head));
                }
                continue;
            }
            match self.conn.io.poll_fill(cx, &mut self.conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    let error = self.write_error.take().unwrap_or(H1Error::Closed);
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(_)) => self.read_any = true,
                Poll::Ready(Err(error)) => {
                    let error = self.write_error.take().unwrap_or(H1Error::Io(error));
                    return Poll::Ready(Err(error));
                }
            }
        }
    }

    /// `None` for an interim answer to skip; an error for a `101` nobody asked for.
    fn final_head(&self, head: ResponseHead) -> Result<Option<ResponseHead>, H1Error> {
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return if self.upgrade {
                Ok(Some(head))
            } else {
                Err(H1Error::Invalid("101 without an upgrade"))
            };
        }
        Ok((!head.status.is_informational()).then_some(head))
    }

    /// Writes what there is to write. A failed write stops the sending (an error of the
    /// client's body ends the exchange); the response may still come.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        if self.write_error.is_some() {
            return Poll::Pending;
        }
        let sent = match &mut self.outgoing {
            Some(outgoing) => outgoing.poll_send(&mut self.conn.io, &mut self.out, cx),
            None => self
                .out
                .poll_write(&mut self.conn.io, cx)
                .map_err(H1Error::Io),
        };
        match sent {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                self.outgoing = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(H1Error::Body(error))) => Poll::Ready(Err(H1Error::Body(error))),
            Poll::Ready(Err(error)) => {
                self.write_error = Some(error);
                Poll::Pending
            }
        }
    }

    /// The body of a request that may go to another connection: an idempotent one without a
    /// body, on a reused connection the backend ended before any answer (it closed it as the
    /// request went out, RFC 9112 section 9.3.1).
    fn unsent(&mut self) -> Option<RequestBody> {
        let idempotent = matches!(
            self.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        if !idempotent || !self.conn.reused || self.read_any {
            return None;
        }
        self.bodiless.take()
    }

    fn into_response(self, head: ResponseHead) -> Response<H1Body> {
        let mut conn = self.conn;
        buffers::release(&mut conn.buf);
        let reusable = head.keep_alive && self.write_error.is_none();
        let mut response = Response::new(H1Body::new(
            conn,
            head.framing,
            reusable,
            (self.outgoing, self.out),
        ));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        response
    }
}
