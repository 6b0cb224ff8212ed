//! `[policy]` upkeep: idle rate-limit keys forgotten, the JWKS fetched again when due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::state::State;

const SWEEP_EVERY: Duration = Duration::from_secs(10);

pub async fn upkeep(state: Arc<State>, stop: CancellationToken) {
    let mut last_sweep = Instant::now();
    let mut ticks = super::periodic::Ticks::new(Duration::from_secs(1), &stop);
    while ticks.next().await {
        let snapshot = state.snapshot();
        let sweep = last_sweep.elapsed() >= SWEEP_EVERY;
        if sweep {
            last_sweep = Instant::now();
        }
        for policy in crate::state::policy::all(&snapshot) {
            if sweep {
                for limiter in &policy.limiters {
                    limiter.sweep();
                }
            }
            if let (Some(store), Some(auth)) = (&policy.jwks, &policy.config.auth) {
                let tls = snapshot.loaded.upstream_tls.as_ref();
                store
                    .refresh_if_due(auth.jwks_refresh, &state.metrics, tls)
                    .await;
            }
        }
    }
}
