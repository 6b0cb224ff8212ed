//! Switchyard: an MCP-aware streaming reverse proxy and load balancer.
//!
//! See `README.md` for operation and `DESIGN.md` (shared) for the architecture. A request flows
//! `listener` → `forward` (with `router`, `session`, `balance`) → `upstream`, and its answer
//! streams back through `body`; `state` holds the one snapshot every request reads.

pub mod admin;
pub mod backend;
pub mod balance;
pub mod body;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod forward;
pub mod health;
pub mod listener;
pub mod loadgen;
pub mod metrics;
pub mod proxy_protocol;
pub mod reload;
pub mod router;
pub mod seal;
pub mod server;
pub mod session;
pub mod sse;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod websocket;
