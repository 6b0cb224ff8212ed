//! DNS discovery in the background: resolve hostname pool entries before the proxy serves, then
//! every `discovery.interval` (or when a reload adds a name), and swap in a snapshot when an
//! answer changed. What an entry expands to lives in [`crate::upstream::discovery`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::BackendConfig;
use crate::metrics::OutcomeLabels;
use crate::state::State;
use crate::upstream::discovery::{LOOKUP_TIMEOUT, Lookup, Resolved, hostnames};

/// Resolves every hostname entry of the current config once; failed names keep their last
/// answer. Returns whether the snapshot changed.
async fn resolve_round(state: &State, lookup: &Lookup) -> bool {
    let config = state.snapshot().config.clone();
    let previous = state.resolved();
    let mut resolved = Resolved::new();
    for name in hostnames(&config) {
        let Some((host, port)) = (BackendConfig {
            address: name.clone(),
            weight: 1,
        })
        .hostname()
        .map(|(h, p)| (h.to_string(), p)) else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, lookup.resolve(host, port)).await;
        let outcome = if matches!(answer, Ok(Ok(_))) {
            "success"
        } else {
            "failure"
        };
        state
            .metrics
            .discovery_lookups
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        match answer {
            Ok(Ok(addresses)) => {
                if previous.get(&name) != Some(&addresses) {
                    tracing::info!(name = %name, addresses = ?addresses, "discovery: addresses changed");
                }
                resolved.insert(name, addresses);
            }
            failed => {
                let why = match failed {
                    Ok(Err(why)) => why,
                    _ => "timed out".to_string(),
                };
                tracing::warn!(name = %name, error = %why, "discovery: lookup failed; keeping the last answer");
                if let Some(last) = previous.get(&name) {
                    resolved.insert(name, last.clone());
                }
            }
        }
    }
    state.apply_resolved(resolved)
}

/// Resolves once before the proxy serves (so hostname pools are not empty at start), then keeps
/// re-resolving in the background until `stop`.
pub async fn start(state: &Arc<State>, stop: CancellationToken) {
    let config = state.snapshot().config.clone();
    let mut lookup = None;
    if config.discovery.interval.is_some() && !hostnames(&config).is_empty() {
        lookup = make_lookup(config.discovery.resolver);
        if let Some(lookup) = &lookup {
            resolve_round(state, lookup).await;
        }
    }
    tokio::spawn(run(Arc::clone(state), lookup, stop));
}

fn make_lookup(nameserver: Option<SocketAddr>) -> Option<Lookup> {
    Lookup::new(nameserver)
        .inspect_err(|error| tracing::error!(%error, "discovery: cannot create the resolver"))
        .ok()
}

async fn run(state: Arc<State>, mut lookup: Option<Lookup>, stop: CancellationToken) {
    loop {
        let config = state.snapshot().config.clone();
        let wait = config
            .discovery
            .interval
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = state.rediscover.notified() => {}
        }
        // Re-read: a reload may have changed the discovery settings while we slept.
        let config = state.snapshot().config.clone();
        if config.discovery.interval.is_none() || hostnames(&config).is_empty() {
            continue;
        }
        if !lookup
            .as_ref()
            .is_some_and(|l| l.serves(config.discovery.resolver))
        {
            lookup = make_lookup(config.discovery.resolver);
        }
        if let Some(lookup) = &lookup {
            resolve_round(&state, lookup).await;
        }
    }
}
