//! Keyed token buckets with bounded memory, as GCRA (the generic cell rate algorithm, as in
//! `governor`): one number per key, the time at which its bucket will be full again, so a check
//! is one hash lookup and an addition, and a key whose bucket is full again holds nothing a new
//! one would not: [`Limiter::sweep`] drops it.
//!
//! Keys are hashed with a per-process random key (SipHash) and stored as their hash: 16 bytes an
//! entry however long the key, and no client can aim two keys at one bucket. At `max_keys`, new
//! keys share one overflow bucket until sweeps make room: memory stays bounded and a flood of
//! fresh keys is still limited, together.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

const SHARDS: usize = 16;

/// The answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; a call would be allowed again after this long.
    Limited(Duration),
}

#[derive(Debug)]
pub struct Limiter {
    /// Nanoseconds between two calls at the sustained rate.
    interval: u64,
    /// How far ahead of now a bucket's full time may run: `interval × burst`.
    tolerance: u64,
    max_keys: usize,
    /// Keys in all shards.
    keys: AtomicUsize,
    epoch: Instant,
    hasher: std::hash::RandomState,
    /// Key hash → nanoseconds since `epoch` when its bucket is full again.
    shards: Box<[Mutex<FxHashMap<u64, u64>>]>,
    overflow: Mutex<u64>,
}

impl Limiter {
    /// `rate` calls every `per`, `burst` at once, at most `max_keys` keys remembered.
    pub fn new(rate: u32, per: Duration, burst: u32, max_keys: usize) -> Limiter {
        let per = u64::try_from(per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(rate.max(1))).max(1);
        Limiter {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1))),
            max_keys: max_keys.max(1),
            keys: AtomicUsize::new(0),
            epoch: Instant::now(),
            hasher: std::hash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            overflow: Mutex::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one call's token from `key`'s bucket, if it has one.
    pub fn check(&self, key: &[u8]) -> Verdict {
        let now = self.now();
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(full_at) = map.get_mut(&hash) {
            return self.take(full_at, now);
        }
        if self.keys.load(Ordering::Relaxed) >= self.max_keys {
            let before = map.len();
            map.retain(|_, full_at| *full_at > now);
            self.keys.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
        if self.keys.load(Ordering::Relaxed) >= self.max_keys {
            drop(map);
            let mut shared = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
            return self.take(&mut shared, now);
        }
        let mut full_at = now;
        let verdict = self.take(&mut full_at, now);
        map.insert(hash, full_at);
        self.keys.fetch_add(1, Ordering::Relaxed);
        verdict
    }

    fn take(&self, full_at: &mut u64, now: u64) -> Verdict {
        let next = (*full_at).max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.tolerance {
            return Verdict::Limited(Duration::from_nanos(ahead - self.tolerance));
        }
        *full_at = next;
        Verdict::Allowed
    }

    /// Forgets the keys whose buckets are full again; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        self.shards
            .iter()
            .map(|shard| {
                let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
                let before = map.len();
                map.retain(|_, full_at| *full_at > now);
                if map.is_empty() {
                    map.shrink_to_fit();
                }
                self.keys.fetch_sub(before - map.len(), Ordering::Relaxed);
                before - map.len()
            })
            .sum()
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the key tables hold, counted from their capacity.
    pub fn table_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u64, u64)>() + 1;
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).capacity() * entry)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_with_the_wait() {
        let limiter = Limiter::new(5, Duration::from_secs(1), 5, 100);
        for _ in 0..5 {
            assert_eq!(limiter.check(b"a"), Verdict::Allowed);
        }
        let Verdict::Limited(wait) = limiter.check(b"a") else {
            panic!("the sixth call at once is over the burst")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert_eq!(
            limiter.check(b"b"),
            Verdict::Allowed,
            "another key, another bucket"
        );
    }

    #[test]
    fn refills_at_the_rate() {
        let limiter = Limiter::new(100, Duration::from_secs(1), 1, 100);
        assert_eq!(limiter.check(b"k"), Verdict::Allowed);
        assert!(matches!(limiter.check(b"k"), Verdict::Limited(_)));
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(limiter.check(b"k"), Verdict::Allowed);
    }

    #[test]
    fn memory_is_bounded_under_100k_keys() {
        let limiter = Limiter::new(1, Duration::from_secs(3600), 1, 1000);
        let mut limited = 0;
        for i in 0..100_000u32 {
            if limiter.check(&i.to_le_bytes()) != Verdict::Allowed {
                limited += 1;
            }
        }
        assert_eq!(limiter.len(), 1000);
        // Past the table, newcomers share one bucket: almost all of them are limited.
        assert!(limited >= 98_000, "{limited} limited");
        assert!(
            limiter.table_bytes() < 64 * 1024,
            "{} bytes",
            limiter.table_bytes()
        );

        // At the default bound every key fits, in about 2 MiB.
        let roomy = Limiter::new(1, Duration::from_secs(3600), 1, 100_000);
        for i in 0..100_000u32 {
            assert_eq!(roomy.check(&i.to_le_bytes()), Verdict::Allowed);
        }
        assert_eq!(roomy.len(), 100_000);
        assert!(
            roomy.table_bytes() < 4 << 20,
            "{} bytes",
            roomy.table_bytes()
        );
    }

    #[test]
    fn idle_keys_expire() {
        let limiter = Limiter::new(1000, Duration::from_secs(1), 1, 100_000);
        for i in 0..10_000u32 {
            limiter.check(&i.to_le_bytes());
        }
        assert_eq!(limiter.len(), 10_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(limiter.sweep(), 10_000);
        assert!(limiter.is_empty());
    }
}
