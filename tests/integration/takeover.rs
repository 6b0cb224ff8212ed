//! Endless SSE streams leave hyper once their head is known (`proxy::takeover`), in clear or over
//! TLS: the stream is written in chunked encoding by a task of its own and ends with its
//! connection. Raw sockets,
//! because what is checked is the bytes on the wire and when the connection closes.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ops::{scrape, total};
use crate::support::*;
use crate::tls::{localhost_tls_proxy, tls_connect};

async fn connect(proxy: &TestProxy) -> TcpStream {
    TcpStream::connect(proxy.address).await.unwrap()
}

/// Reads until the peer closes, within a deadline.
async fn read_to_close<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the connection closed in time")
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// The body of a chunked message, checking every size line.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a size line");
        let size = usize::from_str_radix(size, 16).expect("a hex size");
        if size == 0 {
            assert_eq!(rest, "\r\n", "the last chunk ends the message");
            return out;
        }
        out.push_str(&rest[..size]);
        assert_eq!(&rest[size..size + 2], "\r\n");
        body = &rest[size + 2..];
    }
}

async fn open_connections(proxy: &TestProxy) -> f64 {
    total(&scrape(proxy).await, "switchyard_connections_open", &[])
}

#[tokio::test]
async fn an_event_stream_is_sent_chunked_and_ends_with_its_connection() {
    let backend = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", "")).await;
    let mut stream = connect(&proxy).await;
    let request = "GET /ticks?every_ms=20&count=3 HTTP/1.1\r\nhost: example\r\n\
                   accept: text/event-stream\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "connection: close",
        "date: ",
        "x-request-id: ",
    ] {
        assert!(head.contains(line), "{line:?} in {head}");
    }
    let events = dechunk(body);
    assert_eq!(events.matches("id: ").count(), 3, "{events:?}");
    eventually(
        "the connection is no longer counted open",
        Duration::from_secs(5),
        async || (open_connections(&proxy).await == 0.0).then_some(()),
    )
    .await;
}

#[tokio::test]
async fn a_stream_after_a_keep_alive_request_is_taken_over_too() {
    let backend = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", "")).await;
    let mut stream = connect(&proxy).await;
    let first = "GET /drip?every_ms=1&count=2 HTTP/1.1\r\nhost: example\r\n\r\n\
                 GET /ticks?every_ms=10&count=2 HTTP/1.1\r\nhost: example\r\n\r\n";
    stream.write_all(first.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    let (_, stream_part) = answer.rsplit_once("HTTP/1.1 200 OK").unwrap();
    let (head, body) = stream_part.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(dechunk(body).matches("id: ").count(), 2);
}

#[tokio::test]
async fn a_client_leaving_a_taken_stream_ends_it_at_the_backend() {
    let backend = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", "")).await;
    let mut stream = connect(&proxy).await;
    let request = "GET /ticks?every_ms=20&count=100000 HTTP/1.1\r\nhost: example\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 256];
    let read = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).contains("connection: close"));
    let streams = async || {
        total(
            &scrape(&proxy).await,
            "switchyard_backend_open_streams",
            &[],
        )
    };
    assert_eq!(streams().await, 1.0, "the stream is open at the backend");
    drop(stream);
    eventually(
        "the stream and the connection are gone",
        Duration::from_secs(5),
        async || (streams().await == 0.0 && open_connections(&proxy).await == 0.0).then_some(()),
    )
    .await;
}

async fn open_streams(proxy: &TestProxy) -> f64 {
    total(&scrape(proxy).await, "switchyard_backend_open_streams", &[])
}

/// Over TLS too: the socket is taken from hyper with rustls' state, the stream is written
/// chunked and ends with `close_notify`; a client that leaves ends it at the backend.
#[tokio::test]
async fn an_event_stream_over_tls_is_taken_over_and_a_client_leaving_ends_it() {
    let (pki, _backend, proxy) = localhost_tls_proxy("takeover").await;
    let config = pki.client_config(&[b"http/1.1"]);
    let mut stream = tls_connect(proxy.address, "localhost", config.clone())
        .await
        .unwrap();
    let request = "GET /ticks?every_ms=20&count=3 HTTP/1.1\r\nhost: localhost\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(dechunk(body).matches("id: ").count(), 3, "{body:?}");

    let mut stream = tls_connect(proxy.address, "localhost", config)
        .await
        .unwrap();
    let request = "GET /ticks?every_ms=20&count=100000 HTTP/1.1\r\nhost: localhost\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 256];
    let read = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).contains("connection: close"));
    assert_eq!(
        open_streams(&proxy).await,
        1.0,
        "the stream is open at the backend"
    );
    drop(stream);
    eventually(
        "the stream and the connection are gone",
        Duration::from_secs(5),
        async || {
            let gone = open_streams(&proxy).await == 0.0 && open_connections(&proxy).await == 0.0;
            gone.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn http10_and_bodies_stay_with_hyper() {
    let backend = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", "")).await;
    let mut stream = connect(&proxy).await;
    let request = "GET /ticks?every_ms=10&count=2 HTTP/1.0\r\nhost: example\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(!head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(body.matches("id: ").count(), 2, "{body}");
}
