//! Idle keep-alive connections: what a proxy holds for a client that made a request and keeps
//! its connection open for the next one (an MCP client's connection pool between calls).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::post::{json_body, json_post};
use super::*;

/// Connections being opened at once.
const OPENING_AT_ONCE: usize = 256;

pub(super) async fn idle(args: IdleArgs) -> Result<Value, LoadgenError> {
    let target = Arc::new(target(&args.url, "http")?);
    preflight(&target.authority).await?;
    let body = json_body(args.body_bytes);
    // One request first, so what the proxy pays once (code paged in, pools set up) is not
    // counted against the idle connections.
    let _ = open_and_post(&target, body.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sample(&args.common.watch_pid);
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut opened = JoinSet::new();
    for _ in 0..args.connections {
        let (target, body, opening) = (Arc::clone(&target), body.clone(), Arc::clone(&opening));
        opened.spawn(async move {
            let _permit = opening.acquire().await;
            open_and_post(&target, body).await
        });
    }
    // The senders keep their connections open; dropped at the end of the run.
    let mut idle = Vec::with_capacity(args.connections);
    let (mut failed, mut first_error) = (0usize, None::<String>);
    while let Some(opened) = opened.join_next().await {
        match opened.map_err(|e| e.to_string()).and_then(|sender| sender) {
            Ok(sender) => idle.push(sender),
            Err(error) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    // Settle: a proxy may free per-request state a moment after the answer.
    tokio::time::sleep(Duration::from_secs_f64(args.common.warmup.max(0.0))).await;
    let during = sample(&args.common.watch_pid);
    let open = idle.len();
    if open == 0 {
        return Err(LoadgenError::AllFailed(first_error.unwrap_or_default()));
    }
    let grown = during.rss_kib.saturating_sub(before.rss_kib);
    let mut line = json!({
        "mode": "idle",
        "label": args.common.label,
        "connections_wanted": args.connections,
        "connections_open": open,
        "connections_failed": failed,
        "first_error": first_error,
    });
    if !args.common.watch_pid.is_empty() {
        merge(
            &mut line,
            json!({
                "watched_rss_kib_before": before.rss_kib,
                "watched_rss_kib": during.rss_kib,
                "rss_bytes_per_connection": (grown * 1024) / open as u64,
            }),
        );
    }
    if args.settle > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let settled = sample(&args.common.watch_pid);
        let still_open = idle.iter().filter(|sender| !sender.is_closed()).count();
        merge(&mut line, json!({ "connections_open_settled": still_open }));
        if !args.common.watch_pid.is_empty() && still_open > 0 {
            let grown = settled.rss_kib.saturating_sub(before.rss_kib);
            merge(
                &mut line,
                json!({
                    "watched_rss_kib_settled": settled.rss_kib,
                    "rss_bytes_per_connection_settled": (grown * 1024) / still_open as u64,
                }),
            );
        }
    }
    drop(idle);
    Ok(line)
}

/// A new connection that has sent one JSON POST and read its whole answer.
async fn open_and_post(target: &Target, body: Bytes) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = connect(&target.authority)
        .await
        .map_err(|e| e.to_string())?;
    let mut sender = http1_client(stream).await?;
    let request = json_post(target, body).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    Ok(sender)
}
