//! Backend health counts only what the backend did wrong: slow clients, long tool calls and broken
//! client bodies never eject it, and an owner that was out for a while keeps its sessions.

use std::sync::Arc;

use super::*;
use switchyard::upstream::backend::Backend;

fn backend(proxy: &TestProxy, address: SocketAddr) -> Arc<Backend> {
    let snapshot = proxy.state.snapshot();
    Arc::clone(snapshot.backends.get(address.to_string().as_str()).unwrap())
}

/// A session on the backend named `name`, opened through the proxy.
async fn session_on(proxy: &TestProxy, name: &str) -> String {
    let client = client();
    eventually("a session on the chosen backend", WAIT, async || {
        let session = new_session(&client, &proxy.url("/mcp")).await;
        session.starts_with(&format!("{name}-")).then_some(session)
    })
    .await
}

/// Three uploads that stall past the response timeout, aimed at one backend through its session
/// (the attack the issue describes): each is the client's `408`, counted as a client error; the
/// backend stays in and its session works.
#[tokio::test]
async fn slow_uploads_do_not_eject_their_backend() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let extra = "[timeouts]\nresponse = \"200ms\"\n";
    let proxy = TestProxy::start(&config(&[b1.address, b2.address], extra)).await;
    let target = session_on(&proxy, "b2").await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let upload = format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\nmcp-session-id: {target}\r\n\
             content-length: 10\r\n\r\nab"
        );
        statuses.push(status_of(
            &raw_exchange(proxy.address, upload.as_bytes()).await,
        ));
    }
    let victim = backend(&proxy, b2.address);
    assert!(
        victim.is_healthy() && !victim.health.is_ejected(),
        "slow clients ejected a healthy backend (answers {statuses:?})"
    );
    assert_eq!(statuses, [408, 408, 408]);
    let reply = post_in_session(&client(), &proxy.url("/mcp"), &target).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(
        metric(
            &proxy,
            "switchyard_client_errors_total{reason=\"body_timeout\"}"
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(&proxy, "switchyard_upstream_errors_total").await,
        0.0
    );
}

/// A tool call that outlasts the response timeout gets `504`, but the backend still working on
/// it is not ejected: hung backends are the probes' to find.
#[tokio::test]
async fn long_tool_calls_do_not_eject_their_backend() {
    let b1 = TestBackend::start("b1").await;
    let extra = "[timeouts]\nresponse = \"100ms\"\n";
    let proxy = TestProxy::start(&config(&[b1.address], extra)).await;
    let session = session_on(&proxy, "b1").await;
    let client = client();
    for _ in 0..4 {
        let reply = client
            .get(proxy.url("/slow?ms=400"))
            .header("mcp-session-id", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 504);
    }
    let busy = backend(&proxy, b1.address);
    assert!(
        !busy.health.is_ejected(),
        "a long tool call ejected its backend"
    );
    assert!(busy.is_healthy());
    let reply = post_in_session(&client, &proxy.url("/mcp"), &session).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(
        metric(
            &proxy,
            "switchyard_upstream_errors_total{outcome=\"response_timeout\"}"
        )
        .await,
        4.0
    );
}

/// An owner ejected for refusing connections keeps its sessions: they get `404` while it is out
/// and are served again once it is back.
#[tokio::test]
async fn session_outlives_its_owners_ejection() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let extra = "[health]\ninterval = \"0s\"\nmax_fails = 1\nejection = \"300ms\"\n";
    let proxy = TestProxy::start(&config(&[b1.address, b2.address], extra)).await;
    let session = session_on(&proxy, "b2").await;
    let client = client();
    let url = proxy.url("/mcp");

    b2.kill();
    eventually("b2 refuses connections", WAIT, async || {
        TcpStream::connect(b2.address).await.is_err().then_some(())
    })
    .await;
    assert_eq!(post_in_session(&client, &url, &session).await.status(), 502);
    let owner = backend(&proxy, b2.address);
    assert!(owner.health.is_ejected());
    assert_eq!(post_in_session(&client, &url, &session).await.status(), 404);
    assert!(
        proxy.state.sessions.owner(&session).is_some(),
        "the session was forgotten while its owner was ejected"
    );

    let _back = b2.revive().await;
    eventually("the session is served again", WAIT, async || {
        let reply = post_in_session(&client, &url, &session).await;
        let status = reply.status();
        let body = reply.text().await.unwrap();
        (status == 200).then(|| assert_eq!(body, r#"{"backend":"b2"}"#))
    })
    .await;
}

/// Refused connections of real traffic eject a backend; after the ejection it needs passing
/// probes, and its sessions, kept meanwhile, work again once it is back.
#[tokio::test]
async fn passive_failures_eject_until_probes_pass() {
    let a = TestBackend::start("b1").await;
    let b = TestBackend::start("b2").await;
    // `fall` far away: the verdict under test is the ejection's, not the probes'.
    let extra = "[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 100\n\
                 max_fails = 2\nfail_window = \"10s\"\nejection = \"300ms\"\n";
    let proxy = TestProxy::start(&config(&[a.address, b.address], extra)).await;
    let client = client();
    let on_b = session_on(&proxy, "b2").await;
    let failing = backend(&proxy, b.address);
    b.set_health(&[500]);
    b.kill();
    eventually("b2 refuses connections", WAIT, async || {
        TcpStream::connect(b.address).await.is_err().then_some(())
    })
    .await;
    for attempt in 0..2 {
        assert!(failing.is_healthy(), "ejected after {attempt} failures");
        let reply = post_in_session(&client, &proxy.url("/mcp"), &on_b).await;
        assert_eq!(reply.status(), 502);
    }
    assert!(!failing.is_healthy());
    assert!(failing.health.is_ejected());
    let reply = post_in_session(&client, &proxy.url("/mcp"), &on_b).await;
    assert_eq!(reply.status(), 404);
    for _ in 0..5 {
        let session = new_session(&client, &proxy.url("/mcp")).await;
        assert!(session.starts_with("b1-"), "{session}");
    }
    // Back, but failing its probes: the ejection ends and the probes keep it out.
    let _back = b.revive().await;
    eventually("ejection over", WAIT, async || {
        (!failing.health.is_ejected()).then_some(())
    })
    .await;
    let probes = b.probes();
    eventually("probed after the ejection", WAIT, async || {
        (b.probes() >= probes + 3).then_some(())
    })
    .await;
    assert!(!failing.is_healthy());
    b.set_health(&[200]);
    eventually("probed back in", WAIT, async || {
        failing.is_healthy().then_some(())
    })
    .await;
    let reply = post_in_session(&client, &proxy.url("/mcp"), &on_b).await;
    assert_eq!(reply.status(), 200, "the session kept through the ejection");
    let series = format!(
        "switchyard_backend_ejections_total{{pool=\"blue\",backend=\"{}\"}}",
        b.address
    );
    assert_eq!(metric(&proxy, &series).await, 1.0);
}

/// A client whose body breaks gets `400` (bad chunk framing; one that leaves mid-body gets
/// nothing, it is gone), one that grows past the limit `413`: client errors, never the backend's.
#[tokio::test]
async fn broken_client_bodies_are_client_errors() {
    let b1 = TestBackend::start("b1").await;
    let extra = "[limits]\nmax_request_body = 1000\n\n[health]\ninterval = \"0s\"\nmax_fails = 1\n";
    let proxy = TestProxy::start(&config(&[b1.address], extra)).await;

    let bad_chunk = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                      5\r\nhello\r\nzz\r\n\r\n";
    let answer = raw_exchange(proxy.address, bad_chunk).await;
    assert_eq!(status_of(&answer), 400, "{answer}");

    let mut cut = TcpStream::connect(proxy.address).await.unwrap();
    cut.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // A client that stops halfway is gone (hyper closes on its half-close): only the counters
    // can tell whom the proxy blamed.
    cut.shutdown().await.unwrap();
    let _ = read_response(&mut cut).await;

    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 300]))),
    );
    let reply = client()
        .post(proxy.url("/echo"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 413);

    eventually("both broken bodies counted", WAIT, async || {
        let broken = metric(
            &proxy,
            "switchyard_client_errors_total{reason=\"body_error\"}",
        )
        .await;
        (broken == 2.0).then_some(())
    })
    .await;
    assert!(backend(&proxy, b1.address).is_healthy());
    assert_eq!(
        metric(&proxy, "switchyard_upstream_errors_total").await,
        0.0
    );
    assert_eq!(
        metric(
            &proxy,
            "switchyard_client_errors_total{reason=\"body_too_large\"}"
        )
        .await,
        1.0
    );
}
