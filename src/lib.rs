//! Switchyard: an MCP-aware streaming reverse proxy and load balancer.
//!
//! See `README.md` for operation and `../shared/DESIGN.md` for the architecture.

pub mod backend;
