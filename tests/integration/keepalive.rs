//! Idle keep-alive connections park: a connection that has had no request for a second leaves
//! hyper and holds only its socket, and its next request (plain, over TLS, or a WebSocket
//! upgrade) wakes it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;
use crate::tls::{localhost_tls_proxy, tls_connect};

/// A connection parks a second after its last answer; this leaves room for a loaded machine.
const PARKS_WITHIN: Duration = Duration::from_secs(10);

async fn parked_count_is(proxy: &TestProxy, count: i64, what: &str) {
    let parked = &proxy.state.metrics.connections_parked;
    eventually(what, PARKS_WITHIN, async || {
        (parked.get() == count).then_some(())
    })
    .await;
}

/// Sends `request` and reads one answer with a `Content-Length` body: its head and its body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> (String, String) {
    stream.write_all(request).await.unwrap();
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut next = async |stream: &mut S, read: &mut Vec<u8>| {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(read));
        read.extend_from_slice(&chunk[..n]);
    };
    let end = loop {
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        next(stream, &mut read).await;
    };
    let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    while read.len() < end + length {
        next(stream, &mut read).await;
    }
    let body = String::from_utf8_lossy(&read[end..end + length]).into_owned();
    (head, body)
}

const NAME: &[u8] = b"GET /name HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// The body of the first request was read to its end by the backend, so the connection parks;
/// a request wakes it and it parks again; a WebSocket upgrade on the parked connection still
/// gets its socket.
#[tokio::test]
async fn an_idle_connection_parks_after_a_post_and_its_next_request_wakes_it() {
    let backend = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", "")).await;
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    let post = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 7\r\n\r\nparked?";
    let (head, body) = exchange(&mut stream, post).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "parked?");
    parked_count_is(&proxy, 1, "the connection parks").await;

    let (head, body) = exchange(&mut stream, NAME).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(body, "b1");
    assert_eq!(proxy.state.metrics.connections_parked.get(), 0);
    parked_count_is(&proxy, 1, "the connection parks again").await;

    let upgrade =
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(upgrade).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream.write_all(b"through the tunnel").await.unwrap();
    let mut echo = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&echo, b"through the tunnel");
    assert_eq!(proxy.state.metrics.connections_parked.get(), 0);
}

/// A TLS connection parks as a plain one does (rustls keeps its state; hyper's buffers go).
#[tokio::test]
async fn a_tls_connection_parks_and_its_next_request_wakes_it() {
    let (pki, _backend, proxy) = localhost_tls_proxy("parking").await;
    let config = pki.client_config(&[b"http/1.1"]);
    let mut stream = tls_connect(proxy.address, "localhost", config)
        .await
        .unwrap();
    assert_eq!(exchange(&mut stream, NAME).await.1, "b1");
    parked_count_is(&proxy, 1, "the TLS connection parks").await;
    assert_eq!(exchange(&mut stream, NAME).await.1, "b1");
    assert_eq!(proxy.state.metrics.connections_parked.get(), 0);
    drop(stream);
}

/// A parked connection the client closes is no longer counted.
#[tokio::test]
async fn a_parked_connection_the_client_closes_is_let_go() {
    let backend = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", "")).await;
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    assert_eq!(exchange(&mut stream, NAME).await.1, "b1");
    parked_count_is(&proxy, 1, "the connection parks").await;
    drop(stream);
    parked_count_is(&proxy, 0, "the closed connection is let go").await;
    let open = &proxy.state.metrics.connections_open;
    eventually("the connection is closed", PARKS_WITHIN, async || {
        (open.get() == 0).then_some(())
    })
    .await;
}
