//! HTTP/2 requests meet the same rules as HTTP/1: `:authority` is the host, and the header
//! count limit applies.

use bytes::Bytes;

use super::*;

/// Sends `request` and returns the status and body.
async fn h2_send(
    sender: ::h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
) -> (u16, String) {
    let mut ready = sender.ready().await.unwrap();
    let (response, _) = ready.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// RFC 9113 section 8.3.1: `:authority` is the host; a `host` header beside it must not win.
#[tokio::test]
async fn h2_authority_wins_over_host() {
    let b1 = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config(&[b1.address], "")).await;
    let request = http::Request::get("http://right.example/headers")
        .header("host", "wrong.example")
        .body(())
        .unwrap();
    let (status, body) = h2_send(h2c(proxy.address).await, request).await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["host"], "right.example");
    assert_eq!(seen["x-forwarded-host"], "right.example");
}

/// `max_headers` bounds HTTP/2 requests too (there is no h2 setting for a count, only for bytes).
#[tokio::test]
async fn h2_requests_over_the_header_count_are_refused() {
    let b1 = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config(&[b1.address], "[limits]\nmax_headers = 20\n")).await;
    let sender = h2c(proxy.address).await;
    let mut many = http::Request::get(format!("http://{}/name", proxy.address));
    for i in 0..30 {
        many = many.header(format!("x-h{i}"), "v");
    }
    let (status, _) = h2_send(sender.clone(), many.body(()).unwrap()).await;
    assert_eq!(status, 431);
    assert_eq!(b1.requests(), 0);
    // At the limit: served (the request id the proxy adds is not the client's header).
    let mut twenty = http::Request::get(format!("http://{}/name", proxy.address));
    for i in 0..20 {
        twenty = twenty.header(format!("x-h{i}"), "v");
    }
    let answer = h2_send(sender, twenty.body(()).unwrap()).await;
    assert_eq!(answer, (200, "b1".to_string()));
}
