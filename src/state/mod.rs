//! Shared state: one immutable [`Snapshot`] behind one `ArcSwap`, replaced wholesale on reload,
//! beside what outlives snapshots (the session table, metrics, the tasks to await on shutdown).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::LoadedConfig;
use crate::mcp::session::{Learned, SessionSlot, SessionTable};
use crate::metrics::{BackendLabels, Metrics};
use crate::upstream::backend::Backend;
use crate::upstream::discovery::Resolved;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

mod departed;
pub mod policy;
pub mod routes;
pub mod snapshot;

pub use routes::Route;
pub use snapshot::Snapshot;

/// Everything the request path and the background tasks share.
#[derive(Debug)]
pub struct State {
    snapshot: ArcSwap<Snapshot>,
    /// Serialises snapshot writers (reloads, the drain reaper) so none loses another's change.
    writer: Mutex<()>,
    /// Held by a reload from reading its file to its swap, so reloads that overlap (SIGHUP while
    /// an admin reload waits on a slow nameserver) apply in the order they read the file.
    pub reloading: tokio::sync::Mutex<()>,
    pub sessions: Arc<SessionTable>,
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
    /// Targets that left the snapshot, until their series are removed.
    departed: Mutex<Vec<departed::Departed>>,
}

impl State {
    pub fn new(ready: LoadedConfig) -> State {
        let stream_root = CancellationToken::new();
        let sessions = Arc::new(SessionTable::new(ready.config.sessions.max_sessions));
        let snapshot = Snapshot::build(ready, None, &stream_root, Instant::now());
        let metrics = Metrics::new();
        metrics.config_generation.set(snapshot.generation as i64);
        State {
            snapshot: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(()),
            reloading: tokio::sync::Mutex::new(()),
            sessions,
            metrics,
            stream_root,
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
            resolved: Mutex::new(Arc::default()),
            rediscover: tokio::sync::Notify::new(),
            departed: Mutex::default(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a validated and loaded config, with what the names it added resolved to
    /// (`fresh`); returns the new generation.
    pub fn apply(&self, ready: LoadedConfig, fresh: Resolved) -> u64 {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.snapshot.load_full();
        let resolved = {
            let mut current = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
            if !fresh.is_empty() {
                let mut merged = (**current).clone();
                merged.extend(fresh);
                *current = Arc::new(merged);
            }
            Arc::clone(&current)
        };
        let next = Snapshot::build_resolved(
            Arc::new(ready.config),
            Arc::new(ready.loaded),
            &resolved,
            Some(&previous),
            &self.stream_root,
            Instant::now(),
        );
        let generation = next.generation;
        self.metrics.config_generation.set(generation as i64);
        self.store(&previous, next);
        self.rediscover.notify_one();
        generation
    }

    pub fn resolved(&self) -> Arc<Resolved> {
        Arc::clone(&self.resolved.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Rebuilds the snapshot from the current config with new DNS answers: addresses that stay
    /// keep their backends, new ones join, vanished ones drain. Returns false if nothing changed.
    /// A round started before a reload added names has no answer for them: the answers that
    /// reload resolved are kept, or its new pools would empty again.
    pub fn apply_resolved(&self, mut resolved: Resolved) -> bool {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.snapshot.load_full();
        {
            let mut current = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
            let names = crate::upstream::discovery::hostnames(&previous.config);
            for (name, addresses) in current.iter() {
                if names.contains(name) && !resolved.contains_key(name) {
                    resolved.insert(name.clone(), addresses.clone());
                }
            }
            if **current == resolved {
                return false;
            }
            *current = Arc::new(resolved.clone());
        }
        let next = Snapshot::build_resolved(
            Arc::clone(&previous.config),
            Arc::clone(&previous.loaded),
            &resolved,
            Some(&previous),
            &self.stream_root,
            Instant::now(),
        );
        self.metrics.config_generation.set(next.generation as i64);
        self.store(&previous, next);
        true
    }

    /// Closes the streams of backends whose drain deadline has passed and forgets removed ones.
    /// Returns how many backends finished draining.
    pub fn reap_drained(&self, now: Instant) -> usize {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot.load_full();
        let Some((next, finished)) = current.end_due_drains(now) else {
            return 0;
        };
        self.store(&current, next);
        finished
    }

    /// Puts `next` in place of `previous`, noting the targets that left. The writer's lock is
    /// held.
    fn store(&self, previous: &Snapshot, next: Snapshot) {
        let mut departed = self.departed.lock().unwrap_or_else(PoisonError::into_inner);
        departed::note_departures(previous, &next, &mut departed);
        self.snapshot.store(Arc::new(next));
    }

    /// Removes the series of backends that have left and that nothing counts for any more
    /// (run by the upkeep task and before each scrape).
    pub fn forget_departed(&self) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot.load();
        let mut departed = self.departed.lock().unwrap_or_else(PoisonError::into_inner);
        departed::sweep(&mut departed, &current, &self.metrics);
    }

    /// Records that `backend` owns session `id` (minted in a response header or a legacy
    /// `endpoint` event), into the room `slot` holds if the request reserved one.
    pub fn learn_session(&self, id: &str, backend: &Backend, slot: Option<SessionSlot>) {
        let learned = match slot {
            Some(slot) => slot.learn(id, &backend.address),
            None => self.sessions.learn(id, &backend.address),
        };
        match learned {
            Learned::New => self.metrics.sessions_learned.inc(),
            Learned::Known => 0,
            Learned::TableFull => {
                tracing::warn!("session table full; raise sessions.max_sessions");
                0
            }
        };
    }

    /// Copies live per-backend values into gauges and renders the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.forget_departed();
        let metrics = &self.metrics;
        let snapshot = self.snapshot();
        let serving = departed::still_serving(
            &self.departed.lock().unwrap_or_else(PoisonError::into_inner),
            &snapshot,
        );
        let _scrape = metrics.scrape_lock();
        for family in metrics.per_backend_gauges() {
            family.clear();
        }
        let owned = self.sessions.count_by_owner();
        let removed = snapshot
            .draining
            .iter()
            .filter(|d| d.removed)
            .map(|d| &d.backend)
            .chain(&serving)
            .map(|b| (snapshot::REMOVED_POOL, b, true));
        let configured = snapshot.all_members().map(|(pool, member)| {
            let draining = !snapshot.is_active_member(pool, &member.backend);
            (pool, &member.backend, draining)
        });
        for (pool, b, draining) in configured.chain(removed) {
            let labels = BackendLabels {
                pool: pool.to_string(),
                backend: b.address.to_string(),
            };
            let set = |family: &Family<BackendLabels, Gauge>, value: usize| {
                family.get_or_create(&labels).set(value as i64);
            };
            set(&metrics.in_flight, b.load());
            set(&metrics.open_streams, b.open_streams());
            set(&metrics.backend_healthy, usize::from(b.is_healthy()));
            set(&metrics.backend_draining, usize::from(draining));
            set(
                &metrics.backend_drained_by_admin,
                usize::from(b.is_drained_by_admin()),
            );
            set(&metrics.backend_idle_connections, b.idle_connections());
            set(
                &metrics.backend_sessions,
                owned.get(&b.address).copied().unwrap_or(0),
            );
        }
        metrics.sessions_tracked.set(self.sessions.len() as i64);
        metrics
            .sessions_max
            .set(i64::try_from(self.sessions.max()).unwrap_or(i64::MAX));
        metrics.config_generation.set(snapshot.generation as i64);
        metrics.encode()
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
