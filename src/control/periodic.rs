//! The one loop every background task of the proxy runs on:
//! `let mut ticks = Ticks::new(interval, stop); while ticks.next().await { … }`.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub struct Ticks {
    timer: Interval,
    stop: CancellationToken,
}

impl Ticks {
    /// Ticks at once and then every `interval`. A slow tick delays the next one instead of
    /// bunching the missed ones.
    pub fn new(interval: Duration, stop: &CancellationToken) -> Ticks {
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticks {
            timer,
            stop: stop.clone(),
        }
    }

    /// Waits for the next tick; false once `stop` is cancelled.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            _ = self.timer.tick() => true,
        }
    }
}
