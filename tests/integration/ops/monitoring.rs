//! The monitoring files shipped in `docker/monitoring/`: the Grafana dashboard is JSON, the alert
//! rules are YAML in Prometheus's rule-file shape, and every metric name either uses is one a
//! running proxy exposes on `/metrics` once it has seen traffic of every kind they chart.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use yaml_rust2::YamlLoader;

use super::{initialize, scrape};
use crate::support::*;

fn monitoring_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker/monitoring")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric names a PromQL expression uses: ours (`switchyard_…`) and the process ones.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
    for word in words {
        if word.starts_with("switchyard_") || word.starts_with("process_") {
            into.insert(word.to_string());
        }
    }
}

/// Every query of the dashboard: panel targets and template variables.
fn dashboard_queries(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(text)) => into.push(text.clone()),
                    _ => dashboard_queries(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, into)),
        _ => {}
    }
}

fn dashboard_names() -> BTreeSet<String> {
    let dashboard: Value = serde_json::from_str(&monitoring_file("grafana-dashboard.json"))
        .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "switchyard-overview");
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            !panel["targets"].as_array().unwrap().is_empty(),
            "{} has no query",
            panel["title"]
        );
    }
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let mut names = BTreeSet::new();
    queries.iter().for_each(|q| metric_names(q, &mut names));
    names
}

fn alert_names() -> BTreeSet<String> {
    let docs = YamlLoader::load_from_str(&monitoring_file("alerts.yml")).expect("alerts are YAML");
    let rules = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("groups[0].rules");
    let mut names = BTreeSet::new();
    let mut alerts = Vec::new();
    for rule in rules {
        let alert = rule["alert"].as_str().expect("every rule is an alert");
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{alert}: severity"
        );
        assert!(rule["annotations"]["summary"].as_str().is_some(), "{alert}");
        metric_names(rule["expr"].as_str().expect("expr"), &mut names);
        alerts.push(alert.to_string());
    }
    // The conditions an operator must hear about.
    for wanted in [
        "SwitchyardActivePoolWithoutHealthyBackend",
        "SwitchyardReloadRefused",
        "SwitchyardBackendEjected",
        "SwitchyardSessionTableNearlyFull",
    ] {
        assert!(
            alerts.iter().any(|a| a == wanted),
            "no {wanted}: {alerts:?}"
        );
    }
    names
}

/// A proxy that has seen every kind of traffic the files chart: an ejection, failing and passing
/// probes, sessions, a finished SSE stream. Returns the names of every sample on its `/metrics`.
async fn exposed_after_traffic() -> BTreeSet<String> {
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let alive = TestBackend::start("b1").await;
    // The dead backend alone takes new work, probes off: the first request ejects it. It stays
    // in pool green, so its ejection series stays too (series of a pool it left would go).
    let passive = "[health]\ninterval = \"0s\"\nmax_fails = 1\nejection = \"200ms\"\n";
    let first = config_for_addresses(&[("green", &[dead])], "\"green\"", passive);
    let proxy = TestProxy::start(&first).await;
    let refused = client()
        .post(proxy.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 502);
    // Then the live backend takes the traffic while probes find the dead one in the other pool.
    let probes = "[health]\ninterval = \"50ms\"\nfall = 1\nrise = 1\nejection = \"200ms\"\n";
    let second = config_for_addresses(
        &[("blue", &[alive.address]), ("green", &[dead])],
        "\"blue\"",
        probes,
    );
    proxy.reload(&second).await.unwrap();
    initialize(&proxy).await;
    let stream = get_sse(&client(), &proxy.url("/ticks?count=2&every_ms=10")).await;
    stream.bytes().await.unwrap();
    eventually(
        "an ejection, a health transition and a finished stream",
        Duration::from_secs(10),
        async || {
            let samples = scrape(&proxy).await;
            let has = |name: &str| samples.iter().any(|s| s.name == name);
            (has("switchyard_backend_ejections_total")
                && has("switchyard_health_transitions_total")
                && has("switchyard_stream_duration_seconds_bucket"))
            .then(|| samples.into_iter().map(|s| s.name).collect())
        },
    )
    .await
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_metrics_the_proxy_exposes() {
    let dashboard = dashboard_names();
    let alerts = alert_names();
    assert!(dashboard.len() >= 30, "{dashboard:?}");
    for needed in [
        "switchyard_requests_total",
        "switchyard_upstream_response_seconds_bucket",
        "switchyard_backend_open_streams",
        "switchyard_sessions_tracked",
        "switchyard_backend_healthy",
        "switchyard_reloads_total",
        "switchyard_tls_handshakes_total",
        "process_resident_memory_bytes",
    ] {
        assert!(dashboard.contains(needed), "the dashboard charts {needed}");
    }
    let exposed = exposed_after_traffic().await;
    let missing: Vec<&String> = dashboard
        .union(&alerts)
        .filter(|name| !exposed.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not on /metrics: {missing:?}\nexposed: {exposed:?}"
    );
}
