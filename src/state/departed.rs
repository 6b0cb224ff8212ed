//! The series of backends that have left, removed once nothing can count for them any more.
//!
//! A target (its pool and backend labels, with its metric handles) that leaves the snapshot by a
//! reload, a DNS answer or the end of a drain may still be counted by the requests and streams
//! that picked it before, and its backend by a probe still running. Their series go only when
//! those are gone (the weak references below are dead) and the current snapshot names the same
//! labels no more, so a backend that comes back counts through fresh handles on live series.
//! Every sweep runs under the snapshot writer's lock: no snapshot can bring labels back while
//! their series are being removed.

use std::sync::{Arc, Weak};

use rustc_hash::FxHashSet;

use crate::metrics::Metrics;
use crate::upstream::backend::Backend;
use crate::upstream::balance::Target;

use super::Snapshot;

#[derive(Debug)]
pub struct Departed {
    pool: Arc<str>,
    address: Arc<str>,
    target: Weak<Target>,
    backend: Weak<Backend>,
    /// The target's own series are gone (or live on in the current snapshot's target).
    target_done: bool,
}

/// Notes every target of `previous` that `next` does not hold (by identity: a reload builds new
/// targets, and the old ones may still count for the requests that picked them).
pub fn note_departures(previous: &Snapshot, next: &Snapshot, into: &mut Vec<Departed>) {
    for target in previous.targets() {
        let stays = next
            .target(&target.backend.address)
            .is_some_and(|t| Arc::ptr_eq(t, target));
        if !stays {
            into.push(Departed {
                pool: Arc::clone(target.pool()),
                address: Arc::clone(&target.backend.address),
                target: Arc::downgrade(target),
                backend: Arc::downgrade(&target.backend),
                target_done: false,
            });
        }
    }
}

/// A departed target and its backend, each while something still holds it.
type Alive = (Option<Arc<Target>>, Option<Arc<Backend>>);

/// Removes the series nothing can count for any more and forgets the departures that are over.
pub fn sweep(departed: &mut Vec<Departed>, current: &Snapshot, metrics: &Metrics) {
    if departed.is_empty() {
        return;
    }
    // One view of what is alive, held for the whole sweep: a target or backend dying midway
    // cannot make one entry think another one still counts.
    let view: Vec<Alive> = departed
        .iter()
        .map(|d| (d.target.upgrade(), d.backend.upgrade()))
        .collect();
    let live_pairs: FxHashSet<(Arc<str>, Arc<str>)> = departed
        .iter()
        .zip(&view)
        .filter(|(_, (target, _))| target.is_some())
        .map(|(d, _)| (Arc::clone(&d.pool), Arc::clone(&d.address)))
        .collect();
    let live_addresses: FxHashSet<Arc<str>> = departed
        .iter()
        .zip(&view)
        .filter(|(_, (_, backend))| backend.is_some())
        .map(|(d, _)| Arc::clone(&d.address))
        .collect();
    let mut keep = Vec::with_capacity(departed.len());
    for (mut d, (target, backend)) in std::mem::take(departed).into_iter().zip(&view) {
        if target.is_some() {
            keep.push(d);
            continue;
        }
        if !d.target_done {
            // Labels still in use are removed when their last user departs in turn.
            let in_use = current
                .target(&d.address)
                .is_some_and(|t| *t.pool() == d.pool)
                || live_pairs.contains(&(Arc::clone(&d.pool), Arc::clone(&d.address)));
            if !in_use {
                metrics.forget_target(&d.pool, &d.address);
            }
            d.target_done = true;
        }
        let current_backend = current.backends.get(&d.address);
        match backend {
            // A backend the current snapshot holds is noted again when it leaves.
            Some(backend) if current_backend.is_some_and(|b| Arc::ptr_eq(b, backend)) => {}
            Some(_) => keep.push(d),
            None if current_backend.is_none() && !live_addresses.contains(&d.address) => {
                metrics.forget_backend(&d.address);
            }
            None => {}
        }
    }
    *departed = keep;
}

/// Backends that left the snapshot and still serve something (a request or a stream that
/// outlived their drain): their live gauges stay on show until they are done.
pub fn still_serving(departed: &[Departed], current: &Snapshot) -> Vec<Arc<Backend>> {
    let mut serving: Vec<Arc<Backend>> = Vec::new();
    for backend in departed.iter().filter_map(|d| d.backend.upgrade()) {
        let shown = current.backends.contains_key(&backend.address)
            || serving.iter().any(|b| b.address == backend.address);
        if !shown && backend.load() > 0 {
            serving.push(backend);
        }
    }
    serving
}
