//! Property tests (proptest) of the code that reads hostile input: the config parser, the SSE
//! boundary tracker and legacy endpoint scanner, PROXY headers, sealed session tokens, request
//! classification, and the upstream HTTP/1.1 client's chunk decoder and head parser. Each
//! property states what must hold for *any* input: no panic, and the answer the simple path
//! gives.
//!
//! The case count is small by default so the whole set stays within a few seconds of CI;
//! `benches/fuzz.sh` runs the same properties with `PROPTEST_CASES` raised, for a bounded time.
//! A failing case proptest finds is written under `proptest-regressions/` and replayed first on
//! every later run: commit that file with the fix.

mod classify;
mod config;
mod h1;
mod proxy_header;
mod seal;
mod sse;

use proptest::test_runner::Config;

/// `PROPTEST_CASES` if set (the fuzz script), else `default` (CI).
pub(crate) fn cases(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        // A shrunk counterexample is what a person reads; a few hundred steps find it.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// `bytes` cut at the given points (sorted, deduplicated, within bounds) into consecutive chunks.
pub(crate) fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain([bytes.len()]) {
        chunks.push(bytes[start..point].to_vec());
        start = point;
    }
    chunks
}
