//! Live counters of one reference backend: what `server_status` reports and `/metrics` exports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters shared by every session of one backend. Each live count is moved by a [`Held`]
/// guard, so a session or stream that ends in any way gives its count back.
#[derive(Debug)]
pub struct Stats {
    pub name: String,
    started: Instant,
    draining: AtomicBool,
    sessions: Gauge,
    streams: Gauge,
    calls_in_flight: Gauge,
    requests: Counter,
    tool_calls: Counter,
    registry: Registry,
}

/// One unit of a live gauge, given back on drop.
#[derive(Debug)]
pub struct Held(Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn hold(gauge: &Gauge) -> Held {
    gauge.inc();
    Held(gauge.clone())
}

impl Stats {
    pub fn new(name: &str) -> Stats {
        let sessions = Gauge::default();
        let streams = Gauge::default();
        let calls_in_flight = Gauge::default();
        let requests = Counter::default();
        let tool_calls = Counter::default();
        let mut registry = Registry::with_prefix("mcp_backend");
        registry.register(
            "open_sessions",
            "MCP sessions open (any transport)",
            sessions.clone(),
        );
        registry.register(
            "open_streams",
            "SSE streams and WebSockets open",
            streams.clone(),
        );
        registry.register(
            "tool_calls_in_flight",
            "Tool calls being executed",
            calls_in_flight.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests served on MCP endpoints",
            requests.clone(),
        );
        registry.register("tool_calls", "Tool calls started", tool_calls.clone());
        Stats {
            name: name.to_string(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            sessions,
            streams,
            calls_in_flight,
            requests,
            tool_calls,
            registry,
        }
    }

    pub fn session(&self) -> Held {
        hold(&self.sessions)
    }

    pub fn stream(&self) -> Held {
        hold(&self.streams)
    }

    pub fn tool_call(&self) -> Held {
        self.tool_calls.inc();
        hold(&self.calls_in_flight)
    }

    pub fn count_request(&self) {
        self.requests.inc();
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn calls_in_flight(&self) -> i64 {
        self.calls_in_flight.get()
    }

    /// What the `server_status` tool answers.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "open_sessions": self.sessions.get(),
            "open_streams": self.streams.get(),
            "requests_served": self.requests.get(),
            "tool_calls": self.tool_calls.get(),
            "tool_calls_in_flight": self.calls_in_flight.get(),
            "draining": self.is_draining(),
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
