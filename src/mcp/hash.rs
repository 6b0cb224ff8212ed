//! Hashes that every replica and every build must agree on: backend ring keys, session shards,
//! log tags and the config file digest.

use std::hash::Hasher;

/// A deterministic 64-bit hash: FxHash (no random seed) finished by a strong mixer.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    hasher.write(bytes);
    mix(hasher.finish())
}

/// The splitmix64 finaliser: spreads every input bit over the whole word.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
