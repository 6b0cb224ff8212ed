//! Long SSE streams leave hyper once their head is known, so an open stream holds no buffers.
//!
//! hyper's HTTP/1 server keeps a read buffer, a write buffer and the connection's task for as
//! long as the connection lives; for a stream that sends a few bytes a minute for hours, those
//! are nearly all of its memory. So a stream that can only end the connection anyway — a `GET`
//! without a body, over HTTP/1.1 (in clear or over TLS), answered `200` with `text/event-stream`
//! from a backend — is taken over: the handler hands the shaped response to [`super::serve`],
//! which takes the socket back from hyper ([`super::version::Connection::take_socket`]: hyper
//! has written nothing of this response, and every earlier one is flushed before hyper reads the
//! next request), drops hyper's connection (its buffers and task go with it) and spawns
//! [`pump`]. The pump writes the head and the body in chunked encoding straight from the body's
//! frames, keeps nothing between events, and notices a client that leaves by a read that ends,
//! made into a buffer on the stack. The response carries `Connection: close`: after the stream
//! the connection ends, as it would with hyper once a client gives up on an endless stream.
//!
//! What is not taken over keeps hyper: HTTP/2, requests with a body (hyper may still be reading
//! it), and anything that is not an event stream. Over TLS, rustls' own state stays with the
//! stream. A client that pipelines requests behind a stream loses them (the connection closes
//! after the stream); HTTP clients in use do not pipeline.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http::{Method, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

use super::body::ResponseBody;
use crate::upstream::h1::codec::write_fields;

/// A response handed to its connection to be sent without hyper.
pub type Taken = Response<ResponseBody>;

/// Offered by an HTTP/1 connection to its requests: where an endless stream's response goes.
pub struct Offer {
    to_connection: Mutex<Option<oneshot::Sender<Taken>>>,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Offer")
    }
}

impl Offer {
    pub fn new() -> (Offer, oneshot::Receiver<Taken>) {
        let (sender, receiver) = oneshot::channel();
        let offer = Offer {
            to_connection: Mutex::new(Some(sender)),
        };
        (offer, receiver)
    }

    /// Hands `response` to the connection if it qualifies; otherwise gives it back. Never
    /// returns once handed over: the connection drops this request's future with hyper's.
    pub async fn take_or_keep(
        &self,
        request: Eligible,
        response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if !request.0 || !is_endless_stream(&response) {
            return response;
        }
        let Some(sender) = self.to_connection.lock().ok().and_then(|mut s| s.take()) else {
            return response;
        };
        if let Err(response) = sender.send(response) {
            return response;
        }
        std::future::pending().await
    }
}

/// Whether the request allows its response to be taken over, read before the request is sent
/// on (its head is gone by the time the response comes).
#[derive(Debug, Clone, Copy)]
pub struct Eligible(bool);

impl Eligible {
    pub fn of<B: http_body::Body>(request: &http::Request<B>) -> Eligible {
        Eligible(
            request.method() == Method::GET
                && request.version() == Version::HTTP_11
                && request.body().is_end_stream(),
        )
    }
}

fn is_endless_stream(response: &Response<ResponseBody>) -> bool {
    response.status() == StatusCode::OK
        && matches!(response.body(), ResponseBody::Upstream(_))
        && !response.headers().contains_key(header::CONTENT_LENGTH)
        && super::respond::is_event_stream(response.headers())
}

/// Sends a taken-over response on `stream` to its end, or until the client leaves. The response
/// is taken apart before the stream's future exists: that future lives as long as the stream,
/// and would otherwise keep room for the whole response (head and header map) next to what it
/// sends. `open` (what counts the connection as open) is dropped when the stream ends.
pub fn pump<S, Open>(stream: S, taken: Taken, open: Open) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Open: Send + 'static,
{
    let (parts, body) = taken.into_parts();
    let head = head(&parts);
    drop(parts);
    send_stream(stream, head, body, open)
}

async fn send_stream<S: AsyncRead + AsyncWrite + Unpin, Open>(
    mut stream: S,
    head: Vec<u8>,
    mut body: ResponseBody,
    // Held, not used: an argument lives as long as the future.
    _open: Open,
) {
    if let Err(error) = write_flushed(&mut stream, &head).await {
        tracing::debug!(%error, "client left before the stream's head was sent");
        return;
    }
    drop(head);
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if let Err(error) = write_chunk(&mut stream, data).await {
                        tracing::debug!(%error, "client left during a stream");
                        return;
                    }
                }
                // The body already ended the stream its way (counted, logged); the client sees
                // a chunked body without its last chunk, as with hyper.
                Some(Err(_)) => return,
                None => {
                    let _ = write_flushed(&mut stream, b"0\r\n\r\n").await;
                    let _ = stream.shutdown().await;
                    return;
                }
            },
            () = client_left(&mut stream) => return,
        }
    }
}

async fn write_flushed<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    // TLS: what rustls holds goes out now, not with the next event.
    stream.flush().await
}

/// Resolves when the client has closed (or broken) the connection. What it sends meanwhile
/// (nothing is expected) is read and dropped, into scratch space on the stack of each poll, not
/// in the stream's future.
async fn client_left<S: AsyncRead + Unpin>(stream: &mut S) {
    std::future::poll_fn(|cx| poll_client_left(Pin::new(&mut *stream), cx)).await;
}

fn poll_client_left<S: AsyncRead>(mut stream: Pin<&mut S>, cx: &mut Context<'_>) -> Poll<()> {
    let mut scratch = [0u8; 512];
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        match stream.as_mut().poll_read(cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
            Poll::Ready(_) => return Poll::Ready(()),
        }
    }
}

/// The response head as hyper would write it, with the framing this connection uses.
fn head(parts: &http::response::Parts) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    write_fields(&mut head, &parts.headers, |name| {
        name == header::CONNECTION || name == header::TRANSFER_ENCODING
    });
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    head
}

/// One chunk: its size line, the data and the CRLF, in as few writes as the socket allows and
/// without copying the data.
async fn write_chunk<S: AsyncWrite + Unpin>(stream: &mut S, data: Bytes) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let (size, size_len) = chunk_size_line(data.len());
    let mut slices = [
        IoSlice::new(&size[..size_len]),
        IoSlice::new(&data),
        IoSlice::new(b"\r\n"),
    ];
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    while !remaining.is_empty() {
        let written = stream.write_vectored(remaining).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut remaining, written);
    }
    stream.flush().await
}

/// `len` in hex and CRLF, on the stack: an event costs no allocation.
fn chunk_size_line(len: usize) -> ([u8; 18], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = [0u8; 18];
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in line[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = HEX[(len >> shift) & 0xf];
    }
    line[digits] = b'\r';
    line[digits + 1] = b'\n';
    (line, digits + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_chunked_and_closes() {
        let response = Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("transfer-encoding", "chunked")
            .header("connection", "keep-alive")
            .header("date", "Mon, 30 Nov 2026 09:00:00 GMT")
            .body(())
            .unwrap();
        let (parts, ()) = response.into_parts();
        let head = String::from_utf8(head(&parts)).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
             date: Mon, 30 Nov 2026 09:00:00 GMT\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn event_streams_are_known_whatever_the_case() {
        let of = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(value));
            super::super::respond::is_event_stream(&headers)
        };
        assert!(of("text/event-stream"));
        assert!(of(" Text/Event-Stream; charset=utf-8"));
        assert!(!of("text/event"));
        assert!(!of("application/json"));
        assert!(!super::super::respond::is_event_stream(
            &http::HeaderMap::new()
        ));
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for len in [0, 1, 15, 16, 255, 4096, 65536, usize::MAX] {
            let (line, used) = chunk_size_line(len);
            assert_eq!(line[..used], *format!("{len:x}\r\n").as_bytes(), "{len}");
        }
    }

    #[test]
    fn only_get_over_http11_without_a_body_qualifies() {
        let get = http::Request::get("/sse").body(http_body_util::Empty::<Bytes>::new());
        assert!(Eligible::of(&get.unwrap()).0);
        let post = http::Request::post("/mcp").body(http_body_util::Full::new(Bytes::from("x")));
        assert!(!Eligible::of(&post.unwrap()).0);
        let old = http::Request::get("/sse")
            .version(Version::HTTP_10)
            .body(http_body_util::Empty::<Bytes>::new());
        assert!(!Eligible::of(&old.unwrap()).0);
        let h2 = http::Request::get("/sse")
            .version(Version::HTTP_2)
            .body(http_body_util::Empty::<Bytes>::new());
        assert!(!Eligible::of(&h2.unwrap()).0);
    }
}
