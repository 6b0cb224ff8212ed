//! WebSocket load: round trips over upgraded connections.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt as _, StreamExt as _};
use http::header;
use serde_json::Value;

use super::*;

pub(super) async fn ws(args: WsArgs) -> Result<Value, LoadgenError> {
    let target = Arc::new(target(&args.url, "ws")?);
    preflight(&target.authority).await?;
    let url = Arc::new(args.url.clone());
    run_connections(
        "ws",
        &args.common,
        args.connections,
        args.rate,
        |stats, window, schedule| {
            tokio::spawn(ws_connection(
                stats,
                Arc::clone(&target),
                Arc::clone(&url),
                window,
                schedule,
            ))
        },
    )
    .await
}

async fn ws_connection(
    mut stats: ConnStats,
    target: Arc<Target>,
    url: Arc<String>,
    window: Arc<Window>,
    mut schedule: Schedule,
) -> ConnStats {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = match url.as_str().into_client_request() {
        Ok(request) => request,
        Err(error) => {
            stats.fail(error);
            return stats;
        }
    };
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static("mcp"),
    );
    let stream = match connect(&target.authority).await {
        Ok(stream) => stream,
        Err(error) => {
            stats.fail(error);
            return stats;
        }
    };
    let mut socket = match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => socket,
        Err(error) => {
            stats.fail(error);
            return stats;
        }
    };
    let mut id: u64 = 0;
    while Instant::now() < window.end {
        let sent_at = schedule.wait().await;
        id += 1;
        let ping = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        if let Err(error) = socket.send(Message::text(ping)).await {
            stats.fail(error);
            return stats;
        }
        let answered = loop {
            match socket.next().await {
                Some(Ok(Message::Text(_))) => break true,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break false,
            }
        };
        stats.record(&window, sent_at, Instant::now(), answered);
        if !answered {
            stats.fail("websocket closed");
            return stats;
        }
    }
    let _ = socket.close(None).await;
    stats
}
