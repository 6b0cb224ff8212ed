//! The data plane's timers and connection pool: one timer per exchange, carried into the response
//! body and re-armed from the last activity; parked connections pruned in the background.

use std::time::{Duration, Instant};

use crate::support::*;

/// The response timeout bounds the silence between body chunks, not the whole body: a steady body
/// runs past it, a stalled one is cut.
#[tokio::test]
async fn a_steady_body_outlives_the_response_timeout_and_a_stalled_one_is_cut() {
    let a = TestBackend::start("b1").await;
    let extra = "[timeouts]\nresponse = \"300ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", extra)).await;
    let steady = client()
        .get(proxy.url("/drip?every_ms=100&count=8"))
        .send()
        .await
        .unwrap();
    assert_eq!(steady.status(), 200);
    let text = steady.text().await.unwrap();
    assert_eq!(text.lines().count(), 8, "{text:?}");

    let started = Instant::now();
    let stalled = client()
        .get(proxy.url("/drip?every_ms=900&count=2"))
        .send()
        .await
        .unwrap();
    let text = stalled.text().await.unwrap_or_default();
    assert!(!text.contains("chunk"), "{text:?}");
    assert!(
        started.elapsed() < Duration::from_millis(850),
        "cut after {:?}",
        started.elapsed()
    );
}

/// On an SSE stream the idle timeout and the keepalive share one timer: keepalives fill the
/// silence without counting as activity, so a silent stream still ends at `stream_idle`, while
/// events keep a stream open however long it runs.
#[tokio::test]
async fn keepalives_fill_a_silent_stream_until_stream_idle_ends_it() {
    let a = TestBackend::start("b1").await;
    let extra =
        "[timeouts]\nresponse = \"200ms\"\nstream_idle = \"500ms\"\nsse_keepalive = \"120ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", extra)).await;
    let ticking = get_sse(&client(), &proxy.url("/ticks?every_ms=150&count=8")).await;
    let events = read_events(ticking, 8, Duration::from_secs(5)).await;
    assert_eq!(
        events.len(),
        8,
        "events 150 ms apart outlive a 500 ms idle timeout"
    );

    let started = Instant::now();
    let silent = get_sse(&client(), &proxy.url("/hold")).await;
    let body = tokio::time::timeout(Duration::from_secs(5), silent.bytes())
        .await
        .expect("the silent stream ends")
        .unwrap_or_default();
    let elapsed = started.elapsed();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.matches(": keepalive\n\n").count() >= 2,
        "{body:?} after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(450),
        "ended after {elapsed:?}"
    );
}

/// A parked upstream connection past `upstream.idle_timeout` is dropped by the background task
/// (check-in never scans the pool), and the next request opens a fresh one.
#[tokio::test]
async fn idle_upstream_connections_are_pruned_in_the_background() {
    let a = TestBackend::start("b1").await;
    let extra = "[upstream]\nidle_timeout = \"300ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", extra)).await;
    assert_eq!(get_text(&proxy.url("/name")).await, "b1");
    let backend = proxy.state.snapshot().pools[0].members[0].backend.clone();
    eventually(
        "the connection is parked",
        Duration::from_secs(5),
        async || (backend.idle_connections() == 1).then_some(()),
    )
    .await;
    eventually(
        "the expired connection is pruned",
        Duration::from_secs(5),
        async || (backend.idle_connections() == 0).then_some(()),
    )
    .await;
    assert_eq!(get_text(&proxy.url("/name")).await, "b1");
    assert_eq!(
        a.seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}
