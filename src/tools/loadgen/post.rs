//! POST load: closed or open loop over keep-alive connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::*;

pub(super) fn json_body(size: usize) -> Bytes {
    let head = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":""#;
    let tail = r#""}}}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(fill)))
}

/// The POST every mode sends: `body` as JSON, to the target's path.
pub(super) fn json_post(target: &Target, body: Bytes) -> http::Result<Request<Full<Bytes>>> {
    Request::post(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(Full::new(body))
}

pub(super) async fn post(args: PostArgs) -> Result<Value, LoadgenError> {
    let target = Arc::new(target(&args.url, "http")?);
    preflight(&target.authority).await?;
    let body = json_body(args.body_bytes);
    run_connections(
        "post",
        &args.common,
        args.connections,
        args.rate,
        |stats, window, schedule| {
            tokio::spawn(post_connection(
                stats,
                Arc::clone(&target),
                body.clone(),
                window,
                schedule,
            ))
        },
    )
    .await
}

async fn post_connection(
    mut stats: ConnStats,
    target: Arc<Target>,
    body: Bytes,
    window: Arc<Window>,
    mut schedule: Schedule,
) -> ConnStats {
    // Reconnects after a failure, so one reset connection does not end the run.
    'connection: while Instant::now() < window.end {
        let sender = match connect(&target.authority).await {
            Ok(stream) => hyper::client::conn::http1::handshake(TokioIo::new(stream)).await,
            Err(error) => {
                stats.fail(error);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut sender = match sender {
            Ok((sender, connection)) => {
                tokio::spawn(connection);
                sender
            }
            Err(error) => {
                stats.fail(error);
                continue;
            }
        };
        while Instant::now() < window.end {
            let sent_at = schedule.wait().await;
            // A server may close a keep-alive connection after N requests (nginx's
            // `keepalive_requests`): not a failed request, just open another connection.
            if sender.ready().await.is_err() {
                continue 'connection;
            }
            let Ok(request) = json_post(&target, body.clone()) else {
                stats.fail("cannot build request");
                return stats;
            };
            let outcome = match sender.send_request(request).await {
                Ok(response) => {
                    let success = response.status().is_success();
                    response.into_body().collect().await.is_ok() && success
                }
                Err(error) => {
                    stats.fail(error);
                    continue 'connection;
                }
            };
            stats.record(&window, sent_at, Instant::now(), outcome);
        }
    }
    stats
}
