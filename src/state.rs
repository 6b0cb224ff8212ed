//! Shared state: one immutable [`Snapshot`] behind one `ArcSwap`, replaced wholesale on reload.
//!
//! A request loads the snapshot once and sees that one config from start to end. Backends are
//! reused across snapshots by address, so counters, health and pooled connections survive.
//! Backends that left the active pools (or the config) are listed as draining until the drain
//! deadline, when their remaining streams are closed; removed ones are then forgotten for good.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{self, Member};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::SessionTable;
use crate::upstream::{Backend, PoolLimits};

#[derive(Debug)]
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
    pub pools: Vec<Pool>,
    /// Indexes into `pools` with their share of new work.
    pub active: Vec<(usize, u32)>,
    active_weight: u32,
    /// Every backend that may still serve its sessions: configured ones and draining removed ones.
    pub backends: FxHashMap<Arc<str>, Arc<Backend>>,
    pub draining: Vec<Draining>,
    pub pool_limits: PoolLimits,
    /// Seals and opens session tokens; `None` when sealing is off.
    pub sealer: Option<Arc<crate::seal::Sealer>>,
}

impl Snapshot {
    /// Builds the snapshot for `config`, reusing `previous`'s backends where addresses match.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        stream_root: &CancellationToken,
        now: Instant,
    ) -> Snapshot {
        Snapshot::build_resolved(config, &Resolved::default(), previous, stream_root, now)
    }

    /// Like [`Snapshot::build`], with hostname pool entries expanded to the addresses `resolved`
    /// holds for them (DNS discovery).
    pub fn build_resolved(
        config: Config,
        resolved: &Resolved,
        previous: Option<&Snapshot>,
        stream_root: &CancellationToken,
        now: Instant,
    ) -> Snapshot {
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
        let mut backends: FxHashMap<Arc<str>, Arc<Backend>> = FxHashMap::default();
        let mut pools = Vec::with_capacity(config.pools.len());
        for (name, pool) in &config.pools {
            let mut members = Vec::with_capacity(pool.backends.len());
            let pool_was_serving = previous
                .and_then(|p| p.pools.iter().find(|q| *q.name == *name.as_str()))
                .is_some_and(|q| !q.members.is_empty());
            let addresses = pool.backends.iter().flat_map(|b| {
                crate::discovery::expand(b, &config.discovery, resolved)
                    .into_iter()
                    .map(move |address| {
                        let discovered = pool_was_serving && address != b.address;
                        (address, b.weight, discovered)
                    })
            });
            for (address, weight, discovered) in addresses {
                // Validation guarantees the address parses.
                let Some(backend) = reuse(&address, discovered) else {
                    continue;
                };
                // A name can resolve to an address also listed as such: one member each.
                if members
                    .iter()
                    .any(|m: &Member| Arc::ptr_eq(&m.backend, &backend))
                {
                    continue;
                }
                backends.insert(Arc::clone(&backend.address), Arc::clone(&backend));
                members.push(Member { backend, weight });
            }
            pools.push(Pool {
                name: Arc::from(name.as_str()),
                members,
            });
        }
        let active: Vec<(usize, u32)> = config
            .active
            .iter()
            .filter_map(|(name, weight)| {
                let index = pools.iter().position(|p| &*p.name == name.as_str())?;
                Some((index, *weight))
            })
            .collect();
        let active_weight = active.iter().map(|(_, w)| *w).sum();
        let mut snapshot = Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            sealer: crate::seal::Sealer::from_setting(&config.sessions.seal).map(Arc::new),
            pool_limits: PoolLimits {
                max_idle: config.upstream.max_idle_per_backend,
                idle_timeout: config.upstream.idle_timeout,
            },
            config: Arc::new(config),
            pools,
            active,
            active_weight,
            backends,
            draining: Vec::new(),
        };
        snapshot.draining = snapshot.plan_drains(previous, now);
        for d in snapshot.draining.iter().filter(|d| d.removed) {
            snapshot
                .backends
                .insert(Arc::clone(&d.backend.address), Arc::clone(&d.backend));
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

    pub fn pool(&self, index: usize) -> &Pool {
        &self.pools[index]
    }

    fn is_active_backend(&self, backend: &Arc<Backend>) -> bool {
        self.active.iter().any(|(i, _)| {
            self.pools[*i]
                .members
                .iter()
                .any(|m| Arc::ptr_eq(&m.backend, backend))
        })
    }

    pub fn is_active_member(&self, pool: &str, backend: &Arc<Backend>) -> bool {
        self.active
            .iter()
            .any(|(i, _)| &*self.pools[*i].name == pool)
            && self.is_active_backend(backend)
            && !backend.is_drained_by_admin()
    }

    /// Every (pool name, member) pair, for metrics and status.
    pub fn all_members(&self) -> impl Iterator<Item = (&str, &Member)> {
        self.pools
            .iter()
            .flat_map(|p| p.members.iter().map(move |m| (&*p.name, m)))
    }

    /// The active pool that takes this piece of new work: by client hash for streams (so a client
    /// keeps landing in the same pool of a canary split), at random by weight otherwise.
    pub fn choose_active_pool(&self, client: Option<u64>) -> Option<usize> {
        if self.active.len() == 1 {
            return Some(self.active[0].0);
        }
        let total = self.active_weight.max(1);
        let mut ticket = match client {
            Some(hash) => (hash % u64::from(total)) as u32,
            None => fastrand::u32(..total),
        };
        for (index, weight) in &self.active {
            if ticket < *weight {
                return Some(*index);
            }
            ticket -= weight;
        }
        self.active.first().map(|(i, _)| *i)
    }

    /// Which pool a backend belongs to, for labels and logs (its first active pool if several).
    pub fn pool_of(&self, backend: &Arc<Backend>) -> &str {
        self.pools
            .iter()
            .find(|p| p.members.iter().any(|m| Arc::ptr_eq(&m.backend, backend)))
            .map_or("(removed)", |p| &p.name)
    }

    /// Picks a backend for new work of the given kind, skipping `exclude`d addresses.
    pub fn pick_new(
        &self,
        client_ip: Option<IpAddr>,
        exclude: &[Arc<str>],
    ) -> Option<Arc<Backend>> {
        self.pick_among(client_ip, |b: &Backend| {
            b.takes_new_work() && !exclude.iter().any(|e| **e == *b.address)
        })
    }

    /// Picks among the active pools' backends that `usable` accepts: by client hash when a
    /// client address is given (streams), least-connections otherwise.
    pub fn pick_among(
        &self,
        client_ip: Option<IpAddr>,
        usable: impl Fn(&Backend) -> bool,
    ) -> Option<Arc<Backend>> {
        let client = client_ip.map(balance::client_hash);
        let first = self.choose_active_pool(client)?;
        // The chosen pool first; other active pools only if it has no usable backend.
        let order = std::iter::once(first)
            .chain(self.active.iter().map(|(i, _)| *i).filter(|i| *i != first));
        for index in order {
            let members = &self.pools[index].members;
            let picked = match client {
                Some(hash) => balance::pick_by_hash(members, hash, &usable),
                None => balance::pick_least_loaded(members, &usable),
            };
            if let Some(member) = picked {
                return Some(Arc::clone(&member.backend));
            }
        }
        None
    }
}

/// Everything the request path and the background tasks share.
#[derive(Debug)]
pub struct State {
    snapshot: ArcSwap<Snapshot>,
    /// Serialises snapshot writers (reloads, the drain reaper) so none loses another's change.
    writer: Mutex<()>,
    pub sessions: SessionTable,
    pub metrics: Metrics,
    /// Parent of every backend's stream token: cancelling it closes all streams (shutdown).
    pub stream_root: CancellationToken,
    /// Client connections and WebSocket tunnels, awaited on shutdown.
    pub tasks: TaskTracker,
    draining: AtomicBool,
    /// What DNS discovery last resolved each hostname entry to.
    resolved: Mutex<Arc<Resolved>>,
    /// Wakes the discovery task (a reload may have added a hostname).
    pub rediscover: tokio::sync::Notify,
}

/// Hostname pool entry as written (`fleet.internal:3000`) → the addresses it resolved to.
pub type Resolved = BTreeMap<String, Vec<std::net::SocketAddr>>;

impl State {
    pub fn new(config: Config) -> State {
        let stream_root = CancellationToken::new();
        let sessions = SessionTable::new(config.sessions.max_sessions);
        let snapshot = Snapshot::build(config, None, &stream_root, Instant::now());
        let metrics = Metrics::new();
        metrics.config_generation.set(snapshot.generation as i64);
        State {
            snapshot: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(()),
            sessions,
            metrics,
            stream_root,
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
            resolved: Mutex::new(Arc::default()),
            rediscover: tokio::sync::Notify::new(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a validated config; returns the new generation.
    pub fn apply(&self, config: Config) -> u64 {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.snapshot.load_full();
        let resolved = self.resolved();
        let next = Snapshot::build_resolved(
            config,
            &resolved,
            Some(&previous),
            &self.stream_root,
            Instant::now(),
        );
        let generation = next.generation;
        self.metrics.config_generation.set(generation as i64);
        self.snapshot.store(Arc::new(next));
        self.rediscover.notify_one();
        generation
    }

    pub fn resolved(&self) -> Arc<Resolved> {
        Arc::clone(&self.resolved.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Rebuilds the snapshot from the current config with new DNS answers: addresses that stay
    /// keep their backends, new ones join, vanished ones drain. Returns false if nothing changed.
    pub fn apply_resolved(&self, resolved: Resolved) -> bool {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut current = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
            if **current == resolved {
                return false;
            }
            *current = Arc::new(resolved.clone());
        }
        let previous = self.snapshot.load_full();
        let next = Snapshot::build_resolved(
            (*previous.config).clone(),
            &resolved,
            Some(&previous),
            &self.stream_root,
            Instant::now(),
        );
        self.metrics.config_generation.set(next.generation as i64);
        self.snapshot.store(Arc::new(next));
        true
    }

    /// Closes the streams of backends whose drain deadline has passed and forgets removed ones.
    /// Returns how many backends finished draining.
    pub fn reap_drained(&self, now: Instant) -> usize {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot.load_full();
        let (due, keep): (Vec<Draining>, Vec<Draining>) = current
            .draining
            .iter()
            .cloned()
            .partition(|d| d.deadline <= now);
        if due.is_empty() {
            return 0;
        }
        let mut backends = current.backends.clone();
        for d in &due {
            if d.removed {
                d.backend.retire();
                backends.remove(&d.backend.address);
            } else {
                d.backend.close_streams();
            }
        }
        let next = Snapshot {
            generation: current.generation,
            config: Arc::clone(&current.config),
            pools: current
                .pools
                .iter()
                .map(|p| Pool {
                    name: Arc::clone(&p.name),
                    members: p.members.clone(),
                })
                .collect(),
            active: current.active.clone(),
            active_weight: current.active_weight,
            backends,
            draining: keep,
            pool_limits: current.pool_limits,
            sealer: current.sealer.clone(),
        };
        self.snapshot.store(Arc::new(next));
        due.len()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// Pool → backend addresses, for summaries.
pub fn describe(snapshot: &Snapshot) -> BTreeMap<String, Vec<String>> {
    snapshot
        .pools
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                p.members
                    .iter()
                    .map(|m| m.backend.address.to_string())
                    .collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::path::Path;

    fn config(blue: &str, green: &str, active: &str) -> Config {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[pools.blue]\nbackends = [{blue}]\n[pools.green]\nbackends = [{green}]\n[routing]\nactive = \"{active}\"\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
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
