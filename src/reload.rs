//! Configuration reload: validate the new file completely, then swap it in at once, or change
//! nothing and keep serving the last good config (agentgateway's state manager does the same).

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::state::State;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "listener bind addresses cannot change on reload (restart the proxy to change them; TLS certificates, PROXY protocol and redirects can): {0}"
    )]
    ListenersChanged(String),
}

/// Reloads from the file the running config came from.
pub fn reload_from_file(state: &State) -> Result<u64, ReloadError> {
    let source = state.snapshot().config.source.clone();
    reload_from(state, &source)
}

pub fn reload_from(state: &State, path: &Path) -> Result<u64, ReloadError> {
    let outcome = Config::load(path)
        .map_err(ReloadError::from)
        .and_then(|config| apply(state, config));
    let label = if outcome.is_ok() {
        "success"
    } else {
        "failure"
    };
    state
        .metrics
        .reloads
        .get_or_create(&crate::metrics::OutcomeLabels { outcome: label })
        .inc();
    match &outcome {
        Ok(generation) => tracing::info!(generation, "configuration reloaded"),
        Err(error) => {
            tracing::error!(%error, "reload refused; the previous configuration stays in force")
        }
    }
    outcome
}

/// Applies an already validated config, refusing changes a running process cannot make: the
/// bound sockets stay, everything else about a listener (certificates included) comes from the
/// new snapshot for each connection accepted after the swap.
pub fn apply(state: &State, config: Config) -> Result<u64, ReloadError> {
    let current = state.snapshot();
    let old: Vec<_> = current.config.listeners.iter().map(|l| l.bind).collect();
    let new: Vec<_> = config.listeners.iter().map(|l| l.bind).collect();
    // Port 0 (tests) binds a fresh port each time, so it compares equal to anything.
    let same = old.len() == new.len()
        && old
            .iter()
            .zip(&new)
            .all(|(a, b)| a == b || b.port() == 0 || a.port() == 0);
    if !same {
        return Err(ReloadError::ListenersChanged(format!("{old:?} -> {new:?}")));
    }
    Ok(state.apply(config))
}
