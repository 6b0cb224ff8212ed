//! Request classification: what kind of MCP traffic is this?

use http::{HeaderMap, Method, header};

/// The routing class of a request: streams are placed by client address, messages by load.
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

/// Does any comma-separated element of header `name` equal `token` (ignoring case), parameters
/// aside, so that `text/event-stream;q=1` counts and `websocketx` does not?
pub fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',').any(|part| {
                let part = part.trim().as_bytes();
                part.len() >= token.len()
                    && part[..token.len()].eq_ignore_ascii_case(token.as_bytes())
                    && matches!(part.get(token.len()), None | Some(b';' | b' ' | b'\t'))
            })
        })
    })
}

#[cfg(test)]
mod tests {
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
}
