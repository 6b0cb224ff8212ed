//! Our own HTTP/1.1 client for proxied exchanges. hyper's client connection keeps its read and
//! write buffers (and a task) for as long as the connection lives, which an open SSE stream
//! makes hours; here a connection holds a socket and nothing else between reads: a buffer is
//! lent for each read and given back once its bytes have passed on as `Bytes`, writes go out
//! from the caller's own `Bytes`, and the request's task drives it all (no task per connection).
//!
//! - [`codec`]: request heads written, response heads parsed (`httparse`), body framing;
//! - [`chunked`]: the strict chunked decoder;
//! - [`send`]: the request head and body on their way out;
//! - [`conn`]: a connection and one exchange on it, up to the response head;
//! - [`body`]: the response body, read to its framed end, and the hand-over of an upgrade;
//! - [`buffers`]: the read buffers lent out; [`io`]: plain TCP or TLS.

pub mod body;
pub mod buffers;
pub mod chunked;
pub mod codec;
pub mod conn;
pub mod io;
pub mod send;

pub use body::{H1Body, Upgraded};
pub use conn::{H1Conn, Outbound, SendError};

use crate::upstream::body::BodyError;

/// Why an exchange on an upstream connection failed after its head was written, or why the
/// response body broke.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the backend closed the connection before the response was complete")]
    Closed,
    #[error("the request body failed: {0}")]
    Body(#[source] BodyError),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}
