//! The series that name a backend: the handles a target counts with, and their removal once
//! the backend has left and nothing can count for it any more (the state layer decides when).

use std::sync::{OnceLock, PoisonError};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{
    BackendLabels, Metrics, ProbeLabels, RequestLabels, RouteLabels, RouteName, TransitionLabels,
};

/// Every outcome `switchyard_health_probes_total` counts (`ProbeOutcome::as_str`).
pub const PROBE_OUTCOMES: [&str; 4] = ["pass", "bad_status", "timeout", "error"];

/// Every state `switchyard_health_transitions_total` counts a turn to.
pub const HEALTH_STATES: [&str; 2] = ["healthy", "unhealthy"];

impl Metrics {
    /// The `switchyard_requests_total` series `labels`, noted so that it can be removed: the
    /// family cannot list its own label sets, and statuses are not a closed set.
    fn request_counter(&self, labels: &RequestLabels) -> Counter {
        self.request_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(labels.clone());
        self.requests.get_or_create_owned(labels)
    }

    /// Removes the series that name `backend` in `pool`. Only once no handle can count for
    /// them again: a handle kept past this point would count into a series no scrape shows.
    pub fn forget_target(&self, pool: &str, backend: &str) {
        let labels = BackendLabels {
            pool: pool.to_string(),
            backend: backend.to_string(),
        };
        self.upstream_latency.remove(&labels);
        self.ejections.remove(&labels);
        let mut series = self
            .request_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        series.retain(|l| {
            let ours = l.pool == pool && l.backend == backend;
            if ours {
                self.requests.remove(l);
            }
            !ours
        });
    }

    /// Removes the series that name `backend` whatever its pool: its probes and health turns.
    pub fn forget_backend(&self, backend: &str) {
        for outcome in PROBE_OUTCOMES {
            self.health_probes.remove(&ProbeLabels {
                backend: backend.to_string(),
                outcome,
            });
        }
        for to in HEALTH_STATES {
            self.health_transitions.remove(&TransitionLabels {
                backend: backend.to_string(),
                to,
            });
        }
    }
}

/// How many (class, status) series of `switchyard_requests_total` one target keeps a handle
/// for; a rarer combination beyond these is counted through the family.
const REQUEST_SLOTS: usize = 12;

/// The series one backend's requests move, as handles taken on first use and kept for the
/// snapshot's life: a request counts with an atomic add instead of building label `String`s and
/// hashing them into the family. Taken lazily, so `/metrics` shows exactly the series that
/// traffic created, as it did when every request went through `get_or_create`.
#[derive(Debug)]
pub struct TargetMetrics {
    pool: std::sync::Arc<str>,
    backend: std::sync::Arc<str>,
    latency: OnceLock<Histogram>,
    requests: [OnceLock<(&'static str, u16, Counter)>; REQUEST_SLOTS],
}

impl TargetMetrics {
    pub fn new(pool: std::sync::Arc<str>, backend: std::sync::Arc<str>) -> TargetMetrics {
        TargetMetrics {
            pool,
            backend,
            latency: OnceLock::new(),
            requests: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    pub fn pool(&self) -> &std::sync::Arc<str> {
        &self.pool
    }

    /// `switchyard_upstream_response_seconds` for this target.
    pub fn observe_latency(&self, metrics: &Metrics, seconds: f64) {
        self.latency
            .get_or_init(|| {
                metrics
                    .upstream_latency
                    .get_or_create_owned(&self.backend_labels())
            })
            .observe(seconds);
    }

    /// `switchyard_requests_total` for this target.
    pub fn count_request(&self, metrics: &Metrics, class: &'static str, status: u16) {
        for slot in &self.requests {
            // The first free slot is claimed for this combination; a slot another thread
            // claimed meanwhile for another one is simply passed over.
            let (slot_class, slot_status, counter) = slot.get_or_init(|| {
                let counter = metrics.request_counter(&self.request_labels(class, status));
                (class, status, counter)
            });
            if *slot_status == status && *slot_class == class {
                counter.inc();
                return;
            }
        }
        let labels = self.request_labels(class, status);
        match metrics.requests.get(&labels) {
            Some(counter) => counter.inc(),
            None => metrics.request_counter(&labels).inc(),
        };
    }

    fn backend_labels(&self) -> BackendLabels {
        BackendLabels {
            pool: self.pool.to_string(),
            backend: self.backend.to_string(),
        }
    }

    fn request_labels(&self, class: &'static str, status: u16) -> RequestLabels {
        RequestLabels {
            class,
            status,
            pool: self.pool.to_string(),
            backend: self.backend.to_string(),
        }
    }
}

/// How many statuses of `switchyard_route_requests_total` one route keeps a handle for; a rarer
/// status beyond these is counted through the family.
const ROUTE_SLOTS: usize = 8;

/// The series one route's answers move: like [`TargetMetrics`], handles taken on first use and
/// kept for the snapshot's life, so counting an answer is an atomic add, not a hash of the
/// route's name into the family under its lock. The family hands a rebuilt snapshot the same
/// series, so counts carry over a reload.
#[derive(Debug)]
pub struct RouteMetrics {
    name: RouteName,
    requests: [OnceLock<(u16, Counter)>; ROUTE_SLOTS],
}

impl RouteMetrics {
    pub fn new(name: std::sync::Arc<str>) -> RouteMetrics {
        RouteMetrics {
            name: RouteName(name),
            requests: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// `switchyard_route_requests_total` for this route and `status`.
    pub fn count(&self, metrics: &Metrics, status: u16) {
        for slot in &self.requests {
            let (slot_status, counter) = slot.get_or_init(|| {
                let counter = metrics
                    .route_requests
                    .get_or_create_owned(&self.labels(status));
                (status, counter)
            });
            if *slot_status == status {
                counter.inc();
                return;
            }
        }
        metrics
            .route_requests
            .get_or_create(&self.labels(status))
            .inc();
    }

    fn labels(&self, status: u16) -> RouteLabels {
        RouteLabels {
            route: self.name.clone(),
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(name))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn target_handles_create_only_the_series_traffic_moves() {
        let metrics = Metrics::new();
        let target = TargetMetrics::new("blue".into(), "10.0.0.1:80".into());
        assert!(series(&metrics, "switchyard_requests_total").is_empty());
        // More combinations than slots: the rest are counted through the family.
        for status in 200..200 + REQUEST_SLOTS as u16 + 5 {
            target.count_request(&metrics, "message", status);
        }
        target.count_request(&metrics, "message", 200);
        target.count_request(&metrics, "sse", 200);
        let requests = series(&metrics, "switchyard_requests_total");
        assert_eq!(requests.len(), REQUEST_SLOTS + 5 + 1, "{requests:#?}");
        let ok = "switchyard_requests_total{class=\"message\",status=\"200\",pool=\"blue\",backend=\"10.0.0.1:80\"} 2";
        assert!(requests.iter().any(|l| l == ok), "{requests:#?}");
        let last = 200 + REQUEST_SLOTS as u16 + 4;
        assert!(
            requests
                .iter()
                .any(|l| l.contains(&format!("status=\"{last}\"")) && l.ends_with(" 1")),
            "{requests:#?}"
        );
        assert!(series(&metrics, "switchyard_upstream_response_seconds_count").is_empty());
        target.observe_latency(&metrics, 0.001);
        target.observe_latency(&metrics, 0.002);
        let latency = series(&metrics, "switchyard_upstream_response_seconds_count");
        assert_eq!(
            latency,
            ["switchyard_upstream_response_seconds_count{pool=\"blue\",backend=\"10.0.0.1:80\"} 2"]
        );
    }

    #[test]
    fn route_handles_count_into_the_family_and_carry_over_a_rebuild() {
        let metrics = Metrics::new();
        let route = RouteMetrics::new("github".into());
        assert!(series(&metrics, "switchyard_route_requests_total").is_empty());
        // More statuses than slots: the rest are counted through the family.
        for status in 200..200 + ROUTE_SLOTS as u16 + 3 {
            route.count(&metrics, status);
        }
        route.count(&metrics, 200);
        // A reload builds new handles; they find the same series.
        let rebuilt = RouteMetrics::new("github".into());
        rebuilt.count(&metrics, 200);
        let last = 200 + ROUTE_SLOTS as u16 + 2;
        rebuilt.count(&metrics, last);
        let requests = series(&metrics, "switchyard_route_requests_total");
        assert_eq!(requests.len(), ROUTE_SLOTS + 3, "{requests:#?}");
        let ok = "switchyard_route_requests_total{route=\"github\",status=\"200\"} 3";
        assert!(requests.iter().any(|l| l == ok), "{requests:#?}");
        let rare =
            format!("switchyard_route_requests_total{{route=\"github\",status=\"{last}\"}} 2");
        assert!(requests.contains(&rare), "{requests:#?}");
    }

    #[test]
    fn forgetting_a_target_removes_its_series_and_no_other() {
        let metrics = Metrics::new();
        let gone = TargetMetrics::new("blue".into(), "10.0.0.1:80".into());
        let stays = TargetMetrics::new("blue".into(), "10.0.0.2:80".into());
        for target in [&gone, &stays] {
            for status in 200..200 + REQUEST_SLOTS as u16 + 2 {
                target.count_request(&metrics, "message", status);
            }
            target.observe_latency(&metrics, 0.001);
        }
        for outcome in PROBE_OUTCOMES {
            let labels = ProbeLabels {
                backend: "10.0.0.1:80".into(),
                outcome,
            };
            metrics.health_probes.get_or_create(&labels).inc();
        }
        metrics.forget_target("blue", "10.0.0.1:80");
        metrics.forget_backend("10.0.0.1:80");
        let text = metrics.encode();
        assert!(!text.contains("10.0.0.1:80"), "{text}");
        let kept = series(&metrics, "switchyard_requests_total");
        assert_eq!(kept.len(), REQUEST_SLOTS + 2, "{kept:#?}");
        assert_eq!(
            series(&metrics, "switchyard_upstream_response_seconds_count").len(),
            1
        );
    }
}
