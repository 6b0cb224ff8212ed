//! Client-address headers: an untrusted client cannot tell the backend who it is; a trusted
//! proxy's word is kept and this hop added, in `Forwarded` as in `X-Forwarded-For`.

use super::*;

/// Every header a client could use to claim an address, in both spellings.
const FORGED: &str = "forwarded: for=6.6.6.6;proto=https\r\nx-real-ip: 6.6.6.6\r\n\
                      true-client-ip: 6.6.6.6\r\ncf-connecting-ip: 6.6.6.6\r\n\
                      x-client-ip: 6.6.6.6\r\nx-forwarded-for: 6.6.6.6\r\n\
                      x_forwarded_for: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\n\
                      X_Forwarded_Proto: https\r\n";

async fn headers_behind(
    proxy: &TestProxy,
    extra_headers: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let request = format!(
        "GET /headers HTTP/1.1\r\nhost: app.example\r\n{extra_headers}connection: close\r\n\r\n"
    );
    let answer = raw_exchange(proxy.address, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    seen_headers(&answer)
}

#[tokio::test]
async fn untrusted_client_address_headers_are_replaced() {
    let b1 = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config(&[b1.address], "")).await;
    let seen = headers_behind(&proxy, FORGED).await;
    for (name, value) in &seen {
        assert!(!name.contains('_'), "{name} reached the backend: {seen:?}");
        let value = value.as_str().unwrap();
        assert!(
            !value.contains("6.6.6.6") && !value.contains("https"),
            "{name}: {value} reached the backend"
        );
    }
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.1;proto=http;host=\"app.example\""
    );
}

#[tokio::test]
async fn trusted_proxies_keep_their_address_headers() {
    let b1 = TestBackend::start("b1").await;
    let routing = "\"blue\"\ntrusted_proxies = [\"127.0.0.0/8\"]";
    let config = config_for_addresses(&[("blue", &[b1.address])], routing, "");
    let proxy = TestProxy::start(&config).await;
    let told = "forwarded: for=203.0.113.7;proto=https\r\nx-forwarded-for: 203.0.113.7\r\n\
                x-real-ip: 203.0.113.7\r\n";
    let seen = headers_behind(&proxy, told).await;
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(
        seen["forwarded"],
        "for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;host=\"app.example\""
    );
    assert_eq!(seen["x-real-ip"], "203.0.113.7");
    // Underscore names are dropped whoever sends them (frameworks fold them into dashes).
    let seen = headers_behind(&proxy, "x_forwarded_for: 6.6.6.6\r\n").await;
    assert!(seen.keys().all(|k| !k.contains('_')), "{seen:?}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
}
