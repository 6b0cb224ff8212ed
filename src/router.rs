//! Request classification: what kind of MCP traffic is this, and does it name a session?

use http::{HeaderMap, Method, header};

/// The routing class of a request (DESIGN.md, routing rule 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// `GET` with `Upgrade: websocket`.
    WebSocket,
    /// `GET` accepting `text/event-stream`: a legacy `/sse` stream or a Streamable HTTP GET stream.
    SseStream,
    /// `POST` or `DELETE`: JSON-RPC messages, session teardown.
    Message,
    /// Anything else (health checks, static files, `OPTIONS`).
    Other,
}

impl RouteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::WebSocket => "websocket",
            RouteClass::SseStream => "sse",
            RouteClass::Message => "message",
            RouteClass::Other => "other",
        }
    }

    /// Placed by client-address hash (streams) rather than least-connections (messages).
    pub fn uses_client_hash(self) -> bool {
        matches!(self, RouteClass::WebSocket | RouteClass::SseStream)
    }
}

pub fn classify(method: &Method, headers: &HeaderMap) -> RouteClass {
    match *method {
        Method::GET if is_websocket_upgrade(headers) => RouteClass::WebSocket,
        Method::GET if header_has_token(headers, header::ACCEPT, "text/event-stream") => {
            RouteClass::SseStream
        }
        Method::POST | Method::DELETE => RouteClass::Message,
        _ => RouteClass::Other,
    }
}

pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::UPGRADE, "websocket")
        && header_has_token(headers, header::CONNECTION, "upgrade")
}

/// Does any comma-separated element of header `name` start with `token` (ignoring case)?
/// Prefix match so that `text/event-stream;q=1` counts.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',').any(|part| {
                let part = part.trim_start().as_bytes();
                part.len() >= token.len()
                    && part[..token.len()].eq_ignore_ascii_case(token.as_bytes())
            })
        })
    })
}

pub const SESSION_HEADER: &str = "mcp-session-id";

/// The session a request names: the Streamable HTTP header, else the legacy transport's query
/// parameter (`sessionId` in the TypeScript SDK, `session_id` in the Python SDK).
pub fn session_id<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(value) = headers.get(SESSION_HEADER) {
        return value.to_str().ok().filter(|v| !v.is_empty());
    }
    query.and_then(legacy_session_id)
}

/// `sessionId` or `session_id` from a query string, as written (ids are not percent-decoded:
/// the same raw form is learned from the `endpoint` event and looked up here).
pub fn legacy_session_id(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (matches!(key, "sessionId" | "session_id") && !value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn classifies_each_kind() {
        let ws = headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ]);
        assert_eq!(classify(&Method::GET, &ws), RouteClass::WebSocket);
        let sse = headers(&[("accept", "application/json, text/event-stream")]);
        assert_eq!(classify(&Method::GET, &sse), RouteClass::SseStream);
        // A POST that accepts SSE is still a message: its response may stream, but it is placed
        // by least-connections.
        assert_eq!(classify(&Method::POST, &sse), RouteClass::Message);
        assert_eq!(
            classify(&Method::DELETE, &HeaderMap::new()),
            RouteClass::Message
        );
        assert_eq!(classify(&Method::GET, &HeaderMap::new()), RouteClass::Other);
        let upgrade_without_connection = headers(&[("upgrade", "websocket")]);
        assert_eq!(
            classify(&Method::GET, &upgrade_without_connection),
            RouteClass::Other
        );
    }

    #[test]
    fn finds_sessions_in_header_then_query() {
        let h = headers(&[("mcp-session-id", "s-1")]);
        assert_eq!(session_id(&h, Some("sessionId=q")), Some("s-1"));
        let none = HeaderMap::new();
        assert_eq!(session_id(&none, Some("a=1&sessionId=abc")), Some("abc"));
        assert_eq!(session_id(&none, Some("session_id=py")), Some("py"));
        assert_eq!(session_id(&none, Some("sessionIdx=1&session_id=")), None);
        assert_eq!(session_id(&none, None), None);
        assert_eq!(session_id(&headers(&[("mcp-session-id", "")]), None), None);
    }
}
