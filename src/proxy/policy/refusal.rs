//! A request `[policy]` turns away, and how it is answered: a JSON-RPC error (with the call's
//! `id` when the body gave one) inside the HTTP status that says why, with the headers a client
//! needs to do better (`WWW-Authenticate`, `Retry-After`).

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::super::body::ResponseBody;
use super::super::request_id::{RequestId, X_REQUEST_ID};

/// JSON-RPC error codes of refusals. `-32600` is JSON-RPC's own "Invalid Request"; `-32020` is
/// the MCP 2026-07-28 schema's `HeaderMismatchError`; the others are in the range JSON-RPC leaves
/// to servers.
pub const INVALID_REQUEST: i64 = -32600;
pub const HEADER_MISMATCH: i64 = -32020;
pub const UNAUTHORIZED: i64 = -32010;
pub const FORBIDDEN: i64 = -32011;
pub const RATE_LIMITED: i64 = -32012;

#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// The `reason` label of `switchyard_policy_denials_total`.
    pub reason: &'static str,
    pub code: i64,
    pub message: String,
    /// The refused call's `id` as written, when known.
    pub id: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, code: i64, message: String) -> Refusal {
        Refusal {
            status,
            reason,
            code,
            message,
            id: None,
            headers: Vec::new(),
        }
    }

    pub fn with_id(mut self, id: Option<&str>) -> Refusal {
        self.id = id.map(str::to_owned);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: String) -> Refusal {
        if let Ok(value) = HeaderValue::try_from(value) {
            self.headers.push((name, value));
        }
        self
    }

    /// A `400` for a body the proxy cannot vouch for.
    pub fn invalid(reason: &'static str, message: &str, id: Option<&str>) -> Refusal {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            reason,
            INVALID_REQUEST,
            message.to_string(),
        )
        .with_id(id)
    }

    /// A `400` for `Mcp-Method`/`Mcp-Name` headers that contradict the body, in the shape the
    /// specification gives it (see `read.rs`).
    pub fn header_mismatch(message: &str, id: Option<&str>) -> Refusal {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "mismatch",
            HEADER_MISMATCH,
            message.to_string(),
        )
        .with_id(id)
    }

    /// The answer, carrying the request's id in `X-Request-Id` and the error's `data` as every
    /// answer of the proxy's own does.
    pub fn into_response(self, request_id: &RequestId) -> Response<ResponseBody> {
        let id = self
            .id
            .as_deref()
            .and_then(|id| serde_json::from_str::<serde_json::Value>(id).ok());
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": self.code,
                "message": self.message,
                "data": {"request_id": request_id.as_str()},
            },
        });
        let mut response = Response::new(ResponseBody::full(body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(&X_REQUEST_ID, request_id.header_value());
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        // A body refused before it was read to the end: the connection is not worth keeping.
        if matches!(self.status.as_u16(), 400 | 408) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
