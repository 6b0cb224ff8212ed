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

/// A backend and a proxy that trusts every loopback peer as a proxy in front of it.
async fn behind_a_trusted_proxy() -> (TestBackend, TestProxy) {
    let b1 = TestBackend::start("b1").await;
    let routing = "\"blue\"\ntrusted_proxies = [\"127.0.0.0/8\"]";
    let config = config_for_addresses(&[("blue", &[b1.address])], routing, "");
    let proxy = TestProxy::start(&config).await;
    (b1, proxy)
}

#[tokio::test]
async fn trusted_proxies_keep_their_address_headers() {
    let (_b1, proxy) = behind_a_trusted_proxy().await;
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

/// Every field the backend got named `name`, in order.
async fn fields_behind(proxy: &TestProxy, extra_headers: &str, name: &str) -> Vec<String> {
    let request = format!(
        "GET /headers/list HTTP/1.1\r\nhost: app.example\r\n{extra_headers}connection: close\r\n\r\n"
    );
    let answer = raw_exchange(proxy.address, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let fields: Vec<(String, String)> = serde_json::from_str(body).unwrap();
    fields
        .into_iter()
        .filter(|(field, _)| field == name)
        .map(|(_, value)| value)
        .collect()
}

/// The proxy writes its forwarding fields and the request id beside the client's fields, not
/// in their place: what the client sent of them must be gone, or the backend would get two.
#[tokio::test]
async fn each_forwarding_field_and_the_request_id_reach_the_backend_once() {
    let b1 = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config(&[b1.address], "")).await;
    let forged = "forwarded: for=6.6.6.6\r\nx-forwarded-for: 6.6.6.6\r\n\
                  x-forwarded-proto: https\r\nx-forwarded-host: evil.example\r\n\
                  x-request-id: a b\r\n";
    let expected = [
        ("forwarded", "for=127.0.0.1;proto=http;host=\"app.example\""),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "app.example"),
    ];
    for (name, value) in expected {
        assert_eq!(fields_behind(&proxy, forged, name).await, [value], "{name}");
    }
    let ids = fields_behind(&proxy, forged, "x-request-id").await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(ids[0], "a b", "an id that is no plain token is replaced");
    let two = "x-request-id: r-1\r\nx-request-id: r-2\r\n";
    let ids = fields_behind(&proxy, two, "x-request-id").await;
    assert_eq!(ids.len(), 1, "two ids become one new one: {ids:?}");
    let ids = fields_behind(&proxy, "x-request-id: mine-1\r\n", "x-request-id").await;
    assert_eq!(ids, ["mine-1"], "a plain id is passed on as it came");
    assert_eq!(fields_behind(&proxy, "", "x-request-id").await.len(), 1);
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_fields_are_extended_or_kept_once() {
    let (_b1, proxy) = behind_a_trusted_proxy().await;
    let told = "forwarded: for=203.0.113.7\r\nx-forwarded-for: 203.0.113.7\r\n\
                x-forwarded-proto: https\r\nx-forwarded-host: public.example\r\n";
    let expected = [
        (
            "forwarded",
            "for=203.0.113.7, for=127.0.0.1;proto=http;host=\"app.example\"",
        ),
        ("x-forwarded-for", "203.0.113.7, 127.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "public.example"),
    ];
    for (name, value) in expected {
        assert_eq!(fields_behind(&proxy, told, name).await, [value], "{name}");
    }
}
