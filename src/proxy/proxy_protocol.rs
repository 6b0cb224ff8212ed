//! PROXY protocol v1 and v2 (HAProxy's), read before TLS or HTTP on listeners that enable it.
//!
//! The header is read exactly, never past its end, so the bytes after it reach TLS or HTTP
//! untouched without a buffering wrapper around the stream; parsing is the `ppp` crate's. The
//! caller bounds the whole read with a timeout.

use std::net::SocketAddr;

use ppp::{HeaderResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature; a v1 header starts with `PROXY `.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes, CRLF included (spec section 2.1).
const V1_MAX: usize = 107;
/// v2 address blocks are small; TLVs (from AWS, Azure, GCP balancers) rarely pass a few hundred
/// bytes. Anything longer is refused rather than buffered.
const V2_MAX_PAYLOAD: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("PROXY v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("PROXY v2 header announces {0} bytes, more than {V2_MAX_PAYLOAD}")]
    V2TooLong(usize),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Reads one PROXY header from `io` and returns the client address it carries, or `None` for
/// `LOCAL`/`UNKNOWN` headers (health checks from the balancer itself: the TCP peer stands).
pub async fn read_header<IO>(io: &mut IO) -> Result<Option<SocketAddr>, ProxyHeaderError>
where
    IO: AsyncRead + Unpin,
{
    let mut header = vec![0u8; V2_SIGNATURE.len()];
    io.read_exact(&mut header).await?;
    if header.as_slice() == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        io.read_exact(&mut fixed).await?;
        let length = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if length > V2_MAX_PAYLOAD {
            return Err(ProxyHeaderError::V2TooLong(length));
        }
        header.extend_from_slice(&fixed);
        let start = header.len();
        header.resize(start + length, 0);
        io.read_exact(&mut header[start..]).await?;
    } else if header.starts_with(b"PROXY ") {
        // One byte at a time so nothing after the CRLF is consumed; at most 95 more reads.
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err(ProxyHeaderError::V1TooLong);
            }
            header.push(io.read_u8().await?);
        }
    } else {
        return Err(ProxyHeaderError::Missing);
    }
    client_address(&header)
}

fn client_address(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let malformed = |e: &dyn std::fmt::Debug| ProxyHeaderError::Malformed(format!("{e:?}"));
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(header)) => Ok(match header.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(header)) => Ok(match (header.command, header.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
        }),
        HeaderResult::V1(Err(e)) => Err(malformed(&e)),
        HeaderResult::V2(Err(e)) => Err(malformed(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut input = bytes;
        let result = read_header(&mut input).await;
        (result, input.to_vec())
    }

    #[tokio::test]
    async fn v1_header_is_read_exactly() {
        let (result, rest) = read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET /").await;
        assert_eq!(result.unwrap(), Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, b"GET /");
        let (result, _) = read(b"PROXY UNKNOWN\r\nGET /").await;
        assert_eq!(result.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_header_is_read_exactly() {
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (result, rest) = read(&bytes).await;
        assert_eq!(
            result.unwrap(),
            Some("[2001:db8::7]:40000".parse().unwrap())
        );
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
            &[b'P'; 200][..],
        ] {
            assert!(read(bad).await.0.is_err(), "{bad:?}");
        }
        let mut long = b"PROXY ".to_vec();
        long.extend_from_slice(&[b'1'; 200]);
        assert!(matches!(
            read(&long).await.0,
            Err(ProxyHeaderError::V1TooLong)
        ));
    }
}
