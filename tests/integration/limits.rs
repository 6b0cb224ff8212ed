//! Hardened listeners: PROXY protocol, slowloris and idle keep-alive, header and body limits, the
//! connection limit, and HTTP/2 rapid reset.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `config_for` with extra keys on its (first) client listener.
fn with_listener(config: String, keys: &str) -> String {
    config.replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!("bind = \"127.0.0.1:0\"\n{keys}\n"),
        1,
    )
}

/// Sends raw bytes and reads until the server closes (or `timeout`): what a client sees.
async fn exchange(address: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_until_closed(&mut stream, timeout).await.unwrap()
}

/// Reads until EOF or reset; `None` if the connection is still open at `timeout`.
async fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(timeout, stream.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None,
    }
}

fn forwarded_for(response: &str) -> String {
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let headers: serde_json::Value = serde_json::from_str(body).unwrap();
    headers["x-forwarded-for"].as_str().unwrap().to_string()
}

const GET_HEADERS: &[u8] = b"GET /headers HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

fn v2_header(client: &str, server: &str) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            client.parse::<SocketAddr>().unwrap(),
            server.parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_give_the_client_address() {
    let backend = TestBackend::start("b1").await;
    let config = with_listener(
        config_for(&[("blue", &[&backend])], "\"blue\"", ""),
        "proxy_protocol = true",
    );
    let proxy = TestProxy::start(&config).await;
    let timeout = Duration::from_secs(5);

    let mut v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 50123 443\r\n".to_vec();
    v1.extend_from_slice(GET_HEADERS);
    let response = exchange(proxy.address, &v1, timeout).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(forwarded_for(&response), "203.0.113.9");

    let mut v2 = v2_header("[2001:db8::42]:40000", "[2001:db8::1]:443");
    v2.extend_from_slice(GET_HEADERS);
    let response = exchange(proxy.address, &v2, timeout).await;
    assert_eq!(forwarded_for(&response), "2001:db8::42");

    // LOCAL (the balancer's own health check): the TCP peer stands.
    let mut local = ppp::v2::Builder::new(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
    )
    .build()
    .unwrap();
    local.extend_from_slice(GET_HEADERS);
    let response = exchange(proxy.address, &local, timeout).await;
    assert_eq!(forwarded_for(&response), "127.0.0.1");
}

#[tokio::test]
async fn malformed_and_truncated_proxy_headers_close_only_their_connection() {
    let backend = TestBackend::start("b1").await;
    let config = with_listener(
        config_for(
            &[("blue", &[&backend])],
            "\"blue\"",
            "[limits]\nhandshake_timeout = \"300ms\"\n",
        ),
        "proxy_protocol = true",
    );
    let proxy = TestProxy::start(&config).await;
    let timeout = Duration::from_secs(5);

    // A healthy keep-alive connection opened first, used before and after the bad ones.
    let mut good = TcpStream::connect(proxy.address).await.unwrap();
    let request =
        b"PROXY TCP4 198.51.100.1 10.0.0.1 1000 80\r\nGET /name HTTP/1.1\r\nhost: x\r\n\r\n";
    good.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = good.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("b1"));

    let v2 = v2_header("192.0.2.1:1", "192.0.2.2:2");
    let mut bad_v2 = v2.clone();
    bad_v2[12] = 0x99; // version nibble 9
    let mut bad_v1 = b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n".to_vec();
    bad_v1.extend_from_slice(GET_HEADERS);
    bad_v2.extend_from_slice(GET_HEADERS);
    let cases: [(&str, Vec<u8>, bool); 5] = [
        ("no header", GET_HEADERS.to_vec(), false),
        ("malformed v1", bad_v1, false),
        ("malformed v2", bad_v2, false),
        (
            "truncated v1, then EOF",
            b"PROXY TCP4 203.0.113.9".to_vec(),
            true,
        ),
        ("truncated v2, then EOF", v2[..20].to_vec(), true),
    ];
    for (what, bytes, half_close) in cases {
        let mut stream = TcpStream::connect(proxy.address).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        if half_close {
            stream.shutdown().await.unwrap();
        }
        let answer = read_until_closed(&mut stream, timeout).await;
        assert_eq!(
            answer.as_deref(),
            Some(""),
            "{what}: closed without an answer"
        );
    }
    // Truncated and then silent: closed at the handshake timeout.
    let mut silent = TcpStream::connect(proxy.address).await.unwrap();
    silent.write_all(b"PROXY TCP4 203.0").await.unwrap();
    assert_eq!(
        read_until_closed(&mut silent, timeout).await.as_deref(),
        Some("")
    );

    good.write_all(b"GET /name HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = good.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("b1"));
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_timeout_and_idle_keepalive_too() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(
        &[("blue", &[&backend])],
        "\"blue\"",
        "[limits]\nheader_read_timeout = \"500ms\"\n",
    );
    let proxy = TestProxy::start(&config).await;

    // Dribbles a header line every 100 ms: never completes the head.
    let mut slow = TcpStream::connect(proxy.address).await.unwrap();
    slow.write_all(b"GET /name HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let closed = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow
                .write_all(format!("x-slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(8), closed)
        .await
        .expect("the slow client was cut off");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(backend.requests(), 0);

    // A keep-alive connection that goes quiet after a request is closed after the same timeout.
    let mut idle = TcpStream::connect(proxy.address).await.unwrap();
    idle.write_all(b"GET /name HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle, Duration::from_secs(8)).await;
    let answer = answer.expect("idle keep-alive connection closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(
        &[("blue", &[&backend])],
        "\"blue\"",
        "[limits]\nmax_header_size = 16384\nmax_headers = 20\n",
    );
    let proxy = TestProxy::start(&config).await;
    let timeout = Duration::from_secs(5);

    let big = format!(
        "GET /name HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let response = exchange(proxy.address, big.as_bytes(), timeout).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /name HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    let response = exchange(proxy.address, many.as_bytes(), timeout).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    // Within limits: served.
    let fine = b"GET /name HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let response = exchange(proxy.address, fine, timeout).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(
        &[("blue", &[&backend])],
        "\"blue\"",
        "[limits]\nmax_request_body = 1000\n",
    );
    let proxy = TestProxy::start(&config).await;
    let http = client();

    // Announced too large: refused up front, the backend never sees it.
    let response = http
        .post(proxy.url("/echo"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(backend.requests(), 0);

    // Streamed without a length and growing past the limit: cut and answered 413.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 300]))),
    );
    let response = http
        .post(proxy.url("/echo"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // At the limit: forwarded whole.
    let response = http
        .post(proxy.url("/echo"))
        .body(vec![b'z'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), 1000);
}

#[tokio::test]
async fn over_the_connection_limit_new_connections_get_503_and_old_ones_work() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(
        &[("blue", &[&backend])],
        "\"blue\"",
        "[limits]\nmax_connections = 2\n",
    );
    let proxy = TestProxy::start(&config).await;
    let request = b"GET /name HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let refused = exchange(proxy.address, request, Duration::from_secs(5)).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("connection limit"), "{refused}");

    for stream in &mut held {
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("b1"));
    }
    // Closing one frees a slot.
    drop(held.pop());
    eventually("a freed slot", Duration::from_secs(5), async || {
        let answer = exchange(
            proxy.address,
            b"GET /name HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}

async fn h2_get(sender: h2::client::SendRequest<Bytes>, address: SocketAddr) -> StatusCode {
    let mut sender = sender.ready().await.unwrap();
    let request = http::Request::get(format!("http://{address}/name"))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    response.await.unwrap().status()
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_be_bytes();
    let mut out = vec![length[1], length[2], length[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1).
fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, new name (RFC 7541 section 6.2.2).
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0];
    hpack_int(0, 7, name.len(), &mut out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), &mut out);
    out.extend_from_slice(value.as_bytes());
    out
}

/// The error code of the first GOAWAY frame in a server's byte stream.
fn goaway_code(mut bytes: &[u8]) -> Option<u32> {
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let kind = bytes[3];
        let payload = bytes.get(9..9 + length)?;
        if kind == 7 && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        bytes = &bytes[9 + length..];
    }
    None
}

#[tokio::test]
async fn http2_rapid_reset_client_is_cut_off_and_others_keep_working() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", "");
    let proxy = TestProxy::start(&config).await;

    let bystander = h2c(proxy.address).await;
    assert_eq!(
        h2_get(bystander.clone(), proxy.address).await,
        StatusCode::OK
    );

    // The attack as it runs on the wire (CVE-2023-44487): HEADERS then RST_STREAM, stream after
    // stream, without waiting for anything. Written as raw frames because a well-behaved client
    // library holds back what it never sent.
    let mut attack = H2_PREFACE.to_vec();
    for n in 0..1000u32 {
        let id = (2 * n + 1).to_be_bytes();
        // HEADERS, END_STREAM | END_HEADERS: :method GET, :scheme http, :path / (static table)
        attack.extend_from_slice(&[0, 0, 3, 1, 0x05]);
        attack.extend_from_slice(&id);
        attack.extend_from_slice(&[0x82, 0x86, 0x84]);
        // RST_STREAM CANCEL
        attack.extend_from_slice(&[0, 0, 4, 3, 0]);
        attack.extend_from_slice(&id);
        attack.extend_from_slice(&8u32.to_be_bytes());
    }
    let mut attacker = TcpStream::connect(proxy.address).await.unwrap();
    // The server may close before reading everything: a write error is part of being cut off.
    let _ = attacker.write_all(&attack).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), attacker.read_to_end(&mut received))
        .await
        .expect("the attacker's connection is closed");
    let _ = read;
    assert!(
        goaway_code(&received) == Some(0xb),
        "expected GOAWAY ENHANCE_YOUR_CALM, got {:?}",
        goaway_code(&received)
    );

    assert_eq!(h2_get(bystander, proxy.address).await, StatusCode::OK);
    assert_eq!(
        h2_get(h2c(proxy.address).await, proxy.address).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn http2_oversized_headers_get_431_and_continuation_floods_are_cut_off() {
    let backend = TestBackend::start("b1").await;
    let config = config_for(
        &[("blue", &[&backend])],
        "\"blue\"",
        "[limits]\nmax_header_size = 16384\n",
    );
    let proxy = TestProxy::start(&config).await;
    let get = [0x82u8, 0x86, 0x84]; // :method GET, :scheme http, :path /

    // An oversized header list from a well-behaved client library: 431 on that stream only.
    let sender = h2c(proxy.address).await;
    let mut ready = sender.clone().ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/name", proxy.address))
        .header("x-big", "a".repeat(20_000))
        .body(())
        .unwrap();
    let (response, _) = ready.send_request(request, true).unwrap();
    let status = response.await.map(|r| r.status());
    assert_eq!(status.unwrap(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(h2_get(sender, proxy.address).await, StatusCode::OK);
    assert_eq!(backend.requests(), 1);

    // CONTINUATION flood: a header block that never ends. The server must give up, not buffer.
    let mut flood = H2_PREFACE.to_vec();
    flood.extend(frame(1, 0x01, 1, &get)); // END_STREAM, no END_HEADERS
    let chunk = hpack_literal("x-flood", &"c".repeat(1000));
    for _ in 0..5000 {
        flood.extend(frame(9, 0, 1, &chunk));
    }
    let mut attacker = TcpStream::connect(proxy.address).await.unwrap();
    let _ = attacker.write_all(&flood).await;
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), attacker.read_to_end(&mut received))
        .await
        .expect("the flooding connection is closed")
        .ok();
    assert!(
        goaway_code(&received).is_some(),
        "GOAWAY sent before closing"
    );
    assert_eq!(backend.requests(), 1);

    // Everyone else is fine.
    assert_eq!(
        h2_get(h2c(proxy.address).await, proxy.address).await,
        StatusCode::OK
    );
}

#[test]
fn limits_are_validated_with_their_place() {
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n\n[routing]\nactive = \"blue\"\n\n[limits]\n";
    for (line, why) in [
        ("max_header_size = 100", "max_header_size"),
        ("max_headers = 0", "max_headers"),
        (
            "http2_max_concurrent_streams = 0",
            "http2_max_concurrent_streams",
        ),
        ("handshake_timeout = \"soon\"", "soon"),
    ] {
        let err = switchyard::config::Config::parse(
            &format!("{base}{line}\n"),
            std::path::Path::new("test.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("test.toml:11:"), "{err}");
        assert!(err.contains(why), "{err}");
    }
    let config =
        switchyard::config::Config::parse(base, std::path::Path::new("test.toml")).unwrap();
    assert_eq!(config.limits.max_header_size, 65_536);
    assert_eq!(config.limits.max_headers, 100);
    assert_eq!(config.limits.max_request_body, Some(10 * 1024 * 1024));
    assert_eq!(config.limits.http2_max_concurrent_streams, 100);
    assert_eq!(config.limits.handshake_timeout, Duration::from_secs(10));
}
