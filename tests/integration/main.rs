//! The integration tests, one binary: the real proxy and real backends on 127.0.0.1:0, and the
//! `switchyard` binary run as a user runs it. One module per area; fixtures in `support`.
#![cfg(test)]

mod support;

mod architecture;
mod backend;
mod bench;
mod cli;
mod dataplane;
mod demo;
mod dns_reload;
mod handover;
mod health;
mod hostile;
mod hygiene;
mod import;
mod keepalive;
mod legacy_stream;
mod limits;
mod ops;
mod policy;
mod properties;
mod proxy;
mod reload;
mod reload_triggers;
mod routes;
mod scale;
mod takeover;
mod tls;
mod upstream_h1;
