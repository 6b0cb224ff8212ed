//! A live progress line on stderr while a run lasts, so a long run is not silent: answers so far,
//! the rate over the last second, errors so far. Only on a terminal: scripts (`benches/compare.sh`)
//! read the one JSON line on stdout and get nothing else. The line is cleared at the end.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters the connections move as they go, warm-up included.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Streams or connections open, for the modes that hold them.
    pub open: AtomicU64,
}

/// The ticking line; cleared when dropped.
pub(super) struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts ticking once a second, when stderr is a terminal; otherwise does nothing. `end`,
    /// when known, is shown as the run's length.
    pub(super) fn start(mode: &'static str, live: Arc<Live>, end: Option<Instant>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { task: None };
        }
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let (mut last_ok, mut last_at) = (0, started);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = Instant::now();
                let ok = live.ok.load(Ordering::Relaxed);
                let rate = (ok - last_ok.min(ok)) as f64 / (now - last_at).as_secs_f64();
                (last_ok, last_at) = (ok, now);
                let total = end.map(|end| end.saturating_duration_since(started));
                let line = line(mode, now - started, total, &live, rate);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}\x1b[K");
                let _ = err.flush();
            }
        });
        Progress { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// `post  4s/11s  12345 ok  3086/s  0 errors` (with `N open` for the modes that hold streams).
fn line(mode: &str, elapsed: Duration, total: Option<Duration>, live: &Live, rate: f64) -> String {
    let open = live.open.load(Ordering::Relaxed);
    let open = if open > 0 {
        format!("  {open} open")
    } else {
        String::new()
    };
    // Rounded: the ticker starts a moment after the run's clock, so 3 s would floor to 2.
    let total = total.map_or(String::new(), |t| format!("/{:.0}s", t.as_secs_f64()));
    format!(
        "{mode}  {}s{total}  {} ok  {rate:.0}/s  {} errors{open}",
        elapsed.as_secs(),
        live.ok.load(Ordering::Relaxed),
        live.errors.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_rate_and_errors_so_far() {
        let live = Live::default();
        live.ok.store(12345, Ordering::Relaxed);
        live.errors.store(2, Ordering::Relaxed);
        let text = line(
            "post",
            Duration::from_millis(4200),
            Some(Duration::from_millis(10_990)),
            &live,
            3086.4,
        );
        assert_eq!(text, "post  4s/11s  12345 ok  3086/s  2 errors");
        live.open.store(7, Ordering::Relaxed);
        let text = line("sse", Duration::from_secs(3), None, &live, 0.0);
        assert_eq!(text, "sse  3s  12345 ok  0/s  2 errors  7 open");
    }
}
