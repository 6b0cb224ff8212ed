//! A backend (or pool) that has left the config takes its series away once its drain is over
//! and nothing it served is still open; one that comes back counts again from zero.

use std::time::Duration;

use super::{scrape, total};
use crate::support::*;

const HEALTH: &str = "[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\n\n\
                      [timeouts]\ndrain = \"1s\"\n";

/// The series (`name{labels}`) whose `backend` label is `address`.
async fn naming(proxy: &TestProxy, address: &str) -> Vec<String> {
    scrape(proxy)
        .await
        .into_iter()
        .filter(|s| s.labels.get("backend").is_some_and(|b| b == address))
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect()
}

/// Sends `GET /name` until `backend` has answered `times` of them.
async fn traffic_to(proxy: &TestProxy, backend: &TestBackend, times: usize) {
    let client = client();
    eventually(
        "the backend got its share of requests",
        Duration::from_secs(5),
        async || {
            let reply = client.get(proxy.url("/name")).send().await.unwrap();
            assert_eq!(reply.status(), 200);
            (backend.requests() >= times).then_some(())
        },
    )
    .await;
}

async fn until_gone(proxy: &TestProxy, address: &str) {
    eventually(
        "no series names the backend",
        Duration::from_secs(5),
        async || naming(proxy, address).await.is_empty().then_some(()),
    )
    .await;
}

#[tokio::test]
async fn a_removed_backend_leaves_no_series_after_its_drain() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let (a_address, b_address) = (a.address.to_string(), b.address.to_string());
    let both = config_for(&[("blue", &[&a, &b])], "\"blue\"", HEALTH);
    let proxy = TestProxy::start(&both).await;
    traffic_to(&proxy, &b, 2).await;
    let named = eventually(
        "b's probes are counted",
        Duration::from_secs(5),
        async || {
            let named = naming(&proxy, &b_address).await;
            named
                .iter()
                .any(|s| s.starts_with("switchyard_health_probes_total"))
                .then_some(named)
        },
    )
    .await;
    for family in [
        "switchyard_requests_total",
        "switchyard_upstream_response_seconds_count",
        "switchyard_backend_healthy",
        "switchyard_backend_in_flight",
    ] {
        assert!(
            named.iter().any(|s| s.starts_with(family)),
            "{family}: {named:#?}"
        );
    }

    proxy
        .reload(&config_for(&[("blue", &[&a])], "\"blue\"", HEALTH))
        .await
        .unwrap();
    let draining = scrape(&proxy).await;
    let removed = [("pool", "(removed)"), ("backend", b_address.as_str())];
    assert_eq!(
        total(&draining, "switchyard_backend_draining", &removed),
        1.0
    );
    until_gone(&proxy, &b_address).await;
    // The one that stays keeps its own.
    let kept = naming(&proxy, &a_address).await;
    assert!(
        kept.iter()
            .any(|s| s.starts_with("switchyard_health_probes_total")),
        "{kept:#?}"
    );
}

#[tokio::test]
async fn a_removed_backend_still_serving_keeps_its_series_until_done() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let b_address = b.address.to_string();
    let extra = "[timeouts]\ndrain = \"100ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&b])], "\"blue\"", extra)).await;
    // A plain body that outlives the drain: only a stream (SSE, WebSocket) is cut by it.
    let mut long = client()
        .get(proxy.url("/drip?count=100000&every_ms=20"))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    assert!(long.chunk().await.unwrap().is_some());

    proxy
        .reload(&config_for(&[("blue", &[&a])], "\"blue\"", extra))
        .await
        .unwrap();
    eventually("b's drain ends", Duration::from_secs(5), async || {
        (!proxy
            .state
            .snapshot()
            .backends
            .contains_key(b_address.as_str()))
        .then_some(())
    })
    .await;
    assert!(
        long.chunk().await.unwrap().is_some(),
        "the body still flows"
    );
    let samples = scrape(&proxy).await;
    let served = [("pool", "blue"), ("backend", b_address.as_str())];
    assert_eq!(total(&samples, "switchyard_requests_total", &served), 1.0);
    let removed = [("pool", "(removed)"), ("backend", b_address.as_str())];
    assert_eq!(
        total(&samples, "switchyard_backend_in_flight", &removed),
        1.0
    );

    drop(long);
    until_gone(&proxy, &b_address).await;
}

#[tokio::test]
async fn a_backend_removed_and_added_back_counts_again() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let b_address = b.address.to_string();
    let both = config_for(&[("blue", &[&a, &b])], "\"blue\"", HEALTH);
    let proxy = TestProxy::start(&both).await;
    traffic_to(&proxy, &b, 1).await;
    proxy
        .reload(&config_for(&[("blue", &[&a])], "\"blue\"", HEALTH))
        .await
        .unwrap();
    until_gone(&proxy, &b_address).await;

    proxy.reload(&both).await.unwrap();
    let before = b.requests();
    traffic_to(&proxy, &b, before + 3).await;
    let labels = [("pool", "blue"), ("backend", b_address.as_str())];
    let samples = eventually(
        "b's new requests are counted",
        Duration::from_secs(5),
        async || {
            let samples = scrape(&proxy).await;
            (total(&samples, "switchyard_requests_total", &labels) == 3.0).then_some(samples)
        },
    )
    .await;
    assert_eq!(
        total(
            &samples,
            "switchyard_upstream_response_seconds_count",
            &labels
        ),
        3.0
    );
    let probes = [("backend", b_address.as_str())];
    eventually(
        "b's probes are counted again",
        Duration::from_secs(5),
        async || {
            let samples = scrape(&proxy).await;
            (total(&samples, "switchyard_health_probes_total", &probes) > 0.0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_pool_removed_by_a_reload_takes_its_series_along() {
    let a = TestBackend::start("a").await;
    let a_address = a.address.to_string();
    let extra = "[timeouts]\ndrain = \"100ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", extra)).await;
    traffic_to(&proxy, &a, 1).await;
    // The same backend, now in a pool of another name.
    proxy
        .reload(&config_for(&[("azure", &[&a])], "\"azure\"", extra))
        .await
        .unwrap();
    traffic_to(&proxy, &a, 2).await;
    eventually(
        "pool blue's series are gone",
        Duration::from_secs(5),
        async || {
            let samples = scrape(&proxy).await;
            let blue = samples
                .iter()
                .any(|s| s.labels.get("pool").is_some_and(|p| p == "blue"));
            let azure = [("pool", "azure"), ("backend", a_address.as_str())];
            let counted = total(&samples, "switchyard_requests_total", &azure) == 1.0;
            (!blue && counted).then_some(())
        },
    )
    .await;
}
