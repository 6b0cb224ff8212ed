//! Error answers tell the client nothing internal; a request id ties them to the log, where the
//! details are. Every request has an id, passed to the backend and returned to the client.

use super::*;

fn is_generated_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A `502` names no backend address and no OS error; it carries a request id, which the log lines
/// with the details carry too.
#[tokio::test]
async fn bad_gateway_hides_details_and_names_a_request_id() {
    let (_guard, logs) = Logs::capture();
    let dead = TestBackend::start("dead").await;
    dead.kill();
    eventually("dead backend refuses", WAIT, async || {
        TcpStream::connect(dead.address)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let proxy = TestProxy::start(&config(&[dead.address], "")).await;
    let reply = client()
        .post(proxy.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 502);
    let header = reply.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = reply.text().await.unwrap();
    let port = dead.address.port().to_string();
    for secret in ["127.0.0.1", port.as_str(), "refused", "connect", "os error"] {
        assert!(!text.contains(secret), "{secret:?} in the body: {text}");
    }
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["status"], 502);
    assert_eq!(body["error"]["request_id"], header.as_str(), "{text}");
    assert!(is_generated_id(&header), "{header}");

    // The access line is written when the answer's body ends, which may be just after the
    // client has read it.
    let mine = |lines: &[serde_json::Value]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["request_id"] == header.as_str())
            .cloned()
            .collect()
    };
    eventually("an access line with the request id", WAIT, async || {
        mine(&logs.lines())
            .iter()
            .any(|l| l["target"] == "access" && l["status"] == 502)
            .then_some(())
    })
    .await;
    let lines = logs.lines();
    assert!(
        mine(&lines).iter().any(|l| {
            let line = l.to_string();
            line.contains(&dead.address.to_string()) && line.to_lowercase().contains("refused")
        }),
        "no log line with the details: {lines:?}"
    );
}

/// A client's own `X-Request-Id` is kept; without one (or with one that is not a plain token)
/// the proxy makes one. Either way the backend and the client see the same id.
#[tokio::test]
async fn request_ids_reach_the_backend_and_the_client() {
    let b1 = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config(&[b1.address], "")).await;
    let client = client();
    let ids = async |sent: Option<&str>| {
        let mut request = client.get(proxy.url("/headers"));
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), 200);
        let returned = reply.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let seen: serde_json::Value = reply.json().await.unwrap();
        (
            returned,
            seen["x-request-id"].as_str().unwrap_or("").to_string(),
        )
    };
    let (returned, seen) = ids(Some("trace-42.a:b")).await;
    assert_eq!(
        (returned.as_str(), seen.as_str()),
        ("trace-42.a:b", "trace-42.a:b")
    );

    let (first, seen) = ids(None).await;
    assert!(is_generated_id(&first), "{first}");
    assert_eq!(seen, first);
    let (second, _) = ids(None).await;
    assert_ne!(first, second, "ids repeat");

    for hostile in ["two words", "\"quoted\"", &"x".repeat(200)] {
        let (returned, seen) = ids(Some(hostile)).await;
        assert!(
            is_generated_id(&returned),
            "{hostile:?} kept as {returned:?}"
        );
        assert_eq!(seen, returned);
    }
}
