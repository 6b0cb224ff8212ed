//! Switchyard: an MCP-aware streaming reverse proxy and load balancer.
//!
//! # Layout
//!
//! The library is a stack of layers. Each may use the layers listed before it and never one
//! listed after it; `tests/integration/architecture.rs` reads every `use crate::…` and fails the
//! build's tests on an upward import. Start reading at [`proxy::request`], the path of one
//! request, and look down from there.
//!
//! | layer | holds | may use |
//! |---|---|---|
//! | [`mcp`] | MCP on the wire: request classes, session ids and the session table, sealed ids, SSE event boundaries and the legacy `endpoint` event, which call (method, tool) a message is | nothing of ours |
//! | [`metrics`] | the Prometheus families and the per-target handles the request path counts with | nothing of ours |
//! | [`config`] | pure configuration data: parse, validate (`FILE:LINE:COL` errors), then load the files it names | `mcp` |
//! | [`upstream`] | backends (atomics, guards), their connection pool, connect (TCP/TLS), the HTTP/1.1 client of proxied exchanges (`h1`), balancing, health, DNS discovery | `mcp`, `metrics`, `config` |
//! | [`state`] | the [`state::Snapshot`] a request reads from start to end, built whole from a config and what its files hold, and swapped whole on reload; the policy's rate limiters and signing keys, carried across reloads; the series of backends that left, removed once nothing counts for them | the layers above |
//! | [`proxy`] | accept and the connection limit, PROXY header, TLS handshake, HTTP serving (HTTP/1.1 or HTTP/2 told from the first bytes, and idle HTTP/1 connections parked out of hyper, `version`, from what their requests tell, `activity`; endless event streams taken from hyper, `takeover`), the request path in phases, the policy phase (authentication, allow-lists, limits, call metrics), bodies, WebSocket tunnels, error answers | the layers above |
//! | [`control`] | start (and the open-file limit) and shutdown, hand-over of the listening sockets to a new process (and systemd's), readiness to systemd (sd_notify), reload, admin API, background tasks (probes, discovery, drain deadlines, session expiry, policy upkeep, returning freed memory to the system) | the layers above |
//! | [`tools`] | the reference MCP backend, the demo and the load generator | everything; nothing uses them |
//!
//! Two rules keep the request path cheap and honest: whatever can be computed when a snapshot is
//! built (metric handles, pool names, header names) is, so a request only reads; and every count
//! is a guard whose `Drop` undoes it, carried by the response body to its last byte.

pub mod config;
pub mod control;
pub mod mcp;
pub mod metrics;
pub mod proxy;
pub mod state;
pub mod tools;
pub mod upstream;
