//! Prometheus metrics (prometheus-client), served on the admin listener's `/metrics`.
//!
//! Counters move on the request path; per-backend live values (in-flight, open streams, health)
//! already live in the backends' atomics and are copied into gauges when the endpoint is scraped
//! (by `State::render_metrics` in the state layer).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::sync::PoisonError;

mod process;
mod targets;

pub use targets::{HEALTH_STATES, PROBE_OUTCOMES, RouteMetrics, TargetMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub class: &'static str,
    pub status: u16,
    pub pool: String,
    pub backend: String,
}

/// A route's name as a label value: an `Arc` shared with the snapshot, so counting a request
/// per route clones a pointer instead of building a `String`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteName(pub std::sync::Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for RouteName {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: RouteName,
    pub status: u16,
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
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub backend: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub backend: String,
    pub to: &'static str,
}

/// One MCP call: its method (a known one, `other` or `unknown`) and tool (bounded: see
/// [`Metrics::tool_label`]), and the HTTP status that answered it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    pub tool: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub method: &'static str,
    pub tool: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub route_requests: Family<RouteLabels, Counter>,
    pub upstream_latency: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<OutcomeLabels, Counter>,
    pub client_errors: Family<ReasonLabels, Counter>,
    pub stream_duration: Family<ClassLabels, Histogram, fn() -> Histogram>,
    pub in_flight: Family<BackendLabels, Gauge>,
    pub open_streams: Family<BackendLabels, Gauge>,
    pub backend_healthy: Family<BackendLabels, Gauge>,
    pub backend_draining: Family<BackendLabels, Gauge>,
    pub backend_drained_by_admin: Family<BackendLabels, Gauge>,
    pub backend_idle_connections: Family<BackendLabels, Gauge>,
    pub backend_sessions: Family<BackendLabels, Gauge>,
    pub admin_unauthorized: Counter,
    /// Serialises scrapes: the per-backend gauges are rebuilt from scratch on each one.
    scrape: std::sync::Mutex<()>,
    pub sessions_tracked: Gauge,
    pub sessions_max: Gauge,
    pub sessions_learned: Counter,
    pub sessions_expired: Counter,
    pub sessions_forgotten: Counter,
    pub sessions_lost: Counter,
    pub sessions_refused: Counter,
    pub session_tokens_rejected: Counter,
    pub discovery_lookups: Family<OutcomeLabels, Counter>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub keepalives: Counter,
    pub streams_drained: Counter,
    pub connections_open: Gauge,
    pub connections_parked: Gauge,
    pub connections_refused: Counter,
    pub tls_handshakes: Family<OutcomeLabels, Counter>,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub config_generation: Gauge,
    pub health_probes: Family<ProbeLabels, Counter>,
    pub health_transitions: Family<TransitionLabels, Counter>,
    pub ejections: Family<BackendLabels, Counter>,
    pub mcp_calls: Family<CallLabels, Counter>,
    pub mcp_call_duration: Family<ToolLabels, Histogram, fn() -> Histogram>,
    pub policy_denials: Family<ReasonLabels, Counter>,
    pub jwks_refreshes: Family<OutcomeLabels, Counter>,
    /// Tool names that have a label of their own, at most the configured number.
    tools_labelled: std::sync::Mutex<rustc_hash::FxHashSet<Box<str>>>,
    /// The `requests` series that name a backend, so that one that left can take them away.
    request_series: std::sync::Mutex<rustc_hash::FxHashSet<RequestLabels>>,
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
        let mut registry = Registry::default();
        // Unprefixed, as every client library names them, so stock process dashboards work.
        registry.register_collector(Box::new(process::ProcessCollector));
        let m = Metrics {
            requests: Family::default(),
            route_requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
            client_errors: Family::default(),
            stream_duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            open_streams: Family::default(),
            backend_healthy: Family::default(),
            backend_draining: Family::default(),
            backend_drained_by_admin: Family::default(),
            backend_idle_connections: Family::default(),
            backend_sessions: Family::default(),
            admin_unauthorized: Counter::default(),
            scrape: std::sync::Mutex::new(()),
            sessions_tracked: Gauge::default(),
            sessions_max: Gauge::default(),
            sessions_learned: Counter::default(),
            sessions_expired: Counter::default(),
            sessions_forgotten: Counter::default(),
            sessions_lost: Counter::default(),
            sessions_refused: Counter::default(),
            session_tokens_rejected: Counter::default(),
            discovery_lookups: Family::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            keepalives: Counter::default(),
            streams_drained: Counter::default(),
            connections_open: Gauge::default(),
            connections_parked: Gauge::default(),
            connections_refused: Counter::default(),
            tls_handshakes: Family::default(),
            reloads: Family::default(),
            config_generation: Gauge::default(),
            health_probes: Family::default(),
            health_transitions: Family::default(),
            ejections: Family::default(),
            mcp_calls: Family::default(),
            mcp_call_duration: Family::new_with_constructor(latency_histogram),
            policy_denials: Family::default(),
            jwks_refreshes: Family::default(),
            tools_labelled: std::sync::Mutex::default(),
            request_series: std::sync::Mutex::default(),
            registry: Registry::default(),
        };
        let r = registry.sub_registry_with_prefix("switchyard");
        r.register(
            "build",
            "The running build: its version as a label, value 1",
            prometheus_client::metrics::info::Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "requests",
            "Requests answered, by route class, status, pool and backend",
            m.requests.clone(),
        );
        r.register(
            "route_requests",
            "Requests answered, by route and status (route \"\" when no route matched)",
            m.route_requests.clone(),
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
            "client_errors",
            "Requests the proxy refused or gave up on because of the client, by reason",
            m.client_errors.clone(),
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
            "backend_drained_by_admin",
            "1 when an operator drained the backend through the admin API",
            m.backend_drained_by_admin.clone(),
        );
        r.register(
            "backend_idle_connections",
            "Keep-alive connections to the backend parked for reuse (in use ones: backend_in_flight)",
            m.backend_idle_connections.clone(),
        );
        r.register(
            "backend_sessions",
            "MCP sessions owned by the backend",
            m.backend_sessions.clone(),
        );
        r.register(
            "admin_unauthorized",
            "Admin API requests refused for a missing or wrong bearer token",
            m.admin_unauthorized.clone(),
        );
        r.register(
            "sessions_tracked",
            "MCP sessions in the session table",
            m.sessions_tracked.clone(),
        );
        r.register(
            "sessions_max",
            "Capacity of the session table (sessions.max_sessions); sessions beyond it are not \
             learned",
            m.sessions_max.clone(),
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
            "Requests answered 404 because their session's owner is gone, out or unknown",
            m.sessions_lost.clone(),
        );
        r.register(
            "sessions_refused",
            "Requests that could open a session answered 503 because the session table is full",
            m.sessions_refused.clone(),
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
            "connections_parked",
            "Idle HTTP/1 client connections waiting for their next request without buffers",
            m.connections_parked.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections refused at the connection limit",
            m.connections_refused.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes on client listeners, by outcome (success, failure, timeout)",
            m.tls_handshakes.clone(),
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
        r.register(
            "health_probes",
            "Active health probes, by backend and outcome (pass, bad_status, timeout, error)",
            m.health_probes.clone(),
        );
        r.register(
            "health_transitions",
            "Backends turning healthy or unhealthy, by the state they turned to",
            m.health_transitions.clone(),
        );
        r.register(
            "backend_ejections",
            "Backends ejected because real traffic failed past health.max_fails",
            m.ejections.clone(),
        );
        r.register(
            "mcp_calls",
            "MCP calls (each element of a batch), by JSON-RPC method, tool and HTTP status; only \
             with [policy]",
            m.mcp_calls.clone(),
        );
        r.register(
            "mcp_call_duration_seconds",
            "Time from an MCP call's request to the end of its response, by method and tool",
            m.mcp_call_duration.clone(),
        );
        r.register(
            "policy_denials",
            "Requests refused by [policy], by reason (unauthorized, forbidden, rate_limited, \
             mismatch, ambiguous)",
            m.policy_denials.clone(),
        );
        r.register(
            "jwks_refreshes",
            "Fetches of the token signing keys (JWKS), by outcome (success, failure)",
            m.jwks_refreshes.clone(),
        );
        m.start_at_zero();
        Metrics { registry, ..m }
    }

    /// Shows the counters that alerts watch at 0 from the start: `increase()` over a series
    /// that first appears at 1 is 0, so without this the first refused reload or failed
    /// handshake would never fire an alert. The outcomes are those the proxy counts (reload,
    /// TLS accept, `UpstreamError::kind`).
    fn start_at_zero(&self) {
        let families = [
            (&self.reloads, &["success", "failure"][..]),
            (&self.tls_handshakes, &["success", "failure", "timeout"][..]),
            (
                &self.upstream_errors,
                &[
                    "connect",
                    "connect_timeout",
                    "handshake",
                    "response_timeout",
                    "request",
                ][..],
            ),
        ];
        for (family, outcomes) in families {
            for &outcome in outcomes {
                let _created = family.get_or_create(&OutcomeLabels { outcome });
            }
        }
    }

    /// The label of tool `name`: itself while fewer than `max` distinct names have labels (a
    /// name once labelled keeps its label), else `other`, so clients cannot grow the series.
    pub fn tool_label(&self, name: &str, max: usize) -> String {
        let mut labelled = self
            .tools_labelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if labelled.contains(name) {
            return name.to_string();
        }
        if labelled.len() < max {
            labelled.insert(name.into());
            return name.to_string();
        }
        "other".to_string()
    }

    /// Held while a scrape rebuilds the per-backend gauges and encodes them.
    pub fn scrape_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.scrape.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The gauges that mirror live per-backend values, cleared before each scrape so that
    /// backends gone from the config leave no stale series.
    pub fn per_backend_gauges(&self) -> [&Family<BackendLabels, Gauge>; 7] {
        [
            &self.in_flight,
            &self.open_streams,
            &self.backend_healthy,
            &self.backend_draining,
            &self.backend_drained_by_admin,
            &self.backend_idle_connections,
            &self.backend_sessions,
        ]
    }

    /// The Prometheus text format of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
