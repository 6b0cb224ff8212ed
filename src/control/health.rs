//! Active health probes: one task per backend of the current snapshot, kept in step with reloads.
//! What a probe is and what its verdicts do lives in [`crate::upstream::health`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::periodic::Ticks;
use crate::state::State;
use crate::upstream::backend::Backend;
use crate::upstream::health::{probe, record_probe, turn_healthy};

/// How often the supervisor looks for backends that came or went with a reload.
const SUPERVISOR_TICK: Duration = Duration::from_millis(250);

/// Keeps one probe task per backend of the current snapshot: new backends get one, backends
/// that left (or were replaced by a new object for the same address) lose theirs.
pub async fn supervise(state: Arc<State>, stop: CancellationToken) {
    let mut running = ProbeTasks::new();
    let mut ticks = Ticks::new(SUPERVISOR_TICK, &stop);
    while ticks.next().await {
        keep_probes_in_step(&state, &mut running, &stop);
    }
    for (_, (_, task)) in running {
        task.cancel();
    }
}

type ProbeTasks = HashMap<Arc<str>, (Arc<Backend>, CancellationToken)>;

fn keep_probes_in_step(state: &Arc<State>, running: &mut ProbeTasks, stop: &CancellationToken) {
    let snapshot = state.snapshot();
    if snapshot.config.health.probes.is_none() {
        // Probing was switched off by a reload: no verdict of it may linger.
        for (_, (backend, task)) in running.drain() {
            task.cancel();
            turn_healthy(&state.metrics, &backend);
        }
        return;
    }
    running.retain(|address, (backend, task)| {
        let current = snapshot
            .backends
            .get(address)
            .is_some_and(|b| Arc::ptr_eq(b, backend));
        if !current {
            task.cancel();
        }
        current
    });
    for (address, backend) in &snapshot.backends {
        if running.contains_key(address) {
            continue;
        }
        let task = stop.child_token();
        tokio::spawn(probe_loop(
            Arc::clone(state),
            Arc::clone(backend),
            task.clone(),
        ));
        running.insert(Arc::clone(address), (Arc::clone(backend), task));
    }
}

/// Up to `max`, at random, so the probes of many proxies (and of many backends) spread out.
fn jitter(max: Duration) -> Duration {
    Duration::from_millis(fastrand::u64(
        0..=u64::try_from(max.as_millis()).unwrap_or(u64::MAX),
    ))
}

async fn probe_loop(state: Arc<State>, backend: Arc<Backend>, stop: CancellationToken) {
    let Some(first) = state
        .snapshot()
        .config
        .health
        .probes
        .as_ref()
        .map(|p| p.interval)
    else {
        return;
    };
    // Start at a random point of the first interval, and never probe a backend
    // more often than the interval.
    let mut next = tokio::time::Instant::now() + jitter(first);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let snapshot = state.snapshot();
        let Some(mut probes) = snapshot.config.health.probes.clone() else {
            return;
        };
        // A route may probe its backends at its own path.
        if let Some(path) = snapshot.probe_path(&backend) {
            probes.path = path.clone();
        }
        let limits = snapshot.pool_limits;
        let tls = snapshot.loaded.upstream_tls.clone();
        drop(snapshot);
        let started = tokio::time::Instant::now();
        // An ejected backend sits out its ejection; probes count again after it.
        if !backend.health.is_ejected() {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = probe(&backend, &probes, limits, tls.as_ref()) => outcome,
            };
            tracing::debug!(backend = %backend.address, outcome = outcome.as_str(), "probe");
            record_probe(&state.metrics, &backend, &probes, outcome);
        }
        next = started + probes.interval + jitter(probes.jitter);
    }
}
