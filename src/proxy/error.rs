//! The one place where proxy failures become HTTP answers: small JSON bodies, fitting statuses.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no healthy backend is available")]
    NoBackend,
    /// No route takes the request's host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The session names no known owner, or its owner is gone for good.
    #[error("session not found")]
    SessionNotFound,
    #[error(transparent)]
    Upstream(crate::upstream::backend::UpstreamError),
    #[error("request body too large (limit {limit} bytes)")]
    BodyTooLarge { limit: u64 },
    #[error("request body timed out: no data for {timeout:?}")]
    BodyTimeout { timeout: std::time::Duration },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the proxy is shutting down")]
    ShuttingDown,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use crate::upstream::backend::UpstreamError as U;
        match self {
            ProxyError::NoBackend | ProxyError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::SessionNotFound | ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Upstream(U::ResponseTimeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let body = match self {
            // MCP clients re-initialise on 404 with a JSON-RPC error (spec: session management).
            ProxyError::SessionNotFound => {
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#
                    .to_string()
            }
            other => {
                let message = serde_json::to_string(&other.to_string()).unwrap_or_default();
                format!(r#"{{"error":{{"status":{},"message":{message}}}}}"#, status.as_u16())
            }
        };
        let mut response = Response::new(ResponseBody::full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
