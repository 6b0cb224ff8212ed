//! Running the proxy: start and stop, hand-over to a new process, reload, the admin API, and the
//! background tasks that keep the shared state current (health probes, DNS discovery, drain
//! deadlines, session expiry, returning freed memory), and what systemd is told of it (`notify`).

pub mod admin;
pub mod discovery;
pub mod health;
pub mod memory;
pub mod notify;
pub mod open_files;
pub mod periodic;
pub mod policy;
pub mod reload;
pub mod server;
pub mod upgrade;
