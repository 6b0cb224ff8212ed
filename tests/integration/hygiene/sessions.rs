//! A full session table refuses new sessions (`503`) instead of admitting sessions it cannot
//! route; every session it admitted keeps working.

use super::*;

#[tokio::test]
async fn full_session_table_refuses_new_sessions_and_keeps_admitted_ones() {
    let b1 = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config(&[b1.address], "[sessions]\nmax_sessions = 3\n")).await;
    let client = client();
    let url = proxy.url("/mcp");
    let mut admitted = Vec::new();
    for _ in 0..3 {
        admitted.push(new_session(&client, &url).await);
    }
    let before = b1.requests();
    let refused = client.post(&url).body("{}").send().await.unwrap();
    let status = refused.status();
    if status == 200 {
        // What used to happen: a session handed out but never learned.
        let orphan = session_of(&refused);
        let next = post_in_session(&client, &url, &orphan).await.status();
        panic!("a session was admitted past the limit; its next request got {next}");
    }
    assert_eq!(status, 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        b1.requests(),
        before,
        "a refused initialize reached the backend"
    );
    for session in &admitted {
        assert_eq!(post_in_session(&client, &url, session).await.status(), 200);
    }

    // A session that ends makes room for exactly one more, even when many race for it.
    let ended = client
        .delete(&url)
        .header("mcp-session-id", &admitted[0])
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let racers = (0..8).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let reply = client.post(&url).body("{}").send().await.unwrap();
            let session = (reply.status() == 200).then(|| session_of(&reply));
            (reply.status().as_u16(), session)
        })
    });
    let mut winners = Vec::new();
    for racer in racers {
        let (status, session) = racer.await.unwrap();
        match session {
            Some(session) => winners.push(session),
            None => assert_eq!(status, 503),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    for session in winners.iter().chain(&admitted[1..]) {
        assert_eq!(post_in_session(&client, &url, session).await.status(), 200);
    }
    assert_eq!(proxy.state.sessions.len(), 3);
    assert_eq!(
        metric(&proxy, "switchyard_sessions_refused_total").await,
        8.0
    );
}

/// Requests that cannot open a session are not refused by a full table.
#[tokio::test]
async fn full_session_table_still_serves_sessionless_reads() {
    let b1 = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config(&[b1.address], "[sessions]\nmax_sessions = 1\n")).await;
    let client = client();
    new_session(&client, &proxy.url("/mcp")).await;
    let reply = client.get(proxy.url("/name")).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await.unwrap(), "b1");
}
