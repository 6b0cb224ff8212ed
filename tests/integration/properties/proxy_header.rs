//! PROXY protocol headers (v1 text, v2 binary): arbitrary bytes never panic and never consume
//! past the header; valid headers give back the client address they carry and leave the bytes
//! after them untouched.

use std::net::{IpAddr, SocketAddr};

use futures_util::FutureExt as _;
use ppp::v2;
use proptest::prelude::*;
use switchyard::proxy::proxy_protocol::read_header;

use super::cases;

/// The address read and the bytes left unread. Reading from a slice never waits, so the future
/// is done on its first poll.
fn read(bytes: &[u8]) -> (Option<Result<Option<SocketAddr>, String>>, Vec<u8>) {
    let mut input = bytes;
    let result = read_header(&mut input)
        .now_or_never()
        .map(|r| r.map_err(|e| e.to_string()));
    (result, input.to_vec())
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn head() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"PROXY ".to_vec()),
        Just(b"PROXY TCP4 ".to_vec()),
        Just(b"PROXY TCP6 ".to_vec()),
        Just(V2_SIGNATURE.to_vec()),
        Just([V2_SIGNATURE, &[0x21, 0x11]].concat()),
    ]
}

fn address() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_or_overread(head in head(), tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let bytes = [head, tail].concat();
        let (result, rest) = read(&bytes);
        let result = result.expect("a slice never makes the read wait");
        prop_assert!(bytes.ends_with(&rest));
        if result.is_ok() {
            let header = &bytes[..bytes.len() - rest.len()];
            prop_assert!(header.ends_with(b"\r\n") || header.starts_with(V2_SIGNATURE), "{:?}", header);
        }
    }

    #[test]
    fn v1_headers_round_trip(source in address(), destination in address(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let destination = match (source.ip(), destination.ip()) {
            (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => SocketAddr::new(source.ip(), destination.port()),
            _ => destination,
        };
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        let header = format!(
            "PROXY {family} {} {} {} {}\r\n",
            source.ip(), destination.ip(), source.port(), destination.port()
        );
        let bytes = [header.as_bytes(), &tail].concat();
        let (result, rest) = read(&bytes);
        prop_assert_eq!(result.unwrap(), Ok(Some(source)));
        prop_assert_eq!(rest, tail);
    }

    #[test]
    fn v2_headers_round_trip(source in address(), destination in address(), tlv in proptest::collection::vec(any::<u8>(), 0..200), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let destination = match (source.ip(), destination.ip()) {
            (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => SocketAddr::new(source.ip(), destination.port()),
            _ => destination,
        };
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .write_tlv(v2::Type::NoOp, &tlv)
        .unwrap()
        .build()
        .unwrap();
        let bytes = [header.as_slice(), &tail].concat();
        let (result, rest) = read(&bytes);
        prop_assert_eq!(result.unwrap(), Ok(Some(source)));
        prop_assert_eq!(rest, tail);
    }
}
