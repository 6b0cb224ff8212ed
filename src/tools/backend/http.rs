//! Routing of the reference backend: MCP transports, operational endpoints, bench routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::BackendArgs;
use super::legacy_sse::{self, LegacySessions};
use super::mcp::ReferenceServer;
use super::stats::{Held, Stats};

pub type HttpResponse = Response<BoxBody<Bytes, Infallible>>;

/// POST bodies beyond this are refused (the SDK's own default limit).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Everything a request may need; one per backend.
pub struct App {
    stats: Arc<Stats>,
    mcp: StreamableHttpService<ReferenceServer, LocalSessionManager>,
    legacy: Arc<LegacySessions>,
    origins: OriginPolicy,
    sessions_end: CancellationToken,
    /// `--metrics` and `--bench-routes`: off, those paths are `404` like any unknown one.
    metrics: bool,
    bench_routes: bool,
}

impl App {
    pub fn new(
        args: &BackendArgs,
        address: SocketAddr,
        stats: Arc<Stats>,
        sessions_end: CancellationToken,
    ) -> App {
        let mut config = StreamableHttpServerConfig::default()
            .with_cancellation_token(sessions_end.child_token())
            .with_legacy_session_mode(!args.stateless)
            .with_json_response(args.stateless);
        // Origins are checked in `handle` for every transport alike.
        config = config.disable_allowed_origins();
        config = if args.allowed_hosts.iter().any(|h| h == "*") {
            config.disable_allowed_hosts()
        } else if !args.allowed_hosts.is_empty() {
            config.with_allowed_hosts(args.allowed_hosts.clone())
        } else if address.ip().is_loopback() {
            // The SDK's default: localhost names only (DNS-rebinding protection).
            config
        } else {
            // Reached over a network, the backend cannot know its public names.
            config.disable_allowed_hosts()
        };
        let factory_stats = Arc::clone(&stats);
        let mcp = StreamableHttpService::new(
            move || Ok(ReferenceServer::new(Arc::clone(&factory_stats))),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        App {
            stats,
            mcp,
            legacy: Arc::new(LegacySessions::default()),
            origins: OriginPolicy {
                extra: args.allowed_origins.clone(),
            },
            sessions_end,
            metrics: args.metrics,
            bench_routes: args.bench_routes,
        }
    }

    pub async fn handle(&self, request: Request<Incoming>) -> HttpResponse {
        let path = request.uri().path();
        match (request.method(), path) {
            (_, "/healthz") => with_body(StatusCode::OK, full("ok\n")),
            (_, "/readyz") if self.stats.is_draining() => {
                with_body(StatusCode::SERVICE_UNAVAILABLE, full("draining\n"))
            }
            (_, "/readyz") => with_body(StatusCode::OK, full("ready\n")),
            (_, "/metrics") if self.metrics => {
                let mut response = with_body(StatusCode::OK, full(self.stats.render()));
                // prometheus-client writes OpenMetrics text (`# EOF`, `_total` on counter
                // samples only), so that is the type to declare, as the proxy's /metrics does.
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            (_, bench) if self.bench_routes && bench.starts_with("/bench/") => {
                super::bench::handle(request).await
            }
            (_, "/mcp" | "/sse" | "/messages" | "/ws") => self.mcp_endpoint(request).await,
            _ => with_body(StatusCode::NOT_FOUND, full("not found\n")),
        }
    }

    async fn mcp_endpoint(&self, request: Request<Incoming>) -> HttpResponse {
        if let Some(origin) = request.headers().get(header::ORIGIN)
            && !self.origins.allows(origin)
        {
            return jsonrpc_error(StatusCode::FORBIDDEN, -32000, "Origin not allowed");
        }
        if self.stats.is_draining() && starts_session(&request) {
            let mut response = jsonrpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                -32000,
                "backend is draining: no new sessions",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        self.stats.count_request();
        match (request.method(), request.uri().path()) {
            (&Method::POST, "/mcp") => match validated_message(request).await {
                Ok(request) => count_stream(self.mcp.handle(request).await, &self.stats),
                Err(refusal) => refusal,
            },
            (&Method::DELETE, "/mcp") => session_ended(self.mcp.handle(request).await),
            (_, "/mcp") => count_stream(self.mcp.handle(request).await, &self.stats),
            (&Method::GET, "/sse") => {
                legacy_sse::open(&self.legacy, &self.stats, &self.sessions_end)
            }
            (&Method::POST, "/messages") => legacy_sse::post(&self.legacy, request).await,
            (&Method::GET, "/ws") => super::ws::upgrade(request, &self.stats, &self.sessions_end),
            _ => method_not_allowed(),
        }
    }
}

/// Reads a POST body and refuses what is not a JSON-RPC message with `400` (the SDK would
/// answer `415`), so the SDK only ever sees well-formed messages.
async fn validated_message(
    request: Request<Incoming>,
) -> Result<Request<Full<Bytes>>, HttpResponse> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_MESSAGE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                "body too large or broken",
            ));
        }
    };
    let json_content = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json_content {
        if let Err(error) = serde_json::from_slice::<serde_json::Value>(&body) {
            let message = format!("parse error: {error}");
            return Err(jsonrpc_error(StatusCode::BAD_REQUEST, -32700, &message));
        }
        if let Err(error) = serde_json::from_slice::<ClientJsonRpcMessage>(&body) {
            let message = format!("not a JSON-RPC request or notification: {error}");
            return Err(jsonrpc_error(StatusCode::BAD_REQUEST, -32600, &message));
        }
    }
    Ok(Request::from_parts(parts, Full::new(body)))
}

/// The SDK answers a session `DELETE` with `202 Accepted`. The Python SDK (2.3.0) takes only 200
/// or 204 as success and logs `Session termination failed: 202` on every close; the TypeScript
/// SDK (1.32) takes any 2xx, and 405. `204 No Content` satisfies both and says what happened: the
/// session is gone and there is nothing to send back. Other answers (404, 400, 405) pass as they
/// are.
fn session_ended(response: HttpResponse) -> HttpResponse {
    if response.status() != StatusCode::ACCEPTED {
        return response;
    }
    with_body(StatusCode::NO_CONTENT, http_body_util::Empty::new().boxed())
}

/// Requests that would open a new session (refused while draining).
fn starts_session<B>(request: &Request<B>) -> bool {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/mcp") => !request.headers().contains_key("mcp-session-id"),
        (&Method::GET, "/sse" | "/ws") => true,
        _ => false,
    }
}

/// Browser origins allowed to talk to the backend: localhost ones, plus configured extras.
struct OriginPolicy {
    extra: Vec<String>,
}

impl OriginPolicy {
    fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim_end_matches('/');
        is_localhost_origin(origin)
            || self
                .extra
                .iter()
                .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

fn is_localhost_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(bracketed) = rest.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    let port_ok = match rest
        .rsplit_once(']')
        .map_or(rest.split_once(':'), |(_, p)| {
            p.strip_prefix(':').map(|port| ("", port))
        }) {
        Some((_, port)) => !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
        None => true,
    };
    port_ok
        && matches!(
            host.to_ascii_lowercase().as_str(),
            "localhost" | "127.0.0.1" | "::1"
        )
}

fn method_not_allowed() -> HttpResponse {
    jsonrpc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        -32600,
        "method not allowed here",
    )
}

/// Counts an SSE response as an open stream until its body ends or is dropped.
fn count_stream(response: HttpResponse, stats: &Stats) -> HttpResponse {
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        return response;
    }
    let held = stats.stream();
    response.map(|inner| CountedBody { inner, _held: held }.boxed())
}

struct CountedBody {
    inner: BoxBody<Bytes, Infallible>,
    _held: Held,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn full(text: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(text.into()).boxed()
}

pub fn with_body(status: StatusCode, body: BoxBody<Bytes, Infallible>) -> HttpResponse {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

/// A JSON-RPC error object as the HTTP body, so MCP clients can show why.
pub fn jsonrpc_error(status: StatusCode, code: i64, message: &str) -> HttpResponse {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    });
    let mut response = with_body(status, full(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_origins_pass_and_others_do_not() {
        for good in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8443",
            "http://[::1]:8080",
        ] {
            assert!(is_localhost_origin(good), "{good}");
        }
        for bad in [
            "http://evil.example.com",
            "http://localhost.evil.com",
            "http://127.0.0.1.nip.io",
            "null",
            "file://localhost",
            "http://localhost:abc",
        ] {
            assert!(!is_localhost_origin(bad), "{bad}");
        }
    }

    #[test]
    fn configured_origins_pass() {
        let policy = OriginPolicy {
            extra: vec!["https://app.example.com".to_string()],
        };
        assert!(policy.allows(&HeaderValue::from_static("https://app.example.com")));
        assert!(!policy.allows(&HeaderValue::from_static("https://app.example.org")));
        assert!(policy.allows(&HeaderValue::from_static("http://localhost:1234")));
    }
}
