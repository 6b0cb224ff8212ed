//! Upstream health: active probes, passive ejection, and the fail-open choice.
//!
//! - **Active probes** (only with a `[health]` table): one task per backend address `GET`s the
//!   probe path through [`Backend::send`], the same connect path as real traffic, so whatever
//!   scheme the backend speaks the probe speaks too. A verdict flips only after `rise` passes or
//!   `fall` failures in a row (HAProxy's `rise`/`fall`).
//! - **Passive ejection** (always, unless `max_fails = 0`): failures of real traffic that are the
//!   backend's doing ([`UpstreamError::counts_against_backend`]: refused or dropped connections,
//!   failed handshakes, malformed answers; not slow answers, not clients' broken or stalled
//!   bodies) count against it; `max_fails` of them within `fail_window` eject it for
//!   `ejection` (nginx's `max_fails`/`fail_timeout`, Envoy's outlier detection). With probes on it
//!   then needs `rise` passes before it takes work again; without, it returns when the ejection
//!   ends, as in nginx.
//! - A backend that turns unhealthy has its streams and tunnels closed and its idle connections
//!   dropped: its sessions are answered `404` while it is out, so the application can start a
//!   new session elsewhere; the table keeps them, and they work again if it comes back.
//!
//! New backends start healthy: marking a fresh fleet down until its first probes pass would turn
//! every cold start and every reload that adds backends into an outage (HAProxy also starts
//! servers up: `init-state up` is its default; nginx Plus needs the explicit `mandatory` flag to
//! start them down). A dead new backend is found by its first `fall` probes, or sooner by
//! passive detection, and its failed connects are retried on another backend meanwhile.
//!
//! Health lives in atomics on the `Backend`, which the snapshot reuses by address, so it survives
//! reloads. The supervisor keeps one probe task per backend object in the current snapshot.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header;
use http_body_util::BodyExt;

use crate::config::{HealthConfig, ProbeConfig};
use crate::metrics::{BackendLabels, HEALTH_STATES, Metrics, ProbeLabels, TransitionLabels};
use crate::upstream::backend::{Backend, Exchange, PoolLimits, UpstreamError};
use crate::upstream::body::RequestBody;
use crate::upstream::h1::Outbound;

/// Health bookkeeping of one backend: lock-free, touched by probes and failed requests only.
#[derive(Debug, Default)]
pub struct Health {
    passes: AtomicU32,
    failures: AtomicU32,
    window_start_ms: AtomicU64,
    window_fails: AtomicU32,
    /// Milliseconds on [`now_ms`]'s clock; 0 when never ejected.
    ejected_until_ms: AtomicU64,
}

impl Health {
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if until > now_ms() {
            return true;
        }
        // Over: back to the clock-free check for every later request.
        let _ =
            self.ejected_until_ms
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// Counts one failure of real traffic; true when it crosses `max_fails` within `window`, in
    /// which case the caller ejects the backend (exactly one caller sees true per crossing).
    fn note_failure(&self, now: u64, window: Duration, max_fails: u32) -> bool {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let expired = start == 0 || now.saturating_sub(start) > millis(window);
        if expired
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.window_fails.store(0, Ordering::Relaxed);
        }
        let fails = self.window_fails.fetch_add(1, Ordering::Relaxed) + 1;
        fails >= max_fails
            && self
                .window_fails
                .compare_exchange(fails, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn eject_until(&self, until: u64) {
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        self.passes.store(0, Ordering::Relaxed);
    }

    /// Adds a probe result to the streaks; returns the verdict once a streak reaches its threshold.
    fn note_probe(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let (streak, other, threshold) = if passed {
            (&self.passes, &self.failures, rise)
        } else {
            (&self.failures, &self.passes, fall)
        };
        other.store(0, Ordering::Relaxed);
        let run = streak.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        (run >= threshold).then_some(passed)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the first call, never 0, so 0 can mean "not set".
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    millis(EPOCH.get_or_init(Instant::now).elapsed()) + 1
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    Pass,
    BadStatus(u16),
    Timeout,
    Error,
}

impl ProbeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeOutcome::Pass => "pass",
            ProbeOutcome::BadStatus(_) => "bad_status",
            ProbeOutcome::Timeout => "timeout",
            ProbeOutcome::Error => "error",
        }
    }
}

/// One `GET` of the probe path, bounded by the probe timeout from connect to the last body byte.
pub async fn probe(
    backend: &Arc<Backend>,
    probes: &ProbeConfig,
    limits: PoolLimits,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> ProbeOutcome {
    let Ok(request) = http::Request::get(probes.path.clone())
        .header(header::HOST, backend.authority.as_str())
        .header(header::USER_AGENT, "switchyard-health")
        .body(RequestBody::empty())
    else {
        return ProbeOutcome::Error;
    };
    let exchange = async {
        let Exchange { response } = backend
            .send(
                Outbound::boxed(request),
                probes.timeout,
                probes.timeout,
                limits,
                tls,
            )
            .await
            .map_err(|(error, _)| error)?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return Ok(status);
            }
        }
        if let Some(conn) = body.into_reusable() {
            backend.checkin(conn, limits);
        }
        Ok::<u16, UpstreamError>(status)
    };
    match tokio::time::timeout(probes.timeout, exchange).await {
        Err(_)
        | Ok(Err(UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseTimeout { .. })) => {
            ProbeOutcome::Timeout
        }
        Ok(Err(_)) => ProbeOutcome::Error,
        Ok(Ok(status)) if (probes.expect_status.0..=probes.expect_status.1).contains(&status) => {
            ProbeOutcome::Pass
        }
        Ok(Ok(status)) => ProbeOutcome::BadStatus(status),
    }
}

/// Counts a probe result and flips the backend once a streak reaches `rise` or `fall`.
pub fn record_probe(
    metrics: &Metrics,
    backend: &Arc<Backend>,
    probes: &ProbeConfig,
    outcome: ProbeOutcome,
) {
    metrics
        .health_probes
        .get_or_create(&ProbeLabels {
            backend: backend.address.to_string(),
            outcome: outcome.as_str(),
        })
        .inc();
    let passed = outcome == ProbeOutcome::Pass;
    match backend.health.note_probe(passed, probes.rise, probes.fall) {
        Some(true) => turn_healthy(metrics, backend),
        Some(false) => turn_unhealthy(metrics, backend, outcome.as_str()),
        None => {}
    }
}

pub fn turn_healthy(metrics: &Metrics, backend: &Arc<Backend>) {
    if !backend.swap_healthy(true) {
        tracing::info!(backend = %backend.address, "backend healthy");
        count_transition(metrics, backend, HEALTH_STATES[0]);
    }
}

fn turn_unhealthy(metrics: &Metrics, backend: &Arc<Backend>, why: &str) {
    if backend.swap_healthy(false) {
        tracing::warn!(backend = %backend.address, why, "backend unhealthy");
        count_transition(metrics, backend, HEALTH_STATES[1]);
        cut_off(backend);
    }
}

/// Its sessions are lost from now on: streams and tunnels end instead of hanging, SSE streams
/// at an event boundary with a `retry:` hint, and no request reuses a connection to it.
fn cut_off(backend: &Backend) {
    backend.close_streams();
    backend.close_idle();
}

fn count_transition(metrics: &Metrics, backend: &Backend, to: &'static str) {
    metrics
        .health_transitions
        .get_or_create(&TransitionLabels {
            backend: backend.address.to_string(),
            to,
        })
        .inc();
}

/// Passive detection: a request to `backend` got no response because of `error`.
pub fn note_request_failure(
    metrics: &Metrics,
    health: &HealthConfig,
    pool: &str,
    backend: &Arc<Backend>,
    error: &UpstreamError,
) {
    if health.max_fails == 0 || backend.health.is_ejected() || !error.counts_against_backend() {
        return;
    }
    let now = now_ms();
    if !backend
        .health
        .note_failure(now, health.fail_window, health.max_fails)
    {
        return;
    }
    backend
        .health
        .eject_until(now.saturating_add(millis(health.ejection)).max(now + 1));
    tracing::warn!(
        backend = %backend.address,
        %error,
        max_fails = health.max_fails,
        ejection = ?health.ejection,
        "backend ejected after repeated failures",
    );
    metrics
        .ejections
        .get_or_create(&BackendLabels {
            pool: pool.to_string(),
            backend: backend.address.to_string(),
        })
        .inc();
    if health.probes.is_some() {
        // Back only after `rise` passing probes once the ejection ends.
        turn_unhealthy(metrics, backend, "ejected");
    } else {
        cut_off(backend);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_outcome_is_one_a_departed_backend_forgets() {
        for outcome in [
            ProbeOutcome::Pass,
            ProbeOutcome::BadStatus(500),
            ProbeOutcome::Timeout,
            ProbeOutcome::Error,
        ] {
            assert!(crate::metrics::PROBE_OUTCOMES.contains(&outcome.as_str()));
        }
    }

    #[test]
    fn verdicts_need_full_streaks() {
        let health = Health::default();
        assert_eq!(health.note_probe(false, 2, 3), None);
        assert_eq!(health.note_probe(false, 2, 3), None);
        // A pass breaks the failure streak.
        assert_eq!(health.note_probe(true, 2, 3), None);
        assert_eq!(health.note_probe(false, 2, 3), None);
        assert_eq!(health.note_probe(false, 2, 3), None);
        assert_eq!(health.note_probe(false, 2, 3), Some(false));
        assert_eq!(health.note_probe(true, 2, 3), None);
        assert_eq!(health.note_probe(true, 2, 3), Some(true));
        assert_eq!(health.note_probe(true, 2, 3), Some(true));
    }

    #[test]
    fn failures_eject_only_within_the_window() {
        let health = Health::default();
        let window = Duration::from_millis(100);
        assert!(!health.note_failure(1_000, window, 3));
        assert!(!health.note_failure(1_050, window, 3));
        // The window started at 1000 has passed: counting starts again.
        assert!(!health.note_failure(1_200, window, 3));
        assert!(!health.note_failure(1_210, window, 3));
        assert!(health.note_failure(1_220, window, 3));
        // The crossing resets the count.
        assert!(!health.note_failure(1_230, window, 3));
    }

    #[test]
    fn ejection_ends_by_itself() {
        let health = Health::default();
        assert!(!health.is_ejected());
        health.eject_until(now_ms() + 60_000);
        assert!(health.is_ejected());
        health.eject_until(now_ms().saturating_sub(1).max(1));
        assert!(!health.is_ejected());
    }
}
