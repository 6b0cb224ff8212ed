//! What `[policy]` keeps between requests: a token-bucket [`limiter::Limiter`] per limit and the
//! [`jwks::JwksStore`] of signing keys. Built with each snapshot, and carried over from the
//! previous one where the setting did not change, so a reload neither refills every bucket nor
//! forgets the keys it fetched.

pub mod jwks;
pub mod limiter;

use std::sync::Arc;

use crate::config::{JwksSource, Loaded, PolicyConfig};

use super::routes::Route;
use super::snapshot::Snapshot;

use jwks::JwksStore;
use limiter::Limiter;

#[derive(Debug)]
pub struct PolicyState {
    pub config: PolicyConfig,
    /// One per `config.limits` entry, in order.
    pub limiters: Vec<Arc<Limiter>>,
    pub jwks: Option<Arc<JwksStore>>,
}

impl PolicyState {
    pub fn build(
        config: &PolicyConfig,
        loaded: &Loaded,
        previous: Option<&PolicyState>,
    ) -> PolicyState {
        let limiters = config
            .limits
            .iter()
            .enumerate()
            .map(|(index, limit)| {
                previous
                    .filter(|p| p.config.limits.get(index) == Some(limit))
                    .and_then(|p| p.limiters.get(index).cloned())
                    .unwrap_or_else(|| {
                        Arc::new(Limiter::new(
                            limit.rate,
                            limit.per,
                            limit.burst,
                            limit.max_keys,
                        ))
                    })
            })
            .collect();
        let jwks = config.auth.as_ref().map(|auth| {
            let initial = match &auth.jwks {
                JwksSource::File(file) => loaded.jwks_files.get(&file.path).map(Arc::as_ref),
                JwksSource::Url(_) => None,
            };
            let kept = previous
                .and_then(|p| p.jwks.as_ref())
                .filter(|store| *store.source() == auth.jwks)
                .cloned();
            match kept {
                Some(store) => {
                    if let Some(set) = initial {
                        store.replace(set);
                    }
                    store
                }
                None => Arc::new(JwksStore::new(&auth.jwks, initial)),
            }
        });
        PolicyState {
            config: config.clone(),
            limiters,
            jwks,
        }
    }
}

/// Gives each route its policy state. Routes that inherit `[policy]` share `global`, and so its
/// buckets: a global limit counts across them. A route with a `[route.policy]` of its own gets
/// its own state, carried over from the previous snapshot's route of the same name.
pub fn attach(
    routes: &mut [Route],
    global: Option<&Arc<PolicyState>>,
    loaded: &Loaded,
    previous: Option<&Snapshot>,
) {
    for route in routes {
        route.policy = match (&route.settings.policy, global) {
            (None, _) => None,
            (Some(own), Some(global)) if *own == global.config => Some(Arc::clone(global)),
            (Some(own), _) => {
                let before = previous
                    .and_then(|s| s.routes.iter().find(|r| r.name == route.name))
                    .and_then(|r| r.policy.as_deref());
                Some(Arc::new(PolicyState::build(own, loaded, before)))
            }
        };
    }
}

/// Every distinct policy state of a snapshot: `[policy]`'s and the routes' own.
pub fn all(snapshot: &Snapshot) -> Vec<Arc<PolicyState>> {
    let mut states: Vec<Arc<PolicyState>> = Vec::new();
    let routes = snapshot.routes.iter().filter_map(|r| r.policy.as_ref());
    for state in snapshot.policy.iter().chain(routes) {
        if !states.iter().any(|s| Arc::ptr_eq(s, state)) {
            states.push(Arc::clone(state));
        }
    }
    states
}
