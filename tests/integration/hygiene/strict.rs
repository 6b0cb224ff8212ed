//! Lenient HTTP is refused before any backend sees it, and a backend's malformed answer never
//! reaches the client as it came.

use super::*;

async fn proxy_for(backend: &TestBackend) -> TestProxy {
    TestProxy::start(&config(&[backend.address], "")).await
}

#[tokio::test]
async fn http11_without_host_is_400() {
    let b1 = TestBackend::start("b1").await;
    let proxy = proxy_for(&b1).await;
    let answer = raw_exchange(proxy.address, b"GET /name HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    // HTTP/1.0 had no Host requirement.
    let answer = raw_exchange(proxy.address, b"GET /name HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(b1.requests(), 1);
}

#[tokio::test]
async fn two_host_headers_are_400() {
    let b1 = TestBackend::start("b1").await;
    let proxy = proxy_for(&b1).await;
    let request = b"GET /name HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n";
    let answer = raw_exchange(proxy.address, request).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert_eq!(b1.requests(), 0);
}

/// RFC 9112 section 3.2.2: with an absolute-form target, its authority is the host.
#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    let b1 = TestBackend::start("b1").await;
    let proxy = proxy_for(&b1).await;
    let request = b"GET http://right.example/headers HTTP/1.1\r\nhost: wrong.example\r\n\
                    connection: close\r\n\r\n";
    let answer = raw_exchange(proxy.address, request).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = seen_headers(&answer);
    assert_eq!(seen["host"], "right.example");
    assert_eq!(seen["x-forwarded-host"], "right.example");
}

#[tokio::test]
async fn connect_is_405_without_reaching_a_backend() {
    let b1 = TestBackend::start("b1").await;
    let proxy = proxy_for(&b1).await;
    let request = b"CONNECT internal.example:443 HTTP/1.1\r\nhost: internal.example:443\r\n\r\n";
    let answer = raw_exchange(proxy.address, request).await;
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert!(header_of(&answer, "allow").is_some(), "{answer}");
    assert_eq!(b1.requests(), 0);
}

/// Only `Transfer-Encoding: chunked` frames a request; stacked or repeated codings are refused
/// (HAProxy does the same), so proxy and backend can never read different bodies.
#[tokio::test]
async fn transfer_codings_other_than_one_chunked_are_400() {
    let b1 = TestBackend::start("b1").await;
    let proxy = proxy_for(&b1).await;
    for codings in [
        "transfer-encoding: gzip, chunked\r\n",
        "transfer-encoding: chunked, chunked\r\n",
        "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
    ] {
        let request =
            format!("POST /echo HTTP/1.1\r\nhost: x\r\n{codings}\r\n5\r\nhello\r\n0\r\n\r\n");
        let answer = raw_exchange(proxy.address, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{codings}: {answer}");
    }
    assert_eq!(b1.requests(), 0);
    let request = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n0\r\n\r\n";
    let answer = raw_exchange(proxy.address, request).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(body_of(&answer), "hello");
}

/// A backend answer framed both ways: `Transfer-Encoding` wins, the length is dropped (as HAProxy
/// does), so the client reads exactly the chunked body.
#[tokio::test]
async fn backend_length_beside_chunked_is_dropped() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 120\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::start(&config(&[backend.address], "")).await;
    let answer = raw_exchange(proxy.address, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(header_of(&answer, "content-length"), None, "{answer}");
    assert_eq!(
        header_of(&answer, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert_eq!(body_of(&answer), "5\r\nhello\r\n0\r\n\r\n");
}

#[tokio::test]
async fn backend_status_outside_100_to_599_is_502() {
    for answer in [
        &b"HTTP/1.1 600 Beyond\r\ncontent-length: 2\r\n\r\nok"[..],
        &b"HTTP/1.1 099 Below\r\ncontent-length: 2\r\n\r\nok"[..],
    ] {
        let backend = RawBackend::start(answer).await;
        let proxy = TestProxy::start(&config(&[backend.address], "")).await;
        let seen = raw_exchange(proxy.address, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(status_of(&seen), 502, "{seen}");
    }
}
