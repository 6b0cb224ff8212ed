//! DNS discovery in the background: resolve hostname pool entries before the proxy serves, then
//! every `discovery.interval`, and swap in a snapshot when an answer changed. A reload resolves
//! the names it adds itself, before its swap ([`resolve_new_names`]). What an entry expands to
//! lives in [`crate::upstream::discovery`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{BackendConfig, Config};
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
        match lookup_one(state, lookup, &name).await {
            Ok(addresses) => {
                if previous.get(&name) != Some(&addresses) {
                    tracing::info!(name = %name, addresses = ?addresses, "discovery: addresses changed");
                }
                resolved.insert(name, addresses);
            }
            Err(why) => {
                tracing::warn!(name = %name, error = %why, "discovery: lookup failed; keeping the last answer");
                if let Some(last) = previous.get(&name) {
                    resolved.insert(name, last.clone());
                }
            }
        }
    }
    state.apply_resolved(resolved)
}

/// One name (`host:port` as written in a pool), within [`LOOKUP_TIMEOUT`], counted.
async fn lookup_one(state: &State, lookup: &Lookup, name: &str) -> Result<Vec<SocketAddr>, String> {
    let entry = BackendConfig {
        address: name.to_string(),
        weight: 1,
    };
    let Some((host, port)) = entry.hostname() else {
        return Err("not a host name".to_string());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, lookup.resolve(host, port))
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()));
    let outcome = if answer.is_ok() { "success" } else { "failure" };
    state
        .metrics
        .discovery_lookups
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    answer
}

/// What a reload's new names resolved to, and the names that did not resolve.
#[derive(Debug, Default)]
pub struct NewNames {
    pub resolved: Resolved,
    pub failed: Vec<String>,
}

/// Resolves the hostname entries of `config` that discovery has no answer for yet (a reload
/// adding a pool of names), all at once and within [`LOOKUP_TIMEOUT`], with `config`'s own
/// resolver. Without this the new pool would be swapped in empty and answer 503 until the
/// discovery task's next round.
pub async fn resolve_new_names(state: &State, config: &Config) -> NewNames {
    if config.discovery.interval.is_none() {
        return NewNames::default();
    }
    let known = state.resolved();
    let names: Vec<String> = hostnames(config)
        .into_iter()
        .filter(|name| !known.contains_key(name))
        .collect();
    if names.is_empty() {
        return NewNames::default();
    }
    let Some(lookup) = make_lookup(config.discovery.resolver) else {
        return NewNames {
            resolved: Resolved::new(),
            failed: names,
        };
    };
    let answers =
        futures_util::future::join_all(names.iter().map(|n| lookup_one(state, &lookup, n))).await;
    let mut outcome = NewNames::default();
    for (name, answer) in names.iter().cloned().zip(answers) {
        match answer {
            Ok(addresses) if !addresses.is_empty() => {
                tracing::info!(name = %name, addresses = ?addresses, "discovery: new name resolved");
                outcome.resolved.insert(name, addresses);
            }
            Ok(_) => outcome.failed.push(name),
            Err(why) => {
                tracing::warn!(name = %name, error = %why, "discovery: a new name did not resolve");
                outcome.failed.push(name);
            }
        }
    }
    outcome
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
