//! Programs that ship in the `switchyard` binary but are not the proxy: the reference MCP backend,
//! the demo, the load generator and the nginx importer. They may use the library; the library
//! never uses them.

pub mod backend;
pub mod demo;
pub mod import;
pub mod loadgen;
