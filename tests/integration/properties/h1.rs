//! The upstream HTTP/1.1 client reads what a backend sends: any chunked encoding of a body, cut
//! into reads anywhere, must decode to that body; any bytes at all must not panic the chunk
//! decoder or the head parser, nor make the decoder give out more than it was given.

use bytes::BytesMut;
use http::Method;
use proptest::prelude::*;
use switchyard::upstream::h1::chunked::ChunkDecoder;
use switchyard::upstream::h1::codec::parse_head;

use super::{cases, chunked};

/// A body as chunks (any sizes, hex digits in either case, extensions and trailers sometimes),
/// and the body it encodes.
fn encoded() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let chunk = (
        proptest::collection::vec(any::<u8>(), 1..300),
        any::<bool>(),
        any::<bool>(),
    );
    (proptest::collection::vec(chunk, 0..8), any::<bool>()).prop_map(|(chunks, trailers)| {
        let (mut wire, mut body) = (Vec::new(), Vec::new());
        for (data, upper, extension) in chunks {
            let size = if upper {
                format!("{:X}", data.len())
            } else {
                format!("{:x}", data.len())
            };
            wire.extend_from_slice(size.as_bytes());
            if extension {
                wire.extend_from_slice(b" ;name=\"v\";x");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&data);
            wire.extend_from_slice(b"\r\n");
            body.extend_from_slice(&data);
        }
        wire.extend_from_slice(b"0\r\n");
        if trailers {
            wire.extend_from_slice(b"x-checksum: 1\r\nx-more: two\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        (wire, body)
    })
}

/// Feeds `reads` in order: the data given out, whether the body ended, and any error.
fn decode(reads: &[Vec<u8>]) -> (Vec<u8>, bool, bool) {
    let mut decoder = ChunkDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(data)) => out.extend_from_slice(&data),
                Ok(None) => break,
                Err(_) => return (out, false, true),
            }
        }
    }
    (out, decoder.is_done(), false)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_chunking_decodes_to_the_body(
        (wire, body) in encoded(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let (out, done, failed) = decode(&chunked(&wire, &cuts));
        prop_assert!(!failed);
        prop_assert!(done);
        prop_assert_eq!(out, body);
    }

    #[test]
    fn any_bytes_are_decoded_or_refused_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let (out, _, _) = decode(&chunked(&bytes, &cuts));
        prop_assert!(out.len() <= bytes.len());
    }

    #[test]
    fn any_head_is_parsed_or_refused_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        head in any::<bool>(),
    ) {
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        wire.extend_from_slice(&bytes);
        let method = if head { Method::HEAD } else { Method::GET };
        if let Ok(Some((_, length))) = parse_head(&wire, &method) {
            prop_assert!(length <= wire.len());
        }
    }
}
