//! The proxy's Prometheus/OpenMetrics exposition: it parses and its counters move with traffic
//! (a backend that leaves takes its series along: `stale_series`).

use std::time::Duration;

use super::{call, initialize, scrape, total};
use crate::support::*;

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let backend = a.address.to_string();
    let before = scrape(&proxy).await;
    let message = [("class", "message"), ("status", "200"), ("pool", "blue")];
    assert_eq!(total(&before, "switchyard_requests_total", &message), 0.0);
    assert_eq!(total(&before, "switchyard_config_generation", &[]), 1.0);
    let labels = [("pool", "blue"), ("backend", backend.as_str())];
    assert_eq!(total(&before, "switchyard_backend_healthy", &labels), 1.0);
    // The build and the process, under the names stock dashboards use.
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(total(&before, "switchyard_build_info", &version), 1.0);
    assert!(total(&before, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(total(&before, "process_open_fds", &[]) > 0.0);
    assert!(total(&before, "process_max_fds", &[]) >= total(&before, "process_open_fds", &[]));
    assert!(total(&before, "process_start_time_seconds", &[]) > 1.6e9);
    assert!(before.iter().any(|s| s.name == "process_cpu_seconds_total"));
    assert_eq!(total(&before, "switchyard_sessions_max", &[]), 1_000_000.0);
    // Counters that alerts watch with increase() exist at 0 before their first event.
    let failure = [("outcome", "failure")];
    assert!(before.iter().any(|s| s.name == "switchyard_reloads_total"
        && s.labels.get("outcome").is_some_and(|o| o == "failure")));
    assert_eq!(total(&before, "switchyard_reloads_total", &failure), 0.0);

    let session = initialize(&proxy).await;
    for _ in 0..3 {
        assert_eq!(call(&proxy, &session).await.0, 200);
    }
    assert_eq!(call(&proxy, "nobody").await.0, 404);
    let stream = get_sse(&client(), &proxy.url("/ticks?count=2&every_ms=10")).await;
    assert_eq!(stream.text().await.unwrap().matches("data:").count(), 2);

    let after = eventually(
        // The stream's connection goes back to the pool just after its last byte.
        "the stream finished and its connection is idle",
        Duration::from_secs(5),
        async || {
            let samples = scrape(&proxy).await;
            let streams = total(
                &samples,
                "switchyard_stream_duration_seconds_count",
                &[("class", "sse")],
            );
            let idle = total(&samples, "switchyard_backend_idle_connections", &labels);
            (streams == 1.0 && idle >= 1.0).then_some(samples)
        },
    )
    .await;
    assert_eq!(total(&after, "switchyard_requests_total", &message), 4.0);
    assert_eq!(
        total(
            &after,
            "switchyard_requests_total",
            &[("class", "message"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(total(&after, "switchyard_sessions_learned_total", &[]), 1.0);
    assert_eq!(total(&after, "switchyard_sessions_tracked", &[]), 1.0);
    assert_eq!(total(&after, "switchyard_sessions_lost_total", &[]), 1.0);
    assert_eq!(total(&after, "switchyard_backend_sessions", &labels), 1.0);
    assert_eq!(
        total(
            &after,
            "switchyard_upstream_response_seconds_count",
            &labels
        ),
        5.0
    );
    assert!(total(&after, "switchyard_bytes_in_total", &[]) > 0.0);
    assert!(total(&after, "switchyard_bytes_out_total", &[]) > 0.0);
    assert_eq!(total(&after, "switchyard_backend_in_flight", &labels), 0.0);
}
