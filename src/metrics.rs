//! Prometheus metrics (prometheus-client), served on the admin listener's `/metrics`.
//!
//! Counters move on the request path; per-backend live values (in-flight, open streams, health)
//! already live in the backends' atomics and are copied into gauges when the endpoint is scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::Snapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub class: &'static str,
    pub status: u16,
    pub pool: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub pool: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_latency: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<OutcomeLabels, Counter>,
    pub stream_duration: Family<ClassLabels, Histogram, fn() -> Histogram>,
    pub in_flight: Family<BackendLabels, Gauge>,
    pub open_streams: Family<BackendLabels, Gauge>,
    pub backend_healthy: Family<BackendLabels, Gauge>,
    pub backend_draining: Family<BackendLabels, Gauge>,
    pub sessions_tracked: Gauge,
    pub sessions_learned: Counter,
    pub sessions_expired: Counter,
    pub sessions_forgotten: Counter,
    pub sessions_lost: Counter,
    pub session_tokens_rejected: Counter,
    pub discovery_lookups: Family<OutcomeLabels, Counter>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub keepalives: Counter,
    pub streams_drained: Counter,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub config_generation: Gauge,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

fn duration_histogram() -> Histogram {
    // 10 ms .. ~3 days
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.01, 4.0, 13,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        let m = Metrics {
            requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
            stream_duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            open_streams: Family::default(),
            backend_healthy: Family::default(),
            backend_draining: Family::default(),
            sessions_tracked: Gauge::default(),
            sessions_learned: Counter::default(),
            sessions_expired: Counter::default(),
            sessions_forgotten: Counter::default(),
            sessions_lost: Counter::default(),
            session_tokens_rejected: Counter::default(),
            discovery_lookups: Family::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            keepalives: Counter::default(),
            streams_drained: Counter::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            reloads: Family::default(),
            config_generation: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests answered, by route class, status, pool and backend",
            m.requests.clone(),
        );
        r.register(
            "upstream_response_seconds",
            "Time from sending a request to a backend to its response head",
            m.upstream_latency.clone(),
        );
        r.register(
            "upstream_errors",
            "Requests that got no response from a backend, by reason",
            m.upstream_errors.clone(),
        );
        r.register(
            "stream_duration_seconds",
            "How long SSE streams and WebSocket tunnels stayed open",
            m.stream_duration.clone(),
        );
        r.register(
            "backend_in_flight",
            "Requests and streams open on a backend",
            m.in_flight.clone(),
        );
        r.register(
            "backend_open_streams",
            "SSE streams and WebSocket tunnels open on a backend",
            m.open_streams.clone(),
        );
        r.register(
            "backend_healthy",
            "1 when the backend takes traffic, 0 when ejected",
            m.backend_healthy.clone(),
        );
        r.register(
            "backend_draining",
            "1 when the backend takes no new work (inactive pool, removed, or drained by admin)",
            m.backend_draining.clone(),
        );
        r.register(
            "sessions_tracked",
            "MCP sessions in the session table",
            m.sessions_tracked.clone(),
        );
        r.register(
            "sessions_learned",
            "MCP sessions learned from responses",
            m.sessions_learned.clone(),
        );
        r.register(
            "sessions_expired",
            "MCP sessions dropped after being idle",
            m.sessions_expired.clone(),
        );
        r.register(
            "sessions_forgotten",
            "MCP sessions ended by DELETE or unknown to their owner",
            m.sessions_forgotten.clone(),
        );
        r.register(
            "sessions_lost",
            "Requests answered 404 because their session's owner is gone or unknown",
            m.sessions_lost.clone(),
        );
        r.register(
            "session_tokens_rejected",
            "Requests answered 404 because their sealed session token does not open (forged, \
             tampered, or sealed with a key no longer configured)",
            m.session_tokens_rejected.clone(),
        );
        r.register(
            "discovery_lookups",
            "DNS lookups of hostname pool entries, by outcome (success, failure)",
            m.discovery_lookups.clone(),
        );
        r.register(
            "bytes_in",
            "Request body bytes received from clients",
            m.bytes_in.clone(),
        );
        r.register(
            "bytes_out",
            "Response body bytes sent to clients",
            m.bytes_out.clone(),
        );
        r.register(
            "sse_keepalives",
            "Keepalive comments injected into silent SSE streams",
            m.keepalives.clone(),
        );
        r.register(
            "streams_drained",
            "Streams closed at an event boundary by a drain",
            m.streams_drained.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open",
            m.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections refused at the connection limit",
            m.connections_refused.clone(),
        );
        r.register(
            "reloads",
            "Configuration reloads, by outcome",
            m.reloads.clone(),
        );
        r.register(
            "config_generation",
            "Generation of the configuration in force",
            m.config_generation.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Copies live per-backend values into gauges and renders the Prometheus text format.
    pub fn render(&self, snapshot: &Snapshot, sessions: usize) -> String {
        for (pool, member) in snapshot.all_members() {
            let labels = BackendLabels {
                pool: pool.to_string(),
                backend: member.backend.address.to_string(),
            };
            let b = &member.backend;
            self.in_flight.get_or_create(&labels).set(b.load() as i64);
            self.open_streams
                .get_or_create(&labels)
                .set(b.open_streams() as i64);
            self.backend_healthy
                .get_or_create(&labels)
                .set(i64::from(b.is_healthy()));
            let draining = !snapshot.is_active_member(pool, b);
            self.backend_draining
                .get_or_create(&labels)
                .set(i64::from(draining));
        }
        self.sessions_tracked.set(sessions as i64);
        self.config_generation.set(snapshot.generation as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
