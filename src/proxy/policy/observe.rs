//! What the access log and the metrics learn about a request's MCP calls, once its response
//! ends: method and tool of each call (each element of a batch), who made them, how it ended
//! and how long it took. Labels are bounded: methods outside MCP's own are `other`, tool names
//! beyond `policy.max_tool_labels` are `other`, and a call whose method could not be read is
//! `unknown`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::mcp::identity::{Call, Progress, Scanner};
use crate::metrics::{CallLabels, Metrics, ToolLabels};
use crate::upstream::body::Tap;

/// The methods of MCP (client to server) that get a label of their own.
const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

fn method_label(method: Option<&str>) -> &'static str {
    match method {
        None => "unknown",
        Some(method) => METHODS
            .iter()
            .find(|known| **known == method)
            .copied()
            .unwrap_or("other"),
    }
}

/// The calls of one request: known before it was forwarded, or read from its body as it passes.
#[derive(Debug)]
enum Seen {
    Known(Vec<Call>),
    Scanning(Scanner),
}

/// What the policy phase learned about one request, shared with the tap on its body.
#[derive(Debug)]
pub struct Observed {
    seen: Mutex<Seen>,
    subject: Option<String>,
    max_tool_labels: usize,
}

/// The access log's fields about a request's calls: empty when `[policy]` is off.
#[derive(Debug, Default)]
pub struct LogFields {
    pub method: String,
    pub tool: String,
    pub subject: String,
}

impl Observed {
    pub fn known(calls: Vec<Call>, subject: Option<String>, max_tool_labels: usize) -> Observed {
        Observed {
            seen: Mutex::new(Seen::Known(calls)),
            subject,
            max_tool_labels,
        }
    }

    pub fn scanning(scanner: Scanner, subject: Option<String>, max_tool_labels: usize) -> Observed {
        Observed {
            seen: Mutex::new(Seen::Scanning(scanner)),
            subject,
            max_tool_labels,
        }
    }

    /// The calls as far as they are known now; a call that could not be read is a default one.
    fn calls(&self) -> Vec<Call> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match &*seen {
            Seen::Known(calls) => calls.clone(),
            Seen::Scanning(scanner) => calls_of(scanner),
        }
    }

    /// Counts the calls under `status` and `elapsed`; returns the access log's fields.
    pub fn finish(&self, metrics: &Metrics, status: u16, elapsed: Duration) -> LogFields {
        let calls = self.calls();
        let mut fields = LogFields {
            subject: self.subject.clone().unwrap_or_default(),
            ..LogFields::default()
        };
        for (index, call) in calls.iter().enumerate() {
            let method = method_label(call.method.as_deref());
            let tool = call
                .name
                .as_deref()
                .map(|name| metrics.tool_label(name, self.max_tool_labels))
                .unwrap_or_default();
            if index > 0 {
                fields.method.push(',');
                fields.tool.push(',');
            }
            // The log keeps the names as sent; only metric labels need bounds.
            fields
                .method
                .push_str(call.method.as_deref().unwrap_or("unknown"));
            fields
                .tool
                .push_str(call.name.as_deref().unwrap_or_default());
            metrics
                .mcp_calls
                .get_or_create(&CallLabels {
                    method,
                    tool: tool.clone(),
                    status,
                })
                .inc();
            metrics
                .mcp_call_duration
                .get_or_create(&ToolLabels { method, tool })
                .observe(elapsed.as_secs_f64());
        }
        fields
    }
}

/// What a scan found: its complete calls, and one unknown call for whatever it could not read.
pub fn calls_of(scanner: &Scanner) -> Vec<Call> {
    match scanner.progress() {
        Progress::Complete => scanner.calls().to_vec(),
        Progress::Malformed => vec![Call::default()],
        Progress::Truncated | Progress::Reading => {
            let mut calls = scanner.calls().to_vec();
            calls.push(Call::default());
            calls
        }
    }
}

/// Feeds a request body's bytes to the scanner of its [`Observed`] as they pass to the backend.
#[derive(Debug)]
pub struct ScanTap(pub Arc<Observed>);

impl Tap for ScanTap {
    fn data(&mut self, data: &[u8]) {
        let mut seen = self.0.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Seen::Scanning(scanner) = &mut *seen {
            scanner.feed(data);
        }
    }

    fn end(&mut self) {
        let mut seen = self.0.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Seen::Scanning(scanner) = &mut *seen {
            scanner.finish();
        }
    }
}
