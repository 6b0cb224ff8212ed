//! An rmcp transport over two channels: what the legacy SSE and WebSocket transports feed.

use std::future::Future;

use rmcp::RoleServer;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::sync::mpsc;

/// Messages from the client arrive on `incoming`; the server's messages leave on `outgoing`.
pub struct ChannelTransport {
    pub incoming: mpsc::Receiver<ClientJsonRpcMessage>,
    pub outgoing: mpsc::Sender<ServerJsonRpcMessage>,
}

/// Capacity of each direction: enough for bursts of progress notifications, small enough
/// that a stalled client pushes back on the tool instead of growing memory.
pub const CHANNEL_CAPACITY: usize = 64;

/// A transport plus the client-side ends of its channels.
pub fn channel_transport() -> (
    ChannelTransport,
    mpsc::Sender<ClientJsonRpcMessage>,
    mpsc::Receiver<ServerJsonRpcMessage>,
) {
    let (to_server, incoming) = mpsc::channel(CHANNEL_CAPACITY);
    let (outgoing, from_server) = mpsc::channel(CHANNEL_CAPACITY);
    (
        ChannelTransport { incoming, outgoing },
        to_server,
        from_server,
    )
}

impl Transport<RoleServer> for ChannelTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let outgoing = self.outgoing.clone();
        async move {
            outgoing.send(item).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        self.incoming.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.incoming.close();
        Ok(())
    }
}
