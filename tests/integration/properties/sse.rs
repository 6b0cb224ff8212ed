//! The SSE boundary tracker and the legacy `endpoint` scanner see a stream as it arrives: any
//! chunking of the same bytes must give the same answers as one chunk.

use proptest::prelude::*;
use switchyard::mcp::sse::{BoundaryTracker, EndpointScanner};

use super::{cases, chunked};

/// SSE-shaped bytes: fields, comments, blank lines with either line ending, and noise.
fn sse_text() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"event: endpoint\n".to_vec()),
        Just(b"event: message\n".to_vec()),
        Just(b"data: /messages?sessionId=abc\n".to_vec()),
        Just(b"data: {\"x\":1}\r\n".to_vec()),
        Just(b": keepalive\n".to_vec()),
        Just(b"retry: 1000\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"id: 7\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..16),
        // Long comment blocks push the endpoint event past the scanner's 8 KiB limit.
        (0usize..3000).prop_map(|n| format!(": {}\n\n", "x".repeat(n)).into_bytes()),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// Whether the stream is at an event boundary after each whole chunk, as one chunk would say.
fn boundary_after(bytes: &[u8]) -> bool {
    let mut tracker = BoundaryTracker::default();
    tracker.observe(bytes);
    tracker.at_boundary()
}

/// The endpoint the scanner finds, and whether it gave up, feeding `chunks` in order.
fn scan(chunks: &[Vec<u8>]) -> (Option<String>, bool) {
    let mut scanner = EndpointScanner::default();
    let mut found = None;
    for chunk in chunks {
        if let Some(url) = scanner.feed(chunk) {
            assert!(found.is_none(), "an endpoint reported twice");
            found = Some(url);
        }
    }
    (found, scanner.is_done())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn boundary_tracker_ignores_chunking(bytes in sse_text(), cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
        let mut tracker = BoundaryTracker::default();
        let mut fed = 0;
        for chunk in chunked(&bytes, &cuts) {
            tracker.observe(&chunk);
            fed += chunk.len();
            prop_assert_eq!(tracker.at_boundary(), boundary_after(&bytes[..fed]), "after {} bytes", fed);
        }
    }

    #[test]
    fn endpoint_scanner_ignores_chunking(bytes in sse_text(), cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
        let whole = scan(std::slice::from_ref(&bytes));
        let pieces = scan(&chunked(&bytes, &cuts));
        prop_assert_eq!(whole.0, pieces.0);
    }

    #[test]
    fn endpoint_scanner_never_panics_on_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4096), 0..8)) {
        let _ = scan(&chunks);
    }
}
