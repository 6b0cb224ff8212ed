//! Request heads written and response heads read (RFC 9112): the head in one buffer, response
//! heads parsed by `httparse` (the parser hyper uses) within a header-count and size limit, and
//! the body framing the head announces (section 6.3).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Header fields a response head may carry.
pub const MAX_HEADERS: usize = 100;
/// Bytes a response head may take, status line to blank line.
pub const MAX_HEAD: usize = 64 * 1024;
/// Room in a response's header map. hyper keeps the map of the response it wrote and parses the
/// client's next request on that connection into it, and the proxy then adds up to five fields
/// (`Forwarded`, `X-Forwarded-*`, `X-Request-Id`): with room for 12 a typical request fits
/// without the map growing (a reallocation and a rehash per request otherwise).
const HEADER_MAP_ROOM: usize = 12;

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body (and no framing header added, unless the method expects a body).
    Empty,
    /// `Content-Length`, as the client gave it.
    Length(u64),
    /// Chunked, for a body of unknown length.
    Chunked,
}

/// Header fields the proxy adds to a request (`Forwarded`, `X-Forwarded-*`, `X-Request-Id`),
/// kept in wire form beside the request instead of in its header map: there each would cost a
/// hash and an insert per request, only to be written out once by [`encode_head`].
#[derive(Debug, Default, Clone)]
pub struct AddedFields(Vec<u8>);

impl AddedFields {
    /// Room for `bytes` of field lines, allocated once.
    pub fn with_capacity(bytes: usize) -> AddedFields {
        AddedFields(Vec::with_capacity(bytes))
    }

    /// Adds `name: value`; a value a field may not hold (control characters) is left out.
    pub fn push(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        self.push_with(name, |line| line.extend_from_slice(value))
    }

    /// Adds `name: value` for a value that is already a field's.
    pub fn push_value(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.0.extend_from_slice(name.as_str().as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }

    /// Adds a field whose value `write` appends, without a buffer of its own; left out, as by
    /// [`AddedFields::push`], if the value holds what a field value may not.
    pub fn push_with(&mut self, name: &HeaderName, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let line_start = self.0.len();
        self.0.extend_from_slice(name.as_str().as_bytes());
        self.0.extend_from_slice(b": ");
        let value_start = self.0.len();
        write(&mut self.0);
        if !self.0[value_start..]
            .iter()
            .all(|&b| is_field_value_byte(b))
        {
            self.0.truncate(line_start);
            return false;
        }
        self.0.extend_from_slice(b"\r\n");
        true
    }

    /// The value of the first field named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.split(|&b| b == b'\n').find_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let (field, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            let value = value.strip_prefix(b": ")?;
            field.eq_ignore_ascii_case(name.as_bytes()).then_some(value)
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What `HeaderValue` accepts: visible ASCII, obs-text, space and tab.
fn is_field_value_byte(byte: u8) -> bool {
    byte == b'\t' || (byte >= 0x20 && byte != 0x7f)
}

/// Writes the request head for `parts`, with the proxy's `added` fields after the client's,
/// framed as `framing` says, into one buffer.
pub fn encode_head(
    parts: &http::request::Parts,
    added: &AddedFields,
    framing: RequestFraming,
) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(256 + parts.headers.len() * 32 + added.0.len());
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(&mut head, &parts.headers, framing_header);
    head.extend_from_slice(&added.0);
    match framing {
        RequestFraming::Length(length) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(length.to_string().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::Empty if expects_body(&parts.method) => {
            head.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty => {}
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Appends `name: value` lines for every field of `headers` that `skip` does not refuse: the
/// field lines of any HTTP/1.1 head the proxy writes itself.
pub fn write_fields(head: &mut Vec<u8>, headers: &HeaderMap, skip: impl Fn(&HeaderName) -> bool) {
    for (name, value) in headers {
        if skip(name) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
}

/// Framing is ours to write: the client's own headers for it never pass as they came.
fn framing_header(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING
}

fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection (which then serves nothing else).
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may serve another request once this response is read.
    pub keep_alive: bool,
    /// Framed both by `Transfer-Encoding` and `Content-Length`: the length was dropped.
    pub framed_twice: bool,
}

/// Parses a response head from the front of `buf`: `None` until it is complete, else the head
/// and its length in bytes. An error names what was wrong, for the log (never the client).
pub fn parse_head(
    buf: &[u8],
    method: &Method,
) -> Result<Option<(ResponseHead, usize)>, &'static str> {
    parse_head_reusing(buf, method, &mut HeaderMap::new())
}

/// [`parse_head`] into `spare`'s allocation, which a complete head takes (cleared) and leaves
/// `spare` empty. The proxy passes the request's map, done with once its head is written: the
/// map then goes to the client with the response, hyper parses the client's next request into
/// it, and one map serves every exchange of a connection instead of two allocations and two
/// frees per request.
pub fn parse_head_reusing(
    buf: &[u8],
    method: &Method,
    spare: &mut HeaderMap,
) -> Result<Option<(ResponseHead, usize)>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let length = match response.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err("response head too large");
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response header fields"),
        Err(_) => return Err("malformed response head"),
    };
    if length > MAX_HEAD {
        return Err("response head too large");
    }
    let code = response.code.unwrap_or(0);
    if !(100..=599).contains(&code) {
        return Err("status outside 100-599");
    }
    let status = StatusCode::from_u16(code).map_err(|_| "status outside 100-599")?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut headers = std::mem::take(spare);
    headers.clear();
    headers.reserve(response.headers.len().max(HEADER_MAP_ROOM));
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| "invalid response header name")?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| "invalid response header value")?;
        headers.append(name, value);
    }
    let (framing, framed_twice) = framing(status, method, &mut headers)?;
    let keep_alive = version == Version::HTTP_11
        && framing != Framing::UntilClose
        && !framed_twice
        && !has_token(&headers, header::CONNECTION, "close");
    let head = ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
        framed_twice,
    };
    Ok(Some((head, length)))
}

/// The body framing (RFC 9112 section 6.3); with both `Transfer-Encoding` and `Content-Length`
/// the coding wins and the length goes.
fn framing(
    status: StatusCode,
    method: &Method,
    headers: &mut HeaderMap,
) -> Result<(Framing, bool), &'static str> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, false));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let framed_twice = headers.remove(header::CONTENT_LENGTH).is_some();
        let chunked = last_coding_is_chunked(headers);
        let framing = if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        };
        return Ok((framing, framed_twice));
    }
    match content_length(headers)? {
        Some(length) => Ok((Framing::Length(length), false)),
        None => Ok((Framing::UntilClose, false)),
    }
}

fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    let last = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back();
    last.and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// The one length every `Content-Length` value states; differing or invalid values are an error.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| "invalid content-length")?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid content-length");
            }
            let parsed: u64 = item.parse().map_err(|_| "invalid content-length")?;
            if length.is_some_and(|l| l != parsed) {
                return Err("differing content-length values");
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Whether a comma-separated header lists `token`.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn head(wire: &str) -> Result<ResponseHead, &'static str> {
        parse_head(wire.as_bytes(), &Method::GET).map(|parsed| parsed.unwrap().0)
    }

    #[test]
    fn a_small_answer_leaves_room_for_the_next_request_and_the_proxy_fields() {
        let parsed = head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n").unwrap();
        assert!(parsed.headers.capacity() >= HEADER_MAP_ROOM);
    }

    #[test]
    fn a_head_parsed_into_a_used_map_keeps_its_room_and_none_of_its_fields() {
        let mut spare = HeaderMap::with_capacity(40);
        spare.insert("x-request-only", HeaderValue::from_static("1"));
        spare.insert(header::HOST, HeaderValue::from_static("example.org"));
        let room = spare.capacity();
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let (parsed, _) = parse_head_reusing(wire, &Method::GET, &mut spare)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.headers.len(), 1);
        assert_eq!(parsed.headers[header::CONTENT_LENGTH], "2");
        assert_eq!(
            parsed.headers.capacity(),
            room,
            "the spare's allocation is kept"
        );
        assert!(spare.is_empty());
    }

    #[test]
    fn a_partial_head_leaves_the_spare_map_alone() {
        let mut spare = HeaderMap::new();
        spare.insert("x-request-only", HeaderValue::from_static("1"));
        let parsed = parse_head_reusing(b"HTTP/1.1 200 OK\r\n", &Method::GET, &mut spare);
        assert!(parsed.unwrap().is_none());
        assert_eq!(spare.len(), 1);
    }

    #[test]
    fn writes_the_head_with_its_framing() {
        let (mut parts, ()) = http::Request::post("http://h/p?q=1")
            .header("content-length", "99")
            .header("x-a", "b")
            .body(())
            .unwrap()
            .into_parts();
        let none = AddedFields::default();
        let wire = encode_head(&parts, &none, RequestFraming::Chunked);
        assert_eq!(
            wire,
            b"POST /p?q=1 HTTP/1.1\r\nx-a: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let wire = encode_head(&parts, &none, RequestFraming::Length(3));
        assert!(wire.ends_with(b"x-a: b\r\ncontent-length: 3\r\n\r\n"));
        parts.method = Method::GET;
        let wire = encode_head(&parts, &none, RequestFraming::Empty);
        assert_eq!(wire, b"GET /p?q=1 HTTP/1.1\r\nx-a: b\r\n\r\n");
    }

    #[test]
    fn added_fields_follow_the_clients_and_precede_the_framing() {
        let (parts, ()) = http::Request::post("/p")
            .header("x-a", "b")
            .body(())
            .unwrap()
            .into_parts();
        let mut added = AddedFields::default();
        assert!(added.push(&HeaderName::from_static("x-forwarded-proto"), b"https"));
        assert!(added.push_with(&header::FORWARDED, |v| v.extend_from_slice(b"for=1.2.3.4")));
        let wire = encode_head(&parts, &added, RequestFraming::Length(2));
        assert_eq!(
            wire,
            b"POST /p HTTP/1.1\r\nx-a: b\r\nx-forwarded-proto: https\r\n\
              forwarded: for=1.2.3.4\r\ncontent-length: 2\r\n\r\n"
        );
        assert_eq!(added.get("Forwarded"), Some(&b"for=1.2.3.4"[..]));
        assert_eq!(added.get("x-forwarded-for"), None);
    }

    #[test]
    fn an_added_value_that_could_split_the_head_is_left_out() {
        let mut added = AddedFields::default();
        let name = HeaderName::from_static("x-forwarded-host");
        for bad in [&b"a\r\nx-evil: 1"[..], b"a\nb", b"a\0b", b"\x7f"] {
            assert!(!added.push(&name, bad), "{bad:?}");
            assert!(!added.push_with(&name, |v| v.extend_from_slice(bad)));
        }
        assert!(added.as_bytes().is_empty(), "nothing half-written");
        assert!(added.push(&name, b"ok\tvalue \xe9"));
        assert_eq!(added.as_bytes(), b"x-forwarded-host: ok\tvalue \xe9\r\n");
    }

    #[test]
    fn a_head_parses_only_once_whole() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\nok";
        let end = wire.len() - 2;
        for at in 0..end {
            assert!(
                parse_head(&wire[..at], &Method::GET).unwrap().is_none(),
                "{at}"
            );
        }
        let (head, length) = parse_head(wire, &Method::GET).unwrap().unwrap();
        assert_eq!(length, end);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(head.framing, Framing::Length(2));
    }

    #[test]
    fn partial_heads_wait_and_big_ones_fail() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nx: y\r\n", &Method::GET)
                .unwrap()
                .is_none()
        );
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(
            parse_head(&big, &Method::GET).unwrap_err(),
            "response head too large"
        );
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(head(&many).unwrap_err(), "too many response header fields");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |wire: &str| head(wire).map(|h| (h.framing, h.keep_alive));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n"),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            Ok((Framing::Empty, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"),
            Ok((Framing::Length(0), false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Ok((Framing::Length(0), false))
        );
        let both =
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n")
                .unwrap();
        assert!(both.framed_twice && !both.keep_alive);
        assert!(!both.headers.contains_key(header::CONTENT_LENGTH));
        let head_only = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(head_only.unwrap().unwrap().0.framing, Framing::Empty);
    }

    #[test]
    fn refuses_bad_lengths_and_statuses() {
        for wire in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 600 Beyond\r\n\r\n",
            "HTTP/1.1 099 Below\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(head(wire).is_err(), "{wire}");
        }
    }
}
