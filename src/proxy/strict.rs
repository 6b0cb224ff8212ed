//! Requests an intermediary and a backend could read differently are refused before any backend
//! sees them: a missing or repeated `Host` (RFC 9112 section 3.2: `400`, as nginx does), transfer
//! codings other than one `chunked` (HAProxy answers `400` too), `CONNECT` (a reverse proxy
//! tunnels nowhere: `405`), and more header fields than `limits.max_headers` over HTTP/2, where
//! hyper bounds only their size (HTTP/1 requests are held to the count by hyper itself).

use http::header::{self, HeaderMap};
use http::{Method, Request, Version};

use crate::config::Limits;

use super::error::ProxyError;

pub(super) fn check<B>(request: &Request<B>, limits: &Limits) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    let headers = request.headers();
    if headers.len() > limits.max_headers {
        return Err(ProxyError::TooManyHeaders {
            limit: limits.max_headers,
        });
    }
    check_host(headers, request.version())?;
    check_transfer_encoding(headers)
}

fn check_host(headers: &HeaderMap, version: Version) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if version == Version::HTTP_11 => Err(ProxyError::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        )),
        (Some(host), None) if !is_authority(host.as_bytes()) => {
            Err(ProxyError::BadRequest("invalid Host header"))
        }
        _ => Ok(()),
    }
}

/// `host [ ":" port ]` in RFC 3986's characters: no user info, path, space or quote can hide in
/// it. Empty is allowed (a request for a resource with no authority).
fn is_authority(value: &[u8]) -> bool {
    value.iter().all(|&b| AUTHORITY_BYTES[usize::from(b)])
}

/// The bytes [`is_authority`] allows, as a table: one look per byte of every request's `Host`.
static AUTHORITY_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = (byte as u8).is_ascii_alphanumeric();
        byte += 1;
    }
    let others = b"-._~%!$&'()*+,;=:[]";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

/// Every `Transfer-Encoding` line together must name exactly `chunked`: a stacked coding such
/// as `gzip, chunked` would reach the backend decoded but unlabelled (the header is hop-by-hop),
/// and repeated ones are how framing disagreements start.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ProxyError::BadRequest(
            "only Transfer-Encoding: chunked is accepted",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            header_read_timeout: std::time::Duration::from_secs(1),
            handshake_timeout: std::time::Duration::from_secs(1),
            max_header_size: 8192,
            max_headers: 4,
            max_request_body: None,
            http2_max_concurrent_streams: 10,
        }
    }

    fn request(version: Version, pairs: &[(&'static str, &'static str)]) -> Request<()> {
        let mut request = Request::post("/mcp").version(version);
        for (name, value) in pairs {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    fn verdict(version: Version, pairs: &[(&'static str, &'static str)]) -> Option<u16> {
        check(&request(version, pairs), &limits())
            .err()
            .map(|e| e.status().as_u16())
    }

    #[test]
    fn host_rules() {
        assert_eq!(verdict(Version::HTTP_11, &[("host", "a.example:80")]), None);
        assert_eq!(verdict(Version::HTTP_11, &[("host", "[::1]:8080")]), None);
        assert_eq!(verdict(Version::HTTP_11, &[]), Some(400));
        assert_eq!(verdict(Version::HTTP_10, &[]), None);
        assert_eq!(verdict(Version::HTTP_2, &[]), None);
        let two = [("host", "a.example"), ("host", "a.example")];
        assert_eq!(verdict(Version::HTTP_2, &two), Some(400));
        for bad in ["user@a.example", "a.example/x", "a b", "\"a\""] {
            assert_eq!(
                verdict(Version::HTTP_11, &[("host", bad)]),
                Some(400),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_authority_table_allows_exactly_rfc_3986s_characters() {
        for byte in 0..=255u8 {
            let allowed = byte.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&byte);
            assert_eq!(is_authority(&[byte]), allowed, "{byte:#04x}");
        }
    }

    #[test]
    fn only_one_chunked_coding() {
        let h = |te| {
            verdict(
                Version::HTTP_11,
                &[("host", "x"), ("transfer-encoding", te)],
            )
        };
        assert_eq!(h("chunked"), None);
        assert_eq!(h(" Chunked "), None);
        for bad in [
            "gzip, chunked",
            "chunked, chunked",
            "chunked,",
            "identity",
            "",
        ] {
            assert_eq!(h(bad), Some(400), "{bad:?}");
        }
        let twice = [
            ("host", "x"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ];
        assert_eq!(verdict(Version::HTTP_11, &twice), Some(400));
    }

    #[test]
    fn connect_and_header_count() {
        let connect = Request::connect("a.example:443")
            .header("host", "a.example:443")
            .body(())
            .unwrap();
        let status = check(&connect, &limits())
            .err()
            .map(|e| e.status().as_u16());
        assert_eq!(status, Some(405));
        let five = [
            ("host", "x"),
            ("a", "1"),
            ("b", "1"),
            ("c", "1"),
            ("d", "1"),
        ];
        assert_eq!(verdict(Version::HTTP_2, &five), Some(431));
        assert_eq!(verdict(Version::HTTP_2, &five[..4]), None);
    }

    /// Arbitrary header lists never panic, and whatever passes keeps the rules: one authority
    /// `Host` at most (exactly one on HTTP/1.1), one `chunked` coding at most, the count bound.
    /// (`benches/fuzz.sh` runs it with many more cases, with the integration properties.)
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn pairs() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
            let name = prop_oneof![
                Just("host".to_string()),
                Just("transfer-encoding".to_string()),
                "[a-z-]{1,8}",
            ];
            let value = prop_oneof![
                Just(b"chunked".to_vec()),
                Just(b" Chunked , ".to_vec()),
                Just(b"a.example:80".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..24),
            ];
            proptest::collection::vec((name, value), 0..7)
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
                ..ProptestConfig::default()
            })]

            #[test]
            fn what_passes_keeps_the_rules(
                version in prop_oneof![Just(Version::HTTP_10), Just(Version::HTTP_11), Just(Version::HTTP_2)],
                pairs in pairs(),
            ) {
                let mut request = Request::post("/mcp").version(version).body(()).unwrap();
                for (name, value) in &pairs {
                    if let (Ok(name), Ok(value)) = (
                        header::HeaderName::from_bytes(name.as_bytes()),
                        header::HeaderValue::from_bytes(value),
                    ) {
                        request.headers_mut().append(name, value);
                    }
                }
                if check(&request, &limits()).is_err() {
                    return Ok(());
                }
                let headers = request.headers();
                let hosts: Vec<_> = headers.get_all(header::HOST).iter().collect();
                prop_assert!(hosts.len() <= 1);
                prop_assert!(version != Version::HTTP_11 || hosts.len() == 1);
                prop_assert!(hosts.iter().all(|h| !h.as_bytes().iter().any(|b| b"@/ \"".contains(b))));
                let codings: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
                prop_assert!(codings.len() <= 1);
                prop_assert!(codings.iter().all(|c| c.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")));
                prop_assert!(headers.len() <= limits().max_headers);
            }
        }
    }
}
