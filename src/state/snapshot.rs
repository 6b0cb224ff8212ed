//! One immutable snapshot of the configuration, what its files held when it was loaded
//! (certificates, the admin token, seal keys), and the pools built from it.
//!
//! A request loads the snapshot once and sees that one config from start to end. Backends are
//! reused across snapshots by address, so counters, health and pooled connections survive.
//! Backends that left the active pools (or the config) are listed as draining until the drain
//! deadline, when their remaining streams are closed; removed ones are then forgotten for good.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Loaded, LoadedConfig};
use crate::mcp::seal::Sealer;
use crate::state::policy::PolicyState;
use crate::upstream::backend::{Backend, PoolLimits};
use crate::upstream::balance::{Member, Target};
use crate::upstream::discovery::Resolved;

use super::routes::{Route, RouteTable};

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: Arc<str>,
    pub members: Vec<Member>,
}

/// A backend that takes no new work and whose streams close at `deadline`.
#[derive(Debug, Clone)]
pub struct Draining {
    pub backend: Arc<Backend>,
    pub deadline: Instant,
    /// Removed from the config: forgotten (its sessions get `404`) at the deadline.
    pub removed: bool,
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    /// What `config`'s files held when it was loaded: certificates, the admin token, seal keys.
    pub loaded: Arc<Loaded>,
    pub pools: Vec<Pool>,
    /// In config order; each holds its active pools as indexes into `pools`.
    pub routes: Vec<Route>,
    /// Host and path matchers over `routes`.
    table: RouteTable,
    /// Every backend that may still serve its sessions: configured ones and draining removed ones.
    pub backends: FxHashMap<Arc<str>, Arc<Backend>>,
    /// The same backends as the request path uses them (pool name, metric handles), by address.
    targets: FxHashMap<Arc<str>, Arc<Target>>,
    pub draining: Vec<Draining>,
    pub pool_limits: PoolLimits,
    /// Seals and opens session tokens; `None` when sealing is off.
    pub sealer: Option<Arc<Sealer>>,
    /// `[policy]`'s limiters and keys, shared by the routes without a policy of their own.
    pub policy: Option<Arc<PolicyState>>,
}

impl Snapshot {
    /// Builds the snapshot for `ready`, reusing `previous`'s backends where addresses match.
    pub fn build(
        ready: LoadedConfig,
        previous: Option<&Snapshot>,
        stream_root: &CancellationToken,
        now: Instant,
    ) -> Snapshot {
        Snapshot::build_resolved(
            Arc::new(ready.config),
            Arc::new(ready.loaded),
            &Resolved::default(),
            previous,
            stream_root,
            now,
        )
    }

    /// Like [`Snapshot::build`], with hostname pool entries expanded to the addresses `resolved`
    /// holds for them (DNS discovery).
    pub fn build_resolved(
        config: Arc<Config>,
        loaded: Arc<Loaded>,
        resolved: &Resolved,
        previous: Option<&Snapshot>,
        stream_root: &CancellationToken,
        now: Instant,
    ) -> Snapshot {
        let (pools, targets) = build_pools(&config, resolved, previous, stream_root);
        let backends = targets
            .iter()
            .map(|(address, t)| (Arc::clone(address), Arc::clone(&t.backend)))
            .collect();
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| Route::build(r, &pools))
            .collect();
        let table = RouteTable::build(&config.routes);
        let policy = config.policy.as_ref().map(|p| {
            let before = previous.and_then(|s| s.policy.as_deref());
            Arc::new(PolicyState::build(p, &loaded, before))
        });
        crate::state::policy::attach(&mut routes, policy.as_ref(), &loaded, previous);
        let mut snapshot = Snapshot {
            policy,
            generation: previous.map_or(1, |p| p.generation + 1),
            sealer: Sealer::from_setting(&loaded.seal).map(Arc::new),
            pool_limits: PoolLimits {
                max_idle: config.upstream.max_idle_per_backend,
                idle_timeout: config.upstream.idle_timeout,
            },
            config,
            loaded,
            pools,
            routes,
            table,
            backends,
            targets,
            draining: Vec::new(),
        };
        snapshot.draining = snapshot.plan_drains(previous, now);
        for d in snapshot.draining.iter().filter(|d| d.removed) {
            let address = Arc::clone(&d.backend.address);
            let target = Target::new(Arc::clone(&d.backend), Arc::from(REMOVED_POOL));
            snapshot
                .backends
                .insert(Arc::clone(&address), Arc::clone(&d.backend));
            snapshot.targets.insert(address, target);
        }
        snapshot
    }

    /// Which backends drain, keeping deadlines already running in `previous`.
    fn plan_drains(&self, previous: Option<&Snapshot>, now: Instant) -> Vec<Draining> {
        let Some(previous) = previous else {
            return Vec::new();
        };
        let deadline = now + self.config.timeouts.drain;
        let already = |b: &Arc<Backend>| {
            previous
                .draining
                .iter()
                .find(|d| Arc::ptr_eq(&d.backend, b))
                .map(|d| d.deadline)
        };
        let mut draining: Vec<Draining> = Vec::new();
        for backend in previous.backends.values() {
            if self.is_active_backend(backend) {
                continue;
            }
            let removed = !self.backends.contains_key(&backend.address);
            let was_serving_new_work = previous.is_active_backend(backend);
            let deadline = match already(backend) {
                Some(deadline) => deadline,
                None if was_serving_new_work => deadline,
                // Inactive before and still inactive: drained already, nothing to close, unless
                // it just left the config, which starts its removal clock.
                None if removed => deadline,
                None => continue,
            };
            draining.push(Draining {
                backend: Arc::clone(backend),
                deadline,
                removed,
            });
        }
        draining
    }

    /// Ends the drains due at `now`: their streams close, removed backends retire and are
    /// forgotten. Returns the snapshot without them and how many ended; `None` if none is due.
    pub fn end_due_drains(&self, now: Instant) -> Option<(Snapshot, usize)> {
        let (due, keep): (Vec<Draining>, Vec<Draining>) = self
            .draining
            .iter()
            .cloned()
            .partition(|d| d.deadline <= now);
        if due.is_empty() {
            return None;
        }
        let mut backends = self.backends.clone();
        let mut targets = self.targets.clone();
        for d in &due {
            if d.removed {
                d.backend.retire();
                backends.remove(&d.backend.address);
                targets.remove(&d.backend.address);
            } else {
                d.backend.close_streams();
            }
        }
        let next = Snapshot {
            generation: self.generation,
            config: Arc::clone(&self.config),
            loaded: Arc::clone(&self.loaded),
            pools: self.pools.clone(),
            routes: self.routes.clone(),
            table: self.table.clone(),
            backends,
            targets,
            draining: keep,
            pool_limits: self.pool_limits,
            sealer: self.sealer.clone(),
            policy: self.policy.clone(),
        };
        Some((next, due.len()))
    }

    pub fn pool(&self, index: usize) -> &Pool {
        &self.pools[index]
    }

    /// The route for a request to `host` (as the client sent it) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.table.find(host, path).map(|index| &self.routes[index])
    }

    /// A backend is active while some route's active pools hold it.
    fn is_active_backend(&self, backend: &Arc<Backend>) -> bool {
        self.routes.iter().any(|route| {
            route.active.iter().any(|(i, _)| {
                self.pools[*i]
                    .members
                    .iter()
                    .any(|m| Arc::ptr_eq(&m.backend, backend))
            })
        })
    }

    pub fn is_active_member(&self, pool: &str, backend: &Arc<Backend>) -> bool {
        let pool_active = self.routes.iter().any(|route| {
            route
                .active
                .iter()
                .any(|(i, _)| &*self.pools[*i].name == pool)
        });
        pool_active && self.is_active_backend(backend) && !backend.is_drained_by_admin()
    }

    /// Every (pool name, member) pair, for metrics and status.
    pub fn all_members(&self) -> impl Iterator<Item = (&str, &Member)> {
        self.pools
            .iter()
            .flat_map(|p| p.members.iter().map(move |m| (&*p.name, m)))
    }

    /// Which pool a backend belongs to, for labels and logs (the first pool listing it).
    pub fn pool_of(&self, backend: &Arc<Backend>) -> &str {
        self.targets
            .get(&backend.address)
            .filter(|t| Arc::ptr_eq(&t.backend, backend))
            .map_or(REMOVED_POOL, |t| t.pool())
    }

    /// Every backend as the request path uses it, removed ones that still drain included.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.values()
    }

    /// The backend at `address` as the request path uses it (a session's owner).
    pub fn target(&self, address: &str) -> Option<&Arc<Target>> {
        self.targets.get(address)
    }

    /// The probe path of a backend: that of the first route serving from one of its pools that
    /// sets `health_path`; `None` for `[health] path`.
    pub fn probe_path(&self, backend: &Arc<Backend>) -> Option<&http::uri::PathAndQuery> {
        let holds = |pool: &usize| {
            self.pools[*pool]
                .members
                .iter()
                .any(|m| Arc::ptr_eq(&m.backend, backend))
        };
        self.routes
            .iter()
            .filter(|route| route.pools.iter().any(holds))
            .find_map(|route| route.settings.health_path.as_ref())
    }

    /// True when some route has a backend that takes new work (readiness).
    pub fn has_usable_active_backend(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.has_usable_backend(&self.pools))
    }

    /// Fail-open (Envoy's panic mode): may this unhealthy owner still serve its sessions, asked
    /// on `route`?
    pub fn fail_open_serves(&self, route: &Route, owner: &Backend) -> bool {
        self.config.health.fail_open && !owner.is_gone() && !route.has_usable_backend(&self.pools)
    }

    /// Fail-open pick for new work when the route's whole active pool is unhealthy: health is
    /// ignored, admin drains and removals are not.
    pub fn fail_open_pick(
        &self,
        route: &Route,
        client_ip: Option<IpAddr>,
        exclude: &[Arc<str>],
    ) -> Option<Arc<Target>> {
        if !self.config.health.fail_open || route.has_usable_backend(&self.pools) {
            return None;
        }
        let usable = |b: &Backend| {
            !b.is_gone() && !b.is_drained_by_admin() && !exclude.iter().any(|e| **e == *b.address)
        };
        route.pick_among(&self.pools, client_ip, usable)
    }

    /// Picks a backend of `route` for new work, skipping `exclude`d addresses.
    pub fn pick_new(
        &self,
        route: &Route,
        client_ip: Option<IpAddr>,
        exclude: &[Arc<str>],
    ) -> Option<Arc<Target>> {
        route.pick_among(&self.pools, client_ip, |b: &Backend| {
            b.takes_new_work() && !exclude.iter().any(|e| **e == *b.address)
        })
    }
}

/// The pool a removed backend is named by while it drains.
pub const REMOVED_POOL: &str = "(removed)";

/// The pools of `config` with their members, and every configured backend by address: reused from
/// `previous` where the address matches, so counters, health and pooled connections carry over.
/// A backend listed by several pools is one target, named by the first of them.
fn build_pools(
    config: &Config,
    resolved: &Resolved,
    previous: Option<&Snapshot>,
    stream_root: &CancellationToken,
) -> (Vec<Pool>, FxHashMap<Arc<str>, Arc<Target>>) {
    let probing = config.health.probes.is_some();
    let reuse = |address: &str, discovered: bool| {
        previous
            .and_then(|p| p.backends.get(address).cloned())
            .or_else(|| {
                let backend = Backend::new(address, stream_root)?;
                // An address DNS reveals to a pool already serving joins once its probes
                // pass, not on sight: a pod that resolves is not yet a pod that serves.
                // (At the first lookup there is nothing to protect, and waiting would be
                // an outage.)
                if discovered && probing {
                    backend.set_healthy(false);
                }
                Some(backend)
            })
    };
    let mut targets: FxHashMap<Arc<str>, Arc<Target>> = FxHashMap::default();
    let mut pools = Vec::with_capacity(config.pools.len());
    for (name, pool) in &config.pools {
        let pool_name: Arc<str> = Arc::from(name.as_str());
        let mut members = Vec::with_capacity(pool.backends.len());
        let pool_was_serving = previous
            .and_then(|p| p.pools.iter().find(|q| *q.name == *name.as_str()))
            .is_some_and(|q| !q.members.is_empty());
        let addresses = pool.backends.iter().flat_map(|b| {
            crate::upstream::discovery::expand(b, &config.discovery, resolved)
                .into_iter()
                .map(move |address| {
                    let discovered = pool_was_serving && address != b.address;
                    (address, b.weight, discovered)
                })
        });
        for (address, weight, discovered) in addresses {
            let target = match targets.get(address.as_str()) {
                Some(target) => Arc::clone(target),
                None => {
                    // Validation guarantees the address parses.
                    let Some(backend) = reuse(&address, discovered) else {
                        continue;
                    };
                    let target = Target::new(backend, Arc::clone(&pool_name));
                    targets.insert(Arc::clone(&target.backend.address), Arc::clone(&target));
                    target
                }
            };
            // A name can resolve to an address also listed as such: one member each.
            if members
                .iter()
                .any(|m: &Member| Arc::ptr_eq(&m.target, &target))
            {
                continue;
            }
            members.push(Member::of(&target, weight));
        }
        pools.push(Pool {
            name: pool_name,
            members,
        });
    }
    (pools, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(blue: &str, green: &str, active: &str) -> LoadedConfig {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[pools.blue]\nbackends = [{blue}]\n[pools.green]\nbackends = [{green}]\n[routing]\nactive = \"{active}\"\n"
        );
        LoadedConfig::from_config(Config::parse(&text, Path::new("t.toml")).unwrap()).unwrap()
    }

    #[test]
    fn reload_keeps_retained_backends_and_drains_the_rest() {
        let root = CancellationToken::new();
        let now = Instant::now();
        let first = Snapshot::build(
            config("\"10.0.0.1:1\", \"10.0.0.2:1\"", "\"10.0.0.3:1\"", "blue"),
            None,
            &root,
            now,
        );
        let kept = Arc::clone(&first.backends["10.0.0.1:1"]);
        let _load = kept.start();
        kept.set_healthy(false);
        // Flip to green and drop 10.0.0.2 from the config.
        let second = Snapshot::build(
            config("\"10.0.0.1:1\"", "\"10.0.0.3:1\"", "green"),
            Some(&first),
            &root,
            now,
        );
        let same = &second.backends["10.0.0.1:1"];
        assert!(
            Arc::ptr_eq(same, &kept),
            "retained backend is the same object"
        );
        assert_eq!(same.load(), 1, "its counters carry over");
        assert!(!same.is_healthy(), "and so does its health");
        let draining: Vec<(&str, bool)> = second
            .draining
            .iter()
            .map(|d| (&*d.backend.address, d.removed))
            .collect();
        assert!(draining.contains(&("10.0.0.1:1", false)), "{draining:?}");
        assert!(draining.contains(&("10.0.0.2:1", true)), "{draining:?}");
        assert!(
            second.backends.contains_key("10.0.0.2:1"),
            "a removed backend serves its sessions until its drain ends"
        );
        assert_eq!(second.generation, first.generation + 1);
    }
}
