//! Legacy HTTP+SSE streams as the proxy watches them: the session their `endpoint` event names
//! lives as long as the stream, and the scan for that event holds with sealing on.

use std::time::Duration;

use crate::support::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// Once the client closes a legacy stream, the table forgets its session (not at the idle
/// timeout, which defaults to an hour).
#[tokio::test]
async fn closed_legacy_stream_forgets_its_session() {
    let backend = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", "")).await;
    let client = client();
    let base = proxy.url("");
    let legacy = open_legacy(&client, &base).await;
    assert_eq!(proxy.state.sessions.len(), 1);
    drop(legacy);
    eventually(
        "the closed stream's session is forgotten",
        Duration::from_secs(5),
        async || proxy.state.sessions.is_empty().then_some(()),
    )
    .await;
}

/// A backend whose legacy stream starts with `padding` bytes of comment blocks, then, a moment
/// later (a slow server: the proxy sees the comments as frames of their own), its `endpoint`
/// event (session `raw-session-id`), then stays open.
async fn padded_legacy_backend(padding: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0; 4096];
                let _ = stream.read(&mut request).await;
                let block = ": padding padding padding padding padding padding\n\n";
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream
                    .write_all(block.repeat(padding / block.len()).as_bytes())
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let endpoint = "event: endpoint\ndata: /messages?sessionId=raw-session-id\n\n";
                let _ = stream.write_all(endpoint.as_bytes()).await;
                let _ = stream.read(&mut request).await;
            });
        }
    });
    address
}

/// Comment blocks before the endpoint event count once against the scan limit (8 KiB) with
/// sealing on, as without: 6 KiB of them still leave the endpoint event found and sealed.
#[tokio::test]
async fn sealed_endpoint_found_after_comment_blocks() {
    let padding = 6 * 1024;
    let backend = padded_legacy_backend(padding).await;
    let keys = TempFile::new("legacy", "seal.keys", &format!("{KEY}\n"));
    let config = config_for_addresses(
        &[("blue", &[backend])],
        "\"blue\"",
        &format!("[sessions]\nseal_keys_file = \"{}\"\n", keys.display()),
    );
    let proxy = TestProxy::start(&config).await;
    let response = get_sse(&client(), &proxy.url("/sse")).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let endpoint = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            text.push_str(&String::from_utf8_lossy(
                &stream.next().await.unwrap().unwrap(),
            ));
            if let Some(line) = text.lines().find(|l| l.starts_with("data: ")) {
                break line.to_string();
            }
        }
    })
    .await
    .unwrap();
    assert!(
        endpoint.starts_with("data: /messages?sessionId="),
        "{endpoint}"
    );
    assert!(
        !endpoint.contains("raw-session-id"),
        "the endpoint event passed unsealed: {endpoint}"
    );
    assert_eq!(proxy.state.sessions.len(), 1);
    let _ = std::fs::remove_file(&keys);
}
