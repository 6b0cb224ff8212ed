//! The reference MCP server: the tools every transport serves.

// Logging (SEP-2577) is deprecated but clients of today's protocol versions still use it, and
// the conformance suite's logging-set-level scenario asks for it.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, RequestMetaObject,
    ServerCapabilities, ServerConfig, SetLevelRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use tokio_util::sync::CancellationToken;

use super::stats::{Held, Stats};

const MAX_COUNTDOWN: u32 = 10_000;
const MAX_INTERVAL_MS: u64 = 60_000;
const MAX_SLEEP_MS: u64 = 3_600_000;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoRequest {
    /// The text to send back.
    pub message: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct CountdownRequest {
    /// How many progress notifications to send before answering (default 5, at most 10000).
    #[serde(default = "default_count")]
    pub count: u32,
    /// Milliseconds between notifications (default 100, at most 60000).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_count() -> u32 {
    5
}

fn default_interval_ms() -> u64 {
    100
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SleepRequest {
    /// Milliseconds to wait before answering (at most one hour).
    pub ms: u64,
}

/// One MCP session's server. A new one is made per session; all share the backend's [`Stats`].
#[derive(Debug, Clone)]
pub struct ReferenceServer {
    stats: Arc<Stats>,
    // Counts the session for as long as any clone of this server lives.
    _session: Arc<Held>,
    #[allow(dead_code)] // read by the code #[tool_handler] generates
    tool_router: ToolRouter<ReferenceServer>,
}

impl ReferenceServer {
    pub fn new(stats: Arc<Stats>) -> ReferenceServer {
        let session = Arc::new(stats.session());
        ReferenceServer {
            stats,
            _session: session,
            tool_router: Self::tool_router(),
        }
    }
}

fn text(value: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(value)])
}

#[tool_router]
impl ReferenceServer {
    #[tool(description = "Returns its message unchanged.")]
    async fn echo(&self, Parameters(request): Parameters<EchoRequest>) -> CallToolResult {
        let _call = self.stats.tool_call();
        text(request.message)
    }

    #[tool(
        description = "Reports which backend answered: name, pid, uptime, open sessions and streams, requests served (JSON)."
    )]
    async fn server_status(&self) -> CallToolResult {
        let _call = self.stats.tool_call();
        text(self.stats.status().to_string())
    }

    #[tool(
        description = "Sends `count` progress notifications, one every `interval_ms`, then answers. Pass a progressToken in _meta to receive them."
    )]
    async fn countdown(
        &self,
        Parameters(request): Parameters<CountdownRequest>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        cancelled: CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        let _call = self.stats.tool_call();
        if request.count > MAX_COUNTDOWN || request.interval_ms > MAX_INTERVAL_MS {
            return Err(ErrorData::invalid_params(
                format!(
                    "count must be at most {MAX_COUNTDOWN} and interval_ms at most {MAX_INTERVAL_MS}"
                ),
                None,
            ));
        }
        let token = meta.get_progress_token();
        let interval = Duration::from_millis(request.interval_ms);
        for step in 1..=request.count {
            tokio::select! {
                () = cancelled.cancelled() => return Err(ErrorData::internal_error("cancelled", None)),
                () = tokio::time::sleep(interval) => {}
            }
            if let Some(token) = &token {
                let remaining = request.count - step;
                let progress = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_total(f64::from(request.count))
                    .with_message(format!("{remaining} to go"));
                if peer.notify_progress(progress).await.is_err() {
                    return Err(ErrorData::internal_error("client went away", None));
                }
            }
        }
        Ok(text(format!("liftoff after {} steps", request.count)))
    }

    #[tool(description = "Answers after `ms` milliseconds (exercises draining).")]
    async fn sleep(
        &self,
        Parameters(request): Parameters<SleepRequest>,
        cancelled: CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        let _call = self.stats.tool_call();
        if request.ms > MAX_SLEEP_MS {
            return Err(ErrorData::invalid_params(
                format!("ms must be at most {MAX_SLEEP_MS}"),
                None,
            ));
        }
        tokio::select! {
            () = cancelled.cancelled() => Err(ErrorData::internal_error("cancelled", None)),
            () = tokio::time::sleep(Duration::from_millis(request.ms)) => {
                Ok(text(format!("slept {} ms", request.ms)))
            }
        }
    }
}

#[tool_handler]
impl ServerHandler for ReferenceServer {
    fn get_info(&self) -> ServerConfig {
        let info = Implementation::new("switchyard-backend", env!("CARGO_PKG_VERSION"))
            .with_title(self.stats.name.clone());
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
        .with_server_info(info)
        .with_instructions(format!(
            "Switchyard reference MCP backend `{}`. Call server_status to see who answered.",
            self.stats.name
        ))
    }

    // Accepts every level: this server only logs through tracing, never to the client.
    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }
}
