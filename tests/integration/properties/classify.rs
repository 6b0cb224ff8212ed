//! Request classification and what a request names (its session, its call): arbitrary methods,
//! headers and queries never panic, and the answers keep their simple rules.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use switchyard::mcp::classify::{RouteClass, classify};
use switchyard::mcp::identity::{self, Progress, Scanner};
use switchyard::mcp::seal::with_session_id;
use switchyard::mcp::session::session_id;

use super::{cases, chunked};

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::OPTIONS),
        Just(Method::CONNECT),
        "[A-Za-z!#$%&'*+.^_`|~-]{1,12}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        Just("accept".to_string()),
        Just("upgrade".to_string()),
        Just("connection".to_string()),
        Just("mcp-session-id".to_string()),
        Just("mcp-method".to_string()),
        Just("mcp-name".to_string()),
        "[a-z0-9-]{1,16}",
    ];
    let value = prop_oneof![
        Just(b"text/event-stream".to_vec()),
        Just(b"websocket".to_vec()),
        Just(b"Upgrade, keep-alive".to_vec()),
        Just(b"tools/call".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..48),
    ];
    proptest::collection::vec((name, value), 0..10).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                map.append(name, value);
            }
        }
        map
    })
}

/// The calls the scanner reads from `chunks`, and how far it got.
fn scan(chunks: &[Vec<u8>]) -> (Vec<identity::Call>, Progress) {
    let mut scanner = Scanner::new(4096);
    for chunk in chunks {
        scanner.feed(chunk);
    }
    scanner.finish();
    (scanner.calls().to_vec(), scanner.progress())
}

fn json_rpc() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#.to_vec()
        ),
        Just(br#"[{"method":"resources/read","params":{"uri":"file:///a"}},"#.to_vec()),
        Just(br#"{"method":"a","method":"b"}"#.to_vec()),
        Just(b"\"\\u00e9\\\"\" ".to_vec()),
        Just(b"{[]}:,".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn classification_follows_the_method(method in method(), headers in headers()) {
        let class = classify(&method, &headers);
        match class {
            RouteClass::WebSocket | RouteClass::SseStream => prop_assert_eq!(&method, &Method::GET),
            RouteClass::Message => prop_assert!(method == Method::POST || method == Method::DELETE),
            RouteClass::Other => prop_assert!(method != Method::POST && method != Method::DELETE),
        }
        let _ = identity::from_headers(&headers);
    }

    #[test]
    fn the_session_named_is_in_the_request(headers in headers(), query in any::<String>(), id in "[ -~]{1,40}") {
        if let Some(session) = session_id(&headers, Some(&query)) {
            prop_assert!(!session.is_empty());
            let in_header = headers.get("mcp-session-id").is_some_and(|v| v.as_bytes() == session.as_bytes());
            prop_assert!(in_header || query.contains(session));
        }
        let url = format!("/messages?{query}");
        if let Some(rewritten) = with_session_id(&url, &id) {
            prop_assert!(rewritten.contains(&id));
            prop_assert!(rewritten.starts_with("/messages?"));
        }
    }

    #[test]
    fn the_call_scanner_ignores_chunking(body in json_rpc(), cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        prop_assert_eq!(scan(std::slice::from_ref(&body)), scan(&chunked(&body, &cuts)));
    }

    #[test]
    fn unsealing_any_request_never_panics(method in method(), headers in headers(), path in "/[ -~]{0,60}") {
        let sealer = switchyard::mcp::seal::Sealer::new(&[switchyard::mcp::seal::SealKey([9; 32])]).unwrap();
        let Ok(uri) = path.parse::<http::Uri>() else { return Ok(()); };
        let mut request = http::Request::builder().method(method).uri(uri).body(()).unwrap();
        *request.headers_mut() = headers;
        let unsealed = switchyard::mcp::seal::unseal_request(Some(&sealer), &mut request);
        // Nothing a client makes up opens.
        let opened = matches!(unsealed, switchyard::mcp::seal::Unsealed::Opened { .. });
        prop_assert!(!opened, "a made-up token opened");
    }
}
