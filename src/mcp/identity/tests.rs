//! The scanner against bodies split at every byte, batches, oversize and malformed bodies.

use super::*;

fn scan_whole(body: &[u8], limit: usize) -> (Progress, Vec<Call>) {
    let mut scanner = Scanner::new(limit);
    scanner.feed(body);
    scanner.finish();
    (scanner.progress(), scanner.calls().to_vec())
}

/// The same body fed in two pieces split at every byte, and one byte at a time.
fn scan_every_split(body: &[u8]) -> (Progress, Vec<Call>) {
    let whole = scan_whole(body, 65_536);
    for at in 0..=body.len() {
        let mut scanner = Scanner::new(65_536);
        scanner.feed(&body[..at]);
        scanner.feed(&body[at..]);
        scanner.finish();
        assert_eq!(
            (scanner.progress(), scanner.calls().to_vec()),
            whole,
            "split at {at}"
        );
    }
    let mut scanner = Scanner::new(65_536);
    for byte in body {
        scanner.feed(std::slice::from_ref(byte));
    }
    scanner.finish();
    assert_eq!((scanner.progress(), scanner.calls().to_vec()), whole);
    whole
}

fn call(method: &str, name: Option<&str>, id: Option<&str>) -> Call {
    Call {
        method: Some(method.into()),
        name: name.map(Into::into),
        id: id.map(Into::into),
        ambiguous: false,
    }
}

#[test]
fn finds_method_and_tool_at_every_split() {
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"name":"not this","method":"nor this"}}}"#;
    let (progress, calls) = scan_every_split(body);
    assert_eq!(progress, Progress::Complete);
    assert_eq!(calls, vec![call("tools/call", Some("echo"), Some("7"))]);
}

#[test]
fn params_before_method_and_escapes() {
    let body = br#" { "params" : { "uri" : "file:///a\"b" , "name": "x" }, "id": "r-1", "meth\u006fd" : "resources\/read" } "#;
    let (progress, calls) = scan_every_split(body);
    assert_eq!(progress, Progress::Complete);
    assert_eq!(
        calls,
        vec![call(
            "resources/read",
            Some("file:///a\"b"),
            Some("\"r-1\"")
        )]
    );
}

#[test]
fn batches_count_each_element() {
    let body = br#"[{"id":1,"method":"tools/call","params":{"name":"a"}},{"method":"notifications/initialized"},3,{"id":2,"method":"prompts/get","params":{"name":"p"}}]"#;
    let (progress, calls) = scan_every_split(body);
    assert_eq!(progress, Progress::Complete);
    assert_eq!(
        calls,
        vec![
            call("tools/call", Some("a"), Some("1")),
            call("notifications/initialized", None, None),
            Call::default(),
            call("prompts/get", Some("p"), Some("2")),
        ]
    );
}

#[test]
fn a_body_past_the_limit_is_truncated_not_an_error() {
    let padding = " ".repeat(100);
    let body = format!(r#"{{{padding}"method":"tools/call","params":{{"name":"echo"}}}}"#);
    let (progress, calls) = scan_whole(body.as_bytes(), 64);
    assert_eq!(progress, Progress::Truncated);
    assert!(calls.is_empty());
    let (progress, calls) = scan_whole(body.as_bytes(), body.len());
    assert_eq!(progress, Progress::Complete);
    assert_eq!(calls.len(), 1);
}

#[test]
fn malformed_bodies_name_nothing() {
    for body in [
        &b"not json"[..],
        b"{\"method\":\"tools/call\"",
        b"\"tools/call\"",
        b"",
    ] {
        let (progress, calls) = scan_whole(body, 1024);
        assert_eq!(progress, Progress::Malformed, "{body:?}");
        assert!(calls.iter().all(|c| c.method.is_none()), "{body:?}");
    }
}

#[test]
fn a_repeated_key_makes_the_call_ambiguous() {
    let body = br#"{"method":"tools/call","params":{"name":"allowed","name":"other"}}"#;
    let (_, calls) = scan_every_split(body);
    assert!(calls[0].ambiguous);
    let body = br#"{"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#;
    let (_, calls) = scan_every_split(body);
    assert!(calls[0].ambiguous);
}

#[test]
fn headers_and_disagreement() {
    let mut headers = HeaderMap::new();
    assert_eq!(from_headers(&headers), None);
    headers.insert(METHOD_HEADER, "tools/call".parse().unwrap());
    headers.insert(NAME_HEADER, "echo".parse().unwrap());
    let header = from_headers(&headers).unwrap();
    assert_eq!(header, call("tools/call", Some("echo"), None));
    assert!(!disagree(
        &header,
        &[call("tools/call", Some("echo"), None)]
    ));
    assert!(disagree(
        &header,
        &[call("tools/call", Some("sleep"), None)]
    ));
    assert!(disagree(&header, &[call("tools/list", None, None)]));
    // A body that names nothing cannot disagree.
    assert!(!disagree(&header, &[Call::default()]));
}
