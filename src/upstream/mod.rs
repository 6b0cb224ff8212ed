//! The backends: their live counters and health, the connections to them, and the choice of
//! one for a piece of work. Knows MCP only through [`crate::mcp`]; knows nothing of clients.

pub mod backend;
pub mod balance;
pub mod body;
pub mod discovery;
pub mod h1;
pub mod health;
