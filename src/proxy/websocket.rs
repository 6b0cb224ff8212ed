//! WebSocket: once both sides have switched protocols, a byte tunnel between them.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::proxy::body::AccessRecord;
use crate::state::State;
use crate::upstream::backend::InFlightGuard;
use crate::upstream::h1::Upgraded;

use super::version::ClientIo;

/// Runs the tunnel in the background; the guard counts it as an open stream until it closes, and
/// it closes when the backend drains or the proxy shuts down.
pub fn spawn_tunnel(
    state: &Arc<State>,
    client: oneshot::Receiver<ClientIo>,
    upstream: Upgraded,
    guard: InFlightGuard,
    mut record: AccessRecord,
) {
    let close = guard.backend().stream_token();
    state.tasks.spawn(async move {
        let outcome = tokio::select! {
            outcome = tunnel(client, upstream, &mut record) => outcome,
            () = close.cancelled() => "drained",
        };
        drop(guard);
        record.finish(outcome);
    });
}

async fn tunnel(
    client: oneshot::Receiver<ClientIo>,
    mut upstream: Upgraded,
    record: &mut AccessRecord,
) -> &'static str {
    let Ok(mut client) = client.await else {
        tracing::debug!("websocket upgrade failed: the client connection ended before the 101");
        return "upgrade_failed";
    };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_backend, to_client)) => {
            record.bytes = to_backend + to_client;
            record.state.metrics.bytes_in.inc_by(to_backend);
            record.state.metrics.bytes_out.inc_by(to_client);
            "complete"
        }
        Err(_) => "closed",
    }
}
