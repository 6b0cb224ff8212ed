//! The data plane: accept a client connection, serve HTTP on it, and carry each request to a
//! backend and its answer back. Read [`request`] first: it names the phases in order.

pub mod activity;
pub mod admission;
pub mod body;
pub mod error;
pub mod headers;
pub mod listener;
pub mod policy;
pub mod proxy_protocol;
pub mod request;
pub mod request_id;
pub mod respond;
pub mod serve;
mod strict;
pub mod takeover;
pub mod version;
pub mod websocket;
