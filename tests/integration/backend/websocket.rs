//! MCP over WebSocket (subprotocol `mcp`), directly and through the proxy: a full session that
//! survives a frame that is not JSON-RPC, progress streamed, every call on the session's owner.

use std::time::{Duration, Instant};

use super::{assert_spread, fleet, initialize_body, names, owner_of_calls};
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct WsSession {
    socket: WsStream,
    next_id: u64,
}

impl WsSession {
    async fn open(url: &str) -> WsSession {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "mcp".parse().unwrap());
        let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "mcp");
        WsSession { socket, next_id: 1 }
    }

    async fn send(&mut self, message: &Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    async fn receive(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .unwrap();
            if let Message::Text(text) = frame {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> (Value, Vec<Instant>) {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let mut notifications = Vec::new();
        loop {
            let message = self.receive().await;
            if message["id"] == id {
                return (message, notifications);
            }
            notifications.push(Instant::now());
        }
    }

    async fn call(&mut self, name: &str, arguments: Value) -> String {
        let (response, _) = self
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        response["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}"))
            .to_string()
    }
}

async fn websocket_session(url: &str) -> String {
    let mut session = WsSession::open(url).await;
    let (init, _) = session
        .request("initialize", initialize_body(0)["params"].clone())
        .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "switchyard-backend");
    session
        .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    // A frame that is not JSON-RPC gets a parse error; the session goes on.
    session.socket.send(Message::text("{nope")).await.unwrap();
    assert_eq!(session.receive().await["error"]["code"], -32700);
    let (tools, _) = session.request("tools/list", json!({})).await;
    assert_eq!(tools["result"]["tools"].as_array().unwrap().len(), 4);
    assert_eq!(session.call("echo", json!({"message": "ws"})).await, "ws");
    let (result, arrivals) = session
        .request(
            "tools/call",
            json!({"name": "countdown", "arguments": {"count": 5, "interval_ms": 150},
                   "_meta": {"progressToken": 3}}),
        )
        .await;
    assert!(
        result["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("liftoff")
    );
    assert_spread(&arrivals, Instant::now());
    let owner = owner_of_calls(async || session.call("server_status", json!({})).await).await;
    session.socket.close(None).await.unwrap();
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_directly_and_through_the_proxy_stay_on_their_owner() {
    let (backends, proxy) = fleet().await;
    let direct = format!("ws://{}/ws", backends[1].address);
    assert_eq!(websocket_session(&direct).await, "ref-2");
    let through = format!("ws://{}/ws", proxy.address);
    for _ in 0..4 {
        let owner = websocket_session(&through).await;
        assert!(names(&backends).contains(&owner), "{owner}");
    }
    for backend in &backends {
        eventually(
            "WebSocket sessions closed",
            Duration::from_secs(5),
            async || (backend.metric("mcp_backend_open_streams").await == 0).then_some(()),
        )
        .await;
    }
}
