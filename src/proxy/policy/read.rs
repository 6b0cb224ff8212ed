//! Finding a message's calls: from the `Mcp-Method`/`Mcp-Name` headers, from the head of its
//! body read before forwarding (only when a limit or an allow-list must decide on them), or from
//! the body as it streams past (for metrics and the log only, never delaying it).
//!
//! Header and body disagreeing: the MCP 2026-07-28 schema's `HeaderMismatchError` is "returned
//! when a server rejects a request because the values in the HTTP headers do not match the
//! corresponding values in the request body … For HTTP, the response status code MUST be 400 Bad
//! Request", with the reserved code `-32020` (`HEADER_MISMATCH`; SEP-2243 introduced the headers).
//! Switchyard answers so whenever it reads the body before forwarding; when it only watches the
//! body stream past, the request is already on its way and the backend, which must make the same
//! check, is left to judge it.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::PolicyConfig;
use crate::mcp::identity::{self, Call, Progress, Scanner};

use super::refusal::Refusal;

/// What is known of a message's calls before it is forwarded.
pub(super) enum Calls {
    /// Not a message (a stream, a DELETE): no calls.
    None,
    /// Known now: from the headers, or from the body's head (then `head` holds what was read).
    Known {
        calls: Vec<Call>,
        head: Vec<Frame<Bytes>>,
        /// The body went past `scan_limit` before the calls ended: some may be unread.
        truncated: bool,
    },
    /// Learned as the body streams to the backend.
    Streaming,
}

pub(super) async fn read(
    policy: &PolicyConfig,
    request: &mut Request<Incoming>,
    idle: Option<Duration>,
) -> Result<Calls, Refusal> {
    if request.method() != http::Method::POST {
        return Ok(Calls::None);
    }
    let header = identity::from_headers(request.headers());
    if !policy.decides_on_calls() {
        return Ok(match header {
            Some(call) => Calls::Known {
                calls: vec![call],
                head: Vec::new(),
                truncated: false,
            },
            None => Calls::Streaming,
        });
    }
    let (scanner, head) = read_head(request.body_mut(), policy.scan_limit, idle).await?;
    let mut calls = super::observe::calls_of(&scanner);
    let truncated = scanner.progress() == Progress::Truncated;
    if let Some(header) = header {
        if identity::disagree(&header, scanner.calls()) {
            let id = scanner.calls().first().and_then(|c| c.id.as_deref());
            return Err(Refusal::header_mismatch(
                "Mcp-Method or Mcp-Name does not match the request body",
                id,
            ));
        }
        if scanner.progress() != Progress::Complete {
            // What the body could not tell, the headers do.
            calls = vec![header];
        }
    }
    if let Some(call) = scanner.calls().iter().find(|c| c.ambiguous) {
        return Err(Refusal::invalid(
            "ambiguous",
            "the request names its method, tool or resource twice",
            call.id.as_deref(),
        ));
    }
    Ok(Calls::Known {
        calls,
        head,
        truncated,
    })
}

/// Reads frames until the scanner knows the calls, the scan limit is passed, or the body ends.
async fn read_head(
    body: &mut Incoming,
    limit: usize,
    idle: Option<Duration>,
) -> Result<(Scanner, Vec<Frame<Bytes>>), Refusal> {
    let mut scanner = Scanner::new(limit);
    let mut head = Vec::new();
    while !scanner.is_done() {
        let next = match idle {
            Some(idle) => tokio::time::timeout(idle, body.frame())
                .await
                .map_err(|_| {
                    body_failed(http::StatusCode::REQUEST_TIMEOUT, "request body timed out")
                })?,
            None => body.frame().await,
        };
        match next {
            None => scanner.finish(),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    scanner.feed(data);
                }
                head.push(frame);
            }
            Some(Err(_)) => {
                return Err(body_failed(
                    http::StatusCode::BAD_REQUEST,
                    "the request body broke off",
                ));
            }
        }
    }
    Ok((scanner, head))
}

fn body_failed(status: http::StatusCode, message: &str) -> Refusal {
    Refusal::new(
        status,
        "body",
        super::refusal::INVALID_REQUEST,
        message.to_string(),
    )
}
