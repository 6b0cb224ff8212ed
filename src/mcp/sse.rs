//! Reading an SSE stream as it passes, without holding any byte back.
//!
//! Two facts are needed: whether the bytes so far end at an event boundary (a keepalive comment or
//! a closing `retry:` may only go there), and, at the start of a legacy `/sse` stream, the
//! `endpoint` event that carries the session id. (With sealed session ids, `body.rs` holds back
//! the head of a legacy stream, at most the scan limit, until that event can be rewritten.)

/// Comment injected into silent streams so idle timers along the path do not fire.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";
/// Sent before closing a stream on drain: asks the client to reconnect soon (to the new fleet).
pub const DRAIN_RETRY: &[u8] = b": switchyard: stream closed for drain, reconnect\nretry: 1000\n\n";

/// How many bytes at the head of a stream are searched for the `endpoint` event.
const ENDPOINT_SCAN_LIMIT: usize = 8 * 1024;

/// Tracks whether the stream is between events; O(1) per chunk.
#[derive(Debug, Clone, Default)]
pub struct BoundaryTracker {
    tail: [u8; 3],
    seen: usize,
}

impl BoundaryTracker {
    pub fn observe(&mut self, chunk: &[u8]) {
        if chunk.len() >= 3 {
            self.tail.copy_from_slice(&chunk[chunk.len() - 3..]);
        } else {
            for &byte in chunk {
                self.tail = [self.tail[1], self.tail[2], byte];
            }
        }
        self.seen = self.seen.saturating_add(chunk.len());
    }

    /// True before the first byte and after a blank line (`\n\n` or `\r\n\r\n`).
    pub fn at_boundary(&self) -> bool {
        self.seen == 0 || self.tail[1..] == *b"\n\n" || self.tail == *b"\n\r\n"
    }
}

/// Looks for the legacy transport's `event: endpoint` in the first bytes of a stream.
#[derive(Debug, Default)]
pub struct EndpointScanner {
    /// Bytes after the last complete event block: the blocks before it were parsed already.
    head: Vec<u8>,
    /// Bytes taken so far, against [`ENDPOINT_SCAN_LIMIT`].
    scanned: usize,
    done: bool,
}

impl EndpointScanner {
    /// Feeds a chunk; returns the endpoint URL once its event is complete. Gives up after
    /// [`ENDPOINT_SCAN_LIMIT`] bytes or once a first complete event was something else.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<String> {
        if self.done {
            return None;
        }
        let taken = &chunk[..chunk.len().min(ENDPOINT_SCAN_LIMIT - self.scanned)];
        // A blank line may straddle the previous chunk: look two bytes back.
        let search_from = self.head.len().saturating_sub(2);
        self.head.extend_from_slice(taken);
        self.scanned += taken.len();
        // Only a new blank line completes a block, so each byte is parsed once, however small
        // the chunks come.
        if let Some(end) = last_blank_line_end(&self.head[search_from..]).map(|e| e + search_from) {
            let text = String::from_utf8_lossy(&self.head[..end]);
            let normalized = text.replace("\r\n", "\n");
            for event in normalized.split("\n\n") {
                match parse_event(event) {
                    Some(("endpoint", data)) => {
                        self.done = true;
                        return Some(data);
                    }
                    // Comments and retry-only blocks may come first; any real event ends the
                    // search.
                    Some(_) => {
                        self.finish();
                        return None;
                    }
                    None => {}
                }
            }
            self.head.drain(..end);
        }
        if self.scanned >= ENDPOINT_SCAN_LIMIT {
            self.finish();
        }
        None
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    fn finish(&mut self) {
        self.done = true;
        self.head = Vec::new();
    }
}

/// `haystack` with the first occurrence of `from` replaced by `to`; `None` if absent. Used to
/// rewrite the endpoint URL inside the held head of a stream (a one-line `data:` value appears
/// verbatim in the bytes).
pub fn replace_first(haystack: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    if from.is_empty() {
        return None;
    }
    let at = haystack.windows(from.len()).position(|w| w == from)?;
    let mut out = Vec::with_capacity(haystack.len() - from.len() + to.len());
    out.extend_from_slice(&haystack[..at]);
    out.extend_from_slice(to);
    out.extend_from_slice(&haystack[at + from.len()..]);
    Some(out)
}

/// A legacy `endpoint` URL with `prefix` (a route's stripped path prefix, no trailing `/`) put
/// back in front of its path, so the client's POSTs come back through the same route.
///
/// A path (`/messages?sessionId=…`) gets the prefix. An absolute URL (`http://host/messages…`,
/// or `//host/messages…`) becomes that prefixed path: the backend built it from a host the
/// client may not reach (the backend's own name, under `host = "backend"`), and a path resolves
/// against the URL of the client's own stream, which is where the POSTs must go. A relative URL
/// (`messages?…`) already resolves under the prefix and is left alone.
pub fn prefixed_endpoint(url: &str, prefix: &str) -> String {
    let after_authority = |rest: &str| -> String {
        let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let path = &rest[cut..];
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("{prefix}{slash}{path}")
    };
    if let Some(rest) = url.strip_prefix("//") {
        return after_authority(rest);
    }
    if let Some((scheme, rest)) = url.split_once("://")
        && !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return after_authority(rest);
    }
    if url.starts_with('/') {
        return format!("{prefix}{url}");
    }
    url.to_string()
}

/// The index just past the last blank line (`\n\n`, or `\n\r\n` with CRLF line ends).
fn last_blank_line_end(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len())
        .rev()
        .find(|&i| {
            bytes[i] == b'\n'
                && (bytes[i - 1] == b'\n'
                    || (i >= 2 && bytes[i - 1] == b'\r' && bytes[i - 2] == b'\n'))
        })
        .map(|i| i + 1)
}

/// `(event name, data)` of one event block, or `None` for a block with no data.
fn parse_event(block: &str) -> Option<(&str, String)> {
    let mut name = "message";
    let mut data: Option<String> = None;
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value,
            "data" => {
                let data = data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    data.map(|d| (name, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_across_chunk_splits() {
        let mut t = BoundaryTracker::default();
        assert!(t.at_boundary());
        t.observe(b"data: 1\n");
        assert!(!t.at_boundary());
        t.observe(b"\n");
        assert!(t.at_boundary());
        t.observe(b"data: 2\r\n\r");
        assert!(!t.at_boundary());
        t.observe(b"\n");
        assert!(t.at_boundary());
        t.observe(b"event: x\ndata: 3\n\n");
        assert!(t.at_boundary());
        t.observe(b"da");
        assert!(!t.at_boundary());
    }

    #[test]
    fn finds_endpoint_split_over_chunks() {
        let mut s = EndpointScanner::default();
        assert_eq!(s.feed(b": hello\n\nevent: endp"), None);
        assert_eq!(s.feed(b"oint\r\ndata: /messages?sessionId=abc"), None);
        assert_eq!(
            s.feed(b"\r\n\r\n").as_deref(),
            Some("/messages?sessionId=abc")
        );
        assert!(s.is_done());
        assert_eq!(s.feed(b"event: endpoint\ndata: /x\n\n"), None);
    }

    #[test]
    fn endpoint_urls_get_the_prefix_back() {
        let cases = [
            ("/messages?sessionId=a", "/github/messages?sessionId=a"),
            (
                "http://10.0.0.1:3001/messages?sessionId=a",
                "/github/messages?sessionId=a",
            ),
            ("https://h/m/?session_id=a", "/github/m/?session_id=a"),
            ("//h:1/messages", "/github/messages"),
            ("http://h?sessionId=a", "/github/?sessionId=a"),
            ("messages?sessionId=a", "messages?sessionId=a"),
        ];
        for (url, expected) in cases {
            assert_eq!(prefixed_endpoint(url, "/github"), expected, "{url}");
        }
    }

    #[test]
    fn replaces_only_the_first_occurrence() {
        assert_eq!(
            replace_first(b"a /m?s=1 /m?s=1", b"/m?s=1", b"/m?s=TOKEN").unwrap(),
            b"a /m?s=TOKEN /m?s=1"
        );
        assert_eq!(replace_first(b"abc", b"x", b"y"), None);
    }

    #[test]
    fn gives_up_on_other_events_and_long_heads() {
        let mut s = EndpointScanner::default();
        assert_eq!(
            s.feed(b"event: message\ndata: {}\n\nevent: endpoint\ndata: /m\n\n"),
            None
        );
        assert!(s.is_done());
        let mut s = EndpointScanner::default();
        assert_eq!(s.feed(&vec![b':'; ENDPOINT_SCAN_LIMIT + 10]), None);
        assert!(s.is_done());
    }

    #[test]
    fn endpoint_after_many_comment_blocks_in_tiny_chunks() {
        let mut stream = b": a\n\n:b\r\n\r\n".repeat(20);
        stream.extend_from_slice(b"event: endpoint\r\ndata: /messages/?session_id=s1\n\r\n");
        let mut s = EndpointScanner::default();
        let found = stream.chunks(1).find_map(|byte| s.feed(byte));
        assert_eq!(found.as_deref(), Some("/messages/?session_id=s1"));
        // Comment blocks count toward the limit even though they are dropped once parsed.
        let mut s = EndpointScanner::default();
        for _ in 0..ENDPOINT_SCAN_LIMIT / 3 + 1 {
            assert_eq!(s.feed(b":\n\n"), None);
        }
        assert!(s.is_done());
    }
}
