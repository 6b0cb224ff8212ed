//! The proxy end to end: real proxy, real backends, real sockets on 127.0.0.1:0.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn three_backends() -> (TestBackend, TestBackend, TestBackend) {
    (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        TestBackend::start("b3").await,
    )
}

fn owner_of(session: &str) -> &str {
    session.split('-').next().unwrap()
}

/// Streamable HTTP: 100 concurrent sessions × 10 messages, each message lands on its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_sessions_stick_to_their_owner() {
    let (a, b, c) = three_backends().await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a, &b, &c])], "\"blue\"", "")).await;
    let client = client();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let client = client.clone();
        let url = proxy.url("/mcp");
        tasks.push(tokio::spawn(async move {
            let init = client.post(&url).body("{}").send().await.unwrap();
            assert_eq!(init.status(), 200);
            let session = session_of(&init);
            for _ in 0..10 {
                let reply = post_in_session(&client, &url, &session).await;
                assert_eq!(reply.status(), 200);
                let body = reply.text().await.unwrap();
                assert_eq!(
                    body,
                    format!(r#"{{"backend":"{}"}}"#, owner_of(&session)),
                    "{session}"
                );
            }
            session
        }));
    }
    let mut owners = HashSet::new();
    for task in tasks {
        owners.insert(owner_of(&task.await.unwrap()).to_string());
    }
    // Least-connections spread new sessions over all three backends.
    assert_eq!(owners.len(), 3, "{owners:?}");
    assert_eq!(proxy.state.sessions.len(), 100);
}

/// Streamable HTTP lifecycle: GET stream and DELETE reach the owner; a deleted session is gone.
#[tokio::test]
async fn streamable_http_get_stream_and_delete() {
    let (a, b, c) = three_backends().await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a, &b, &c])], "\"blue\"", "")).await;
    let client = client();
    let session = new_session(&client, &proxy.url("/mcp")).await;
    let owner = [&a, &b, &c]
        .into_iter()
        .find(|t| t.name == owner_of(&session))
        .unwrap();
    let before = owner.requests();
    let stream = client
        .get(proxy.url("/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(owner.requests(), before + 1, "GET stream went to the owner");
    let delete = client
        .delete(proxy.url("/mcp"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 200);
    assert_eq!(owner.requests(), before + 2, "DELETE went to the owner");
    assert_eq!(proxy.state.sessions.len(), 0, "DELETE forgets the session");
    let after = post_in_session(&client, &proxy.url("/mcp"), &session).await;
    assert_eq!(after.status(), 404);
    let body: serde_json::Value = after.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32001);
    assert_eq!(body["jsonrpc"], "2.0");
}

/// Legacy HTTP+SSE: the session is learned from the `endpoint` event; POSTs reach the stream's
/// backend and their answers come back on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_sessions_reach_the_stream_owner() {
    let (a, b, c) = three_backends().await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a, &b, &c])], "\"blue\"", "")).await;
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let proxy_url = proxy.url("");
        tasks.push(tokio::spawn(async move {
            let LegacySession {
                endpoint,
                session,
                events: mut bytes,
            } = open_legacy(&client, &proxy_url).await;
            let mut buffer = String::new();
            for n in 0..10 {
                let posted = client
                    .post(format!("{proxy_url}{endpoint}"))
                    .body(format!("{}", i * 100 + n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(posted.status(), 202);
            }
            let mut answers = 0;
            while answers < 10 {
                buffer.push_str(&String::from_utf8_lossy(
                    &bytes.next().await.unwrap().unwrap(),
                ));
                answers = buffer.matches("event: message").count();
            }
            assert!(buffer.contains(&format!("\"backend\":\"{}\"", owner_of(&session))));
            session
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(proxy.state.metrics.sessions_learned.get(), 20);
    // Every stream is closed now, and a legacy session lives only as long as its stream.
    eventually(
        "the closed streams' sessions are forgotten",
        Duration::from_secs(5),
        async || proxy.state.sessions.is_empty().then_some(()),
    )
    .await;
}

/// Stateless (2026-07-28) POSTs whose answers are SSE streams: placed by least-connections,
/// streamed through.
#[tokio::test]
async fn stateless_posts_with_sse_responses_stream_through() {
    let (a, b, c) = three_backends().await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a, &b, &c])], "\"blue\"", "")).await;
    let client = client();
    let mut responses = Vec::new();
    for _ in 0..6 {
        let response = client
            .post(proxy.url("/ticks?every_ms=50&count=3"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-method", "tools/call")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        responses.push(response);
    }
    // Streams stay counted while open, so six streams spread two per backend.
    for backend in [&a, &b, &c] {
        assert_eq!(
            backend.requests(),
            2,
            "{} got {}",
            backend.name,
            backend.requests()
        );
    }
    for response in responses {
        let events = read_events(response, 3, Duration::from_secs(5)).await;
        assert_eq!(events.len(), 3);
    }
}

/// Least-connections: with streams held open on one backend, new POSTs go to the others.
#[tokio::test]
async fn least_connections_avoids_backend_with_open_streams() {
    let (a, b, c) = three_backends().await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a, &b, &c])], "\"blue\"", "")).await;
    let client = client();
    // SSE GETs from one client address all hash to the same backend.
    let mut streams = Vec::new();
    for _ in 0..5 {
        let s = get_sse(&client, &proxy.url("/hold")).await;
        assert_eq!(s.status(), 200);
        streams.push(s);
    }
    let holder = [&a, &b, &c]
        .into_iter()
        .find(|t| t.requests() == 5)
        .expect("one backend holds all streams");
    for _ in 0..20 {
        let session = new_session(&client, &proxy.url("/mcp")).await;
        assert_ne!(owner_of(&session), holder.name);
    }
    assert_eq!(holder.requests(), 5);
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// Unbuffered: an event written every 200 ms reaches the client within 50 ms of being written.
#[tokio::test]
async fn sse_events_arrive_unbuffered() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let response = get_sse(&client(), &proxy.url("/ticks?every_ms=200&count=5")).await;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut seen = 0;
    while seen < 5 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let arrived = now_micros();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let sent: u128 = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap()
                .parse()
                .unwrap();
            let delay_ms = (arrived - sent) as f64 / 1000.0;
            assert!(delay_ms < 50.0, "event {seen} took {delay_ms} ms");
            seen += 1;
        }
    }
}

/// Keepalive comments fill silences between events, never inside an event.
#[tokio::test]
async fn keepalives_only_between_events() {
    let a = TestBackend::start("b1").await;
    let extra = "[timeouts]\nsse_keepalive = \"100ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", extra)).await;
    let response = get_sse(&client(), &proxy.url("/script")).await;
    let raw = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();
    let first = raw.find("data: a\n\n").unwrap();
    let second = raw
        .find("data: b\n\n")
        .expect("the second event arrives whole, with nothing injected inside");
    let between = &raw[first + "data: a\n\n".len()..second];
    assert!(between.contains(": keepalive\n\n"), "{raw:?}");
    assert_eq!(
        between.matches(": keepalive\n\n").count() * ": keepalive\n\n".len(),
        between.len(),
        "{raw:?}"
    );
    assert!(proxy.state.metrics.keepalives.get() >= 1);
}

/// A client that goes away cancels its upstream stream at once: the backend sees it close.
#[tokio::test]
async fn client_disconnect_reaches_the_backend() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let response = get_sse(&client(), &proxy.url("/hold")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(a.seen.disconnects.load(Ordering::SeqCst), 0);
    drop(response);
    eventually(
        "backend sees the disconnect",
        Duration::from_secs(5),
        async || (a.seen.disconnects.load(Ordering::SeqCst) == 1).then_some(()),
    )
    .await;
    let snapshot = proxy.state.snapshot();
    let backend = &snapshot.pools[0].members[0].backend;
    eventually(
        "stream guard released",
        Duration::from_secs(5),
        async || (backend.load() == 0).then_some(()),
    )
    .await;
    assert_eq!(backend.open_streams(), 0);
}

/// WebSocket: the upgrade passes through and bytes flow both ways.
#[tokio::test]
async fn websocket_upgrade_tunnels_bytes() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let (mut socket, head) = websocket_upgrade(proxy.address, "/ws").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let snapshot = proxy.state.snapshot();
    let backend = &snapshot.pools[0].members[0].backend;
    eventually(
        "tunnel counted as a stream",
        Duration::from_secs(5),
        async || (backend.open_streams() == 1).then_some(()),
    )
    .await;
    socket.write_all(b"hello through the tunnel").await.unwrap();
    let mut echo = [0u8; 24];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"hello through the tunnel");
    drop(socket);
    eventually("tunnel closed", Duration::from_secs(5), async || {
        (backend.open_streams() == 0).then_some(())
    })
    .await;
}

/// Hop-by-hop headers and those named in `Connection` are stripped; `X-Forwarded-*` are set.
#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_headers_set() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let reply = client()
        .get(proxy.url("/headers"))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-kept", "yes")
        .send()
        .await
        .unwrap();
    let seen: std::collections::HashMap<String, String> = reply.json().await.unwrap();
    for gone in ["x-private", "proxy-connection", "te"] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the backend: {seen:?}"
        );
    }
    assert_eq!(seen["x-kept"], "yes");
    // An untrusted client cannot forge its address.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], proxy.address.to_string());
}

/// Trusted proxies: the client address comes from `X-Forwarded-For`, and it drives IP affinity.
#[tokio::test]
async fn trusted_proxy_forwarded_for_is_the_client() {
    let (a, b, c) = three_backends().await;
    let config = config_for(
        &[("blue", &[&a, &b, &c])],
        "\"blue\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
        "",
    );
    let proxy = TestProxy::start(&config).await;
    let client = client();
    let reply = client
        .get(proxy.url("/headers"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let seen: std::collections::HashMap<String, String> = reply.json().await.unwrap();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    // Forwarded clients spread over backends by hash, and one client always lands alike.
    let backends = [&a, &b, &c];
    let mut used = HashSet::new();
    for i in 1..=30 {
        let ip = format!("198.51.100.{i}");
        let mut landed = HashSet::new();
        for _ in 0..3 {
            let before: Vec<usize> = backends.iter().map(|t| t.requests()).collect();
            let stream = client
                .get(proxy.url("/hold"))
                .header("accept", "text/event-stream")
                .header("x-forwarded-for", &ip)
                .send()
                .await
                .unwrap();
            drop(stream);
            let hit = backends
                .iter()
                .enumerate()
                .find(|(n, t)| t.requests() > before[*n])
                .unwrap()
                .0;
            landed.insert(hit);
        }
        assert_eq!(landed.len(), 1, "{ip} moved between backends");
        used.extend(landed);
    }
    assert_eq!(used.len(), 3, "30 clients should cover 3 backends");
}

/// An unknown session is answered 404 with a JSON-RPC error, never routed to a stranger.
#[tokio::test]
async fn unknown_session_gets_jsonrpc_404() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let reply = client()
        .post(proxy.url("/mcp"))
        .header("mcp-session-id", "nobody")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 404);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32001);
    let legacy = client()
        .post(proxy.url("/messages?sessionId=nobody"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 404);
    assert_eq!(a.requests(), 0);
}

/// A dead backend: session-less requests retry elsewhere; with nothing alive, 502.
#[tokio::test]
async fn unreachable_backend_is_retried_then_502() {
    let a = TestBackend::start("b1").await;
    let dead = TestBackend::start("dead").await;
    dead.kill();
    // Make sure the port is really closed before testing against it.
    eventually("dead backend refuses", Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(dead.address)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a, &dead])], "\"blue\"", "")).await;
    for _ in 0..10 {
        let reply = client()
            .post(proxy.url("/mcp"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
    }
    let only_dead = TestProxy::start(&config_for(&[("blue", &[&dead])], "\"blue\"", "")).await;
    let reply = client()
        .post(only_dead.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 502);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["status"], 502);
}

/// A backend slower than the response timeout gets 504; streams are not subject to it.
#[tokio::test]
async fn slow_response_is_504_but_streams_live_on() {
    let a = TestBackend::start("b1").await;
    let extra = "[timeouts]\nresponse = \"300ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", extra)).await;
    let reply = client()
        .get(proxy.url("/slow?ms=2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 504);
    // Events 400 ms apart: the stream outlives the 300 ms response timeout.
    let stream = get_sse(&client(), &proxy.url("/ticks?every_ms=400&count=3")).await;
    let events = read_events(stream, 3, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 3);
}

/// HTTP/2 cleartext (prior knowledge) from clients: POSTs and SSE streams.
#[tokio::test]
async fn h2c_clients_are_served() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let init = h2.post(proxy.url("/mcp")).body("{}").send().await.unwrap();
    assert_eq!(init.version(), reqwest::Version::HTTP_2);
    assert_eq!(init.status(), 200);
    let session = session_of(&init);
    let again = post_in_session(&h2, &proxy.url("/mcp"), &session).await;
    assert_eq!(again.status(), 200);
    let stream = get_sse(&h2, &proxy.url("/ticks?every_ms=20&count=3")).await;
    assert_eq!(
        read_events(stream, 3, Duration::from_secs(5)).await.len(),
        3
    );
    let seen = a.seen.headers.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        seen["host"],
        proxy.address.to_string(),
        "h2 :authority becomes Host upstream"
    );
}

/// Upstream connections are reused: many requests, few connections.
#[tokio::test]
async fn upstream_connections_are_pooled() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let client = client();
    for _ in 0..50 {
        let reply = client.get(proxy.url("/name")).send().await.unwrap();
        assert_eq!(reply.text().await.unwrap(), "b1");
    }
    let snapshot = proxy.state.snapshot();
    assert_eq!(snapshot.pools[0].members[0].backend.requests_served(), 50);
    assert_eq!(a.requests(), 50);
    let connections = a.seen.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 2,
        "{connections} upstream connections for 50 sequential requests"
    );
}

/// A backend that refuses the upgrade: its answer is relayed as it is and nothing is tunnelled.
#[tokio::test]
async fn websocket_refused_by_the_backend_is_relayed_not_tunnelled() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let (mut socket, head) = websocket_upgrade(proxy.address, "/no-websocket-here").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(!head.contains("upgrade: websocket"), "{head}");
    let mut body = Vec::new();
    while !String::from_utf8_lossy(&body).contains("no such path") {
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the body");
        body.extend_from_slice(&chunk[..n]);
    }
    let snapshot = proxy.state.snapshot();
    assert_eq!(snapshot.pools[0].members[0].backend.open_streams(), 0);
}
