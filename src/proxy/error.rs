//! The one place where proxy failures become HTTP answers: small JSON bodies, fitting statuses.
//!
//! A body tells the client what happened in general terms and the request id; what exactly went
//! wrong (a backend's address, an OS error) is for the log only, where the same id finds it.

use http::{HeaderValue, Response, StatusCode, header};

use crate::upstream::backend::{ClientFault, UpstreamError};

use super::body::ResponseBody;
use super::request_id::{RequestId, X_REQUEST_ID};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no healthy backend is available")]
    NoBackend,
    /// No route takes the request's host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The session names no known owner, or its owner is gone for good or out for now.
    #[error("session not found")]
    SessionNotFound,
    /// No room for another session: refused before a backend mints one the proxy could not route.
    #[error("too many sessions; try again later")]
    SessionTableFull,
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error("request body too large (limit {limit} bytes)")]
    BodyTooLarge { limit: u64 },
    #[error("the request body could not be read")]
    BodyBroken,
    #[error("the request body did not arrive in time")]
    BodyStalled,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("method not allowed: this is a reverse proxy, not a tunnel")]
    MethodNotAllowed,
    #[error("too many header fields (limit {limit})")]
    TooManyHeaders { limit: usize },
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// Turned away by `[policy]`: unauthenticated, forbidden, over a limit, or unverifiable.
    #[error("{0}")]
    Refused(Box<super::policy::Refusal>),
}

impl From<UpstreamError> for ProxyError {
    /// A failure the client caused is the client's `4xx`, not a gateway error.
    fn from(error: UpstreamError) -> ProxyError {
        match error.client_fault() {
            Some(ClientFault::BodyTooLarge { limit }) => ProxyError::BodyTooLarge { limit },
            Some(ClientFault::BodyBroken) => ProxyError::BodyBroken,
            Some(ClientFault::BodyStalled) => ProxyError::BodyStalled,
            None => ProxyError::Upstream(error),
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend | ProxyError::ShuttingDown | ProxyError::SessionTableFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::SessionNotFound | ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Upstream(UpstreamError::ResponseTimeout { .. }) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyBroken | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Refused(refusal) => refusal.status,
        }
    }

    /// The `reason` label of `switchyard_client_errors_total` when the client is to blame.
    pub fn client_reason(&self) -> Option<&'static str> {
        Some(match self {
            ProxyError::BodyTooLarge { limit } => {
                ClientFault::BodyTooLarge { limit: *limit }.as_str()
            }
            ProxyError::BodyBroken => ClientFault::BodyBroken.as_str(),
            ProxyError::BodyStalled => ClientFault::BodyStalled.as_str(),
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::TooManyHeaders { .. } => "too_many_headers",
            _ => return None,
        })
    }

    /// What the client is told: never an address or an OS error.
    fn public_message(&self) -> String {
        match self {
            ProxyError::Upstream(UpstreamError::ResponseTimeout { .. }) => {
                "the backend did not answer in time".to_string()
            }
            ProxyError::Upstream(_) => "the backend could not be reached or failed".to_string(),
            other => other.to_string(),
        }
    }

    pub fn into_response(self, request_id: &RequestId) -> Response<ResponseBody> {
        let status = self.status();
        let body = match self {
            ProxyError::Refused(refusal) => return refusal.into_response(request_id),
            // The spec tells clients to start a new session on this 404 (session management); the
            // Python and TypeScript SDKs leave that to the application (README: health).
            ProxyError::SessionNotFound => serde_json::json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {
                    "code": -32001,
                    "message": "Session not found",
                    "data": { "request_id": request_id.as_str() },
                },
            }),
            ref other => serde_json::json!({
                "error": {
                    "status": status.as_u16(),
                    "message": other.public_message(),
                    "request_id": request_id.as_str(),
                },
            }),
        };
        let mut response = Response::new(ResponseBody::full(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(&X_REQUEST_ID, request_id.header_value());
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        // A request refused for its framing or its body: its connection is not worth keeping
        // (hyper drops it on HTTP/2, where the header is not allowed and the stream ends alone).
        if matches!(status.as_u16(), 400 | 405 | 408 | 413 | 431) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
