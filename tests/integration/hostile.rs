//! Clients that try to hold the proxy hostage: connections that never send a request (after a
//! PROXY header, a TLS handshake or part of the HTTP/2 preface too), partial heads on the admin
//! listener, request bodies that stall, and clients refused at the connection limit that must
//! still get to read their `503`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::tls::{Pki, tls_connect, tls_line};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `[limits] header_read_timeout` of these tests.
const HEADER_TIMEOUT: Duration = Duration::from_millis(400);
/// How late a close may come: timers and scheduling on a loaded 2-core test machine.
const SLACK: Duration = Duration::from_secs(3);

fn header_timeout(extra: &str) -> String {
    format!("[limits]\nheader_read_timeout = \"400ms\"\n{extra}\n")
}

/// `config_for` with extra keys on its (first) client listener.
fn with_listener(config: String, keys: &str) -> String {
    config.replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!("bind = \"127.0.0.1:0\"\n{keys}\n"),
        1,
    )
}

/// Reads (and discards) until the server closes `stream`, by EOF or reset: how long that took,
/// or `None` if it is still open at the header timeout plus slack.
async fn closed_after<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT + SLACK, closed)
        .await
        .ok()
        .map(|()| started.elapsed())
}

fn assert_closed_by_the_header_timeout(what: &str, closed: Option<Duration>) {
    let Some(after) = closed else {
        panic!("{what}: still open {SLACK:?} after the header timeout");
    };
    assert!(
        after >= HEADER_TIMEOUT / 2,
        "{what}: closed after {after:?}, before the header timeout"
    );
}

/// Sends raw bytes and reads until the server closes (within 5 s): what a client sees.
async fn exchange(address: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

const GET_NAME: &[u8] = b"GET /name HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

/// The HTTP/2 client preface and an empty SETTINGS frame: a connection that is HTTP/2 now.
const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

#[tokio::test]
async fn silent_connections_are_closed_at_the_header_timeout() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &header_timeout(""));
    let proxy = TestProxy::start(&config).await;

    let cases: [(&str, &[u8]); 4] = [
        ("nothing sent", b""),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        (
            "HTTP/2 preface and SETTINGS, no stream",
            H2_PREFACE_AND_SETTINGS,
        ),
        ("part of an HTTP/1 request line", b"GET /na"),
    ];
    let address = proxy.address;
    let runs = cases.map(|(what, bytes)| async move {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        (what, closed_after(&mut stream).await)
    });
    for (what, closed) in futures_util::future::join_all(runs).await {
        assert_closed_by_the_header_timeout(what, closed);
    }
    assert_eq!(get_text(&proxy.url("/name")).await, "b1");
}

/// Connections closed for sending no request at all are counted, so an operator sees scanners
/// and slowloris clients in the metrics (nginx logs them as 400/408); a served connection and an
/// idle keep-alive one after a request are not.
#[tokio::test]
async fn connections_that_send_no_request_are_counted() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &header_timeout(""));
    let proxy = TestProxy::start(&config).await;
    let no_request = || async {
        let samples = crate::ops::scrape(&proxy).await;
        crate::ops::total(
            &samples,
            "switchyard_client_errors_total",
            &[("reason", "no_request")],
        )
    };
    assert_eq!(no_request().await, 0.0);

    let mut served = TcpStream::connect(proxy.address).await.unwrap();
    served
        .write_all(b"GET /name HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let silent = [b"" as &[u8], b"PRI * HTTP/2.0\r\n"].map(|bytes| async move {
        let mut stream = TcpStream::connect(proxy.address).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        closed_after(&mut stream).await
    });
    for closed in futures_util::future::join_all(silent).await {
        assert_closed_by_the_header_timeout("a connection with no request", closed);
    }
    // The keep-alive connection, idle since its answer, is closed by the header timeout too.
    assert!(closed_after(&mut served).await.is_some());
    assert_eq!(no_request().await, 2.0);
}

/// Between requests the same bound holds: on a keep-alive connection, the next head must come
/// within the header timeout of the last answer (a slowloris head after a first request is cut),
/// while an answer that takes longer than that (the backend is slow) is still delivered.
#[tokio::test]
async fn after_a_first_request_the_next_head_has_the_header_timeout_too() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &header_timeout(""));
    let proxy = TestProxy::start(&config).await;

    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    // The backend answers after three header timeouts: the open request keeps the connection.
    stream
        .write_all(b"GET /slow?ms=1200 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).ends_with("slow") {
        let n = tokio::time::timeout(SLACK * 2, stream.read(&mut buf))
            .await
            .expect("the slow answer arrives")
            .unwrap();
        assert!(n > 0, "closed before the slow answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    stream.write_all(b"GET /na").await.unwrap();
    assert_closed_by_the_header_timeout("a partial second head", closed_after(&mut stream).await);
}

async fn h2_open(
    sender: h2::client::SendRequest<bytes::Bytes>,
    address: SocketAddr,
    path: &str,
) -> h2::RecvStream {
    let mut sender = sender.ready().await.unwrap();
    let request = http::Request::get(format!("http://{address}{path}"))
        .header("accept", "text/event-stream")
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body()
}

/// hyper keeps an HTTP/2 connection open for as long as the client answers its pings; the
/// proxy closes one that has had no open stream for the header timeout (as nginx's
/// `keepalive_timeout` does), and not while a stream is open. Failed before: the idle
/// connection stayed open.
#[tokio::test]
async fn idle_http2_connections_are_closed_but_not_while_a_stream_is_open() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &header_timeout(""));
    let proxy = TestProxy::start(&config).await;

    // The client keeps its handle: an h2 client closes a connection nothing can use any more.
    let (sender, ended) = h2c_connection(proxy.address).await;
    let mut body = h2_open(sender.clone(), proxy.address, "/name").await;
    assert_eq!(&body.data().await.unwrap().unwrap()[..], b"b1");
    drop(body);
    let answered = Instant::now();
    tokio::time::timeout(HEADER_TIMEOUT + SLACK, ended)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap();
    assert!(
        answered.elapsed() >= HEADER_TIMEOUT / 2,
        "{:?}",
        answered.elapsed()
    );

    let (sender, mut ended) = h2c_connection(proxy.address).await;
    let mut stream = h2_open(sender.clone(), proxy.address, "/sse").await;
    let first = stream.data().await.unwrap().unwrap();
    assert!(first.starts_with(b"event: endpoint"), "{first:?}");
    // Three header timeouts with the stream open: the connection stays.
    let open = tokio::time::timeout(HEADER_TIMEOUT * 3, &mut ended).await;
    assert!(open.is_err(), "closed while a stream was open");
    drop(stream);
    tokio::time::timeout(HEADER_TIMEOUT + SLACK, ended)
        .await
        .expect("closed once the stream ended and the connection sat idle")
        .unwrap();
    drop(sender);
}

#[tokio::test]
async fn after_a_proxy_header_a_silent_connection_is_closed_at_the_header_timeout() {
    let backend = TestBackend::start("b1").await;
    let config = with_listener(
        config_for(
            &[("blue", &[&backend])],
            "\"blue\"",
            &header_timeout("handshake_timeout = \"30s\""),
        ),
        "proxy_protocol = true",
    );
    let proxy = TestProxy::start(&config).await;

    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    stream
        .write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 50123 443\r\n")
        .await
        .unwrap();
    assert_closed_by_the_header_timeout("after a PROXY header", closed_after(&mut stream).await);
}

#[tokio::test]
async fn after_a_tls_handshake_a_silent_connection_is_closed_at_the_header_timeout() {
    let pki = Pki::new("hostile");
    let leaf = pki.leaf("localhost", &["localhost"]);
    let backend = TestBackend::start("b1").await;
    let config = with_listener(
        config_for(
            &[("blue", &[&backend])],
            "\"blue\"",
            &header_timeout("handshake_timeout = \"30s\""),
        ),
        &tls_line(&leaf),
    );
    let proxy = TestProxy::start(&config).await;

    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut stream = tls_connect(proxy.address, "localhost", pki.client_config(&[alpn]))
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        let what = format!("after a TLS handshake ({})", String::from_utf8_lossy(alpn));
        assert_closed_by_the_header_timeout(&what, closed_after(&mut stream).await);
    }
}

#[tokio::test]
async fn idle_connections_at_the_connection_limit_are_reclaimed() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(
        &[("blue", &[&backend])],
        "\"blue\"",
        &header_timeout("max_connections = 20"),
    );
    let proxy = TestProxy::start(&config).await;

    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(proxy.address).await.unwrap());
    }
    let refused = exchange(proxy.address, GET_NAME).await;
    assert!(
        refused.starts_with("HTTP/1.1 503"),
        "at the limit: {refused}"
    );

    // The idle connections are closed at the header timeout, which frees their slots.
    eventually("a request served", HEADER_TIMEOUT + SLACK, async || {
        let answer = exchange(proxy.address, GET_NAME).await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    for stream in &mut idle {
        assert!(closed_after(stream).await.is_some(), "closed by the proxy");
    }
}

#[tokio::test]
async fn admin_partial_heads_are_closed_and_capped_while_the_data_plane_serves() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &header_timeout("")).replacen(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        "[admin]\nbind = \"127.0.0.1:0\"\nmax_connections = 4\n",
        1,
    );
    let proxy = TestProxy::start(&config).await;
    let admin = proxy.admin.unwrap();

    let mut partial = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        stream
            .write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        partial.push(stream);
    }
    let over = exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        over.starts_with("HTTP/1.1 503"),
        "over the admin cap: {over}"
    );
    assert_eq!(get_text(&proxy.url("/name")).await, "b1");

    for stream in &mut partial {
        assert!(closed_after(stream).await.is_some(), "partial head closed");
    }
    eventually("admin answers again", SLACK, async || {
        let answer = exchange(
            admin,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}

/// A POST of `body` to `/echo` over a raw connection, `pieces` written `pause` apart, then the
/// answer as read until the server closes (or 5 s).
async fn post_in_pieces(
    address: SocketAddr,
    declared: usize,
    pieces: &[&[u8]],
    pause: Duration,
) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in pieces {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(pause).await;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_backend_is_not_blamed() {
    let backend = TestBackend::start("b1").await;
    let extra = "[timeouts]\nclient_body = \"400ms\"\n\n[health]\nmax_fails = 1\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", extra)).await;

    // A body that keeps coming, a byte every 100 ms for longer than the timeout, is never idle
    // that long: it arrives whole.
    let pieces: Vec<&[u8]> = (0..12).map(|i| &b"abcdefghijkl"[i..=i]).collect();
    let answer = post_in_pieces(proxy.address, 12, &pieces, Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("abcdefghijkl"), "{answer}");

    // A body that stops: 408 at the body timeout, long before `timeouts.response`.
    let started = Instant::now();
    let answer = post_in_pieces(proxy.address, 100, &[b"0123456789"], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""status":408"#), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // The client's silence is not the backend's failure: with max_fails = 1 it would be ejected.
    let status: serde_json::Value =
        serde_json::from_str(&get_text(&proxy.admin_url("/status")).await).unwrap();
    let entry = &status["pools"][0]["backends"][0];
    assert_eq!(entry["ejected"], false, "{status}");
    assert_eq!(entry["healthy"], true, "{status}");
    assert_eq!(get_text(&proxy.url("/name")).await, "b1");
}

#[tokio::test]
async fn the_connection_limit_503_reaches_a_client_still_sending_its_request() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(
        &[("blue", &[&backend])],
        "\"blue\"",
        "[limits]\nmax_connections = 1\n",
    );
    let proxy = TestProxy::start(&config).await;
    let mut held = TcpStream::connect(proxy.address).await.unwrap();
    held.write_all(b"GET /name HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = held.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A request with a body the proxy never reads: the 503 must still arrive, not a reset.
    let body = vec![b'x'; 256 * 1024];
    for attempt in 0..5 {
        let mut stream = TcpStream::connect(proxy.address).await.unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let sent = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await
        }
        .await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the refused connection is closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            sent.is_ok() && read.is_ok(),
            "attempt {attempt}: {sent:?} {read:?} {answer}"
        );
        assert!(
            answer.starts_with("HTTP/1.1 503"),
            "attempt {attempt}: {answer}"
        );
    }
    let response = client()
        .post(proxy.url("/echo"))
        .body(body)
        .send()
        .await
        .expect("an answer, not a reset");
    assert_eq!(response.status(), 503);
}
