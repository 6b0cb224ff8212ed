//! Test fixtures: real sockets on 127.0.0.1:0, a small programmable HTTP backend, the real proxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use switchyard::config::Config;
use switchyard::control::server::Proxy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Polls `check` until it returns `Some`, failing the test at the deadline.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A directory under the system temp dir for one test's files, removed with everything in it
/// when dropped, so a test run leaves nothing behind in /tmp. Derefs to its path.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `contents` to `name` in the directory; returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One file in a [`TempDir`] of its own, removed with it when dropped. Derefs to the file's path.
pub struct TempFile {
    path: PathBuf,
    _dir: TempDir,
}

impl TempFile {
    pub fn new(tag: &str, name: &str, contents: &str) -> TempFile {
        let dir = TempDir::new(tag);
        TempFile {
            path: dir.write(name, contents),
            _dir: dir,
        }
    }
}

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// What a test backend saw.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub connections: AtomicUsize,
    pub disconnects: AtomicUsize,
    pub headers: Mutex<Vec<http::HeaderMap>>,
    pub sessions: Mutex<Vec<String>>,
    /// Legacy sessions: id → sender feeding that session's GET stream.
    pub legacy: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<Bytes>>>,
    /// `GET /healthz` requests (not counted in `requests`).
    pub probes: AtomicUsize,
    /// Statuses `/healthz` answers in turn, cycling; empty means 200.
    pub health_script: Mutex<Vec<u16>>,
}

/// A small HTTP backend that speaks just enough MCP-over-HTTP to tell where each request landed.
pub struct TestBackend {
    pub name: String,
    pub address: SocketAddr,
    pub seen: Arc<Seen>,
    stop: CancellationToken,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        TestBackend::start_on(name, "127.0.0.1:0").await
    }

    /// Starts on a given address: another loopback IP, a shared port, or the address of a killed
    /// backend coming back (its listener closes when its accept task notices, so bind is retried).
    pub async fn start_on<A: tokio::net::ToSocketAddrs + Copy>(
        name: &str,
        address: A,
    ) -> TestBackend {
        TestBackend::start_with(name, address, Arc::new(Seen::default())).await
    }

    /// The same backend back on its address after [`TestBackend::kill`], with the sessions it
    /// knew: a process that was unreachable for a while, not one that restarted.
    pub async fn revive(&self) -> TestBackend {
        TestBackend::start_with(&self.name, self.address, Arc::clone(&self.seen)).await
    }

    async fn start_with<A: tokio::net::ToSocketAddrs + Copy>(
        name: &str,
        address: A,
        seen: Arc<Seen>,
    ) -> TestBackend {
        let listener = eventually("address free", Duration::from_secs(5), async || {
            TcpListener::bind(address).await.ok()
        })
        .await;
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let backend = TestBackend {
            name: name.to_string(),
            address,
            seen: Arc::clone(&seen),
            stop: stop.clone(),
        };
        let name = name.to_string();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                let name = name.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let seen = Arc::clone(&seen);
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(route(&name, &seen, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        backend
    }

    /// Stops accepting and drops every connection: the backend is dead.
    pub fn kill(&self) {
        self.stop.cancel();
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// The statuses `/healthz` answers from now on, in turn (e.g. `&[200, 500]` alternates).
    pub fn set_health(&self, statuses: &[u16]) {
        *self.seen.health_script.lock().unwrap() = statuses.to_vec();
    }

    pub fn probes(&self) -> usize {
        self.seen.probes.load(Ordering::SeqCst)
    }
}

/// A backend that accepts connections and never answers: only timeouts can tell it is dead.
pub struct SilentBackend {
    pub address: SocketAddr,
    stop: CancellationToken,
}

impl SilentBackend {
    pub async fn start() -> SilentBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            held.push(stream);
                        }
                    }
                }
            }
        });
        SilentBackend { address, stop }
    }
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn health_answer(seen: &Seen) -> Response<BoxBody> {
    let turn = seen.probes.fetch_add(1, Ordering::SeqCst);
    let script = seen.health_script.lock().unwrap();
    let status = match script.len() {
        0 => 200,
        n => script[turn % n],
    };
    text(StatusCode::from_u16(status).unwrap(), "health\n")
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response
}

/// A streaming body fed by a channel; counts a disconnect when the proxy drops it.
fn channel_body(seen: &Arc<Seen>) -> (tokio::sync::mpsc::UnboundedSender<Bytes>, BoxBody) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    struct OnDrop(Arc<Seen>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.disconnects.fetch_add(1, Ordering::SeqCst);
        }
    }
    let guard = OnDrop(Arc::clone(seen));
    let stream = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let bytes = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), (rx, guard)))
    });
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

fn sse(body: BoxBody) -> Response<BoxBody> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
        .headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    response
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

static SESSION_COUNTER: AtomicUsize = AtomicUsize::new(0);

async fn route(name: &str, seen: &Arc<Seen>, req: Request<Incoming>) -> Response<BoxBody> {
    if req.uri().path() == "/healthz" {
        return health_answer(seen);
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.headers.lock().unwrap().push(req.headers().clone());
    let path = req.uri().path().to_string();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/name") => text(StatusCode::OK, name.to_string()),
        // Streamable HTTP: mint a session on initialize, answer with the owner's name, 404 strangers.
        (_, "/mcp") => {
            let session = req
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_string());
            let method = req.method().clone();
            let _ = req.into_body().collect().await;
            match session {
                None => {
                    let id = format!("{name}-{}", SESSION_COUNTER.fetch_add(1, Ordering::SeqCst));
                    seen.sessions.lock().unwrap().push(id.clone());
                    let mut response = text(StatusCode::OK, format!(r#"{{"backend":"{name}"}}"#));
                    response
                        .headers_mut()
                        .insert("mcp-session-id", id.parse().unwrap());
                    response
                }
                Some(id) if seen.sessions.lock().unwrap().contains(&id) => {
                    if method == http::Method::DELETE {
                        seen.sessions.lock().unwrap().retain(|s| *s != id);
                        return text(StatusCode::OK, "");
                    }
                    text(StatusCode::OK, format!(r#"{{"backend":"{name}"}}"#))
                }
                Some(_) => text(StatusCode::NOT_FOUND, "unknown session"),
            }
        }
        // Legacy HTTP+SSE: the endpoint event names the session; POSTs are answered on the stream.
        ("GET", "/sse") => {
            let id = format!(
                "{name}-legacy-{}",
                SESSION_COUNTER.fetch_add(1, Ordering::SeqCst)
            );
            // `?absolute=1`: an absolute URL built from the Host received, as some servers do.
            let origin = match query_param(&req, "absolute") {
                Some(_) => {
                    let host = req.headers()["host"].to_str().unwrap();
                    format!("http://{host}")
                }
                None => String::new(),
            };
            let (tx, body) = channel_body(seen);
            tx.send(Bytes::from(format!(
                "event: endpoint\ndata: {origin}/messages?sessionId={id}\n\n"
            )))
            .unwrap();
            seen.legacy.lock().unwrap().insert(id, tx);
            sse(body)
        }
        ("POST", "/messages") => {
            let id = query_param(&req, "sessionId")
                .unwrap_or_default()
                .to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let sender = seen.legacy.lock().unwrap().get(&id).cloned();
            match sender {
                Some(tx) => {
                    let _ = tx.send(Bytes::from(format!(
                        "event: message\ndata: {{\"backend\":\"{name}\",\"echo\":{}}}\n\n",
                        String::from_utf8_lossy(&body)
                    )));
                    text(StatusCode::ACCEPTED, "Accepted")
                }
                None => text(StatusCode::NOT_FOUND, "unknown session"),
            }
        }
        // Timestamped SSE events every `every_ms`, `count` of them.
        (_, "/ticks") => {
            let every = Duration::from_millis(
                query_param(&req, "every_ms")
                    .unwrap_or("200")
                    .parse()
                    .unwrap(),
            );
            let count: usize = query_param(&req, "count").unwrap_or("5").parse().unwrap();
            let (tx, body) = channel_body(seen);
            tokio::spawn(async move {
                for i in 0..count {
                    tokio::time::sleep(every).await;
                    let sent = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_micros();
                    if tx
                        .send(Bytes::from(format!("id: {i}\ndata: {sent}\n\n")))
                        .is_err()
                    {
                        return;
                    }
                }
            });
            sse(body)
        }
        // A plain (not SSE) body in `count` chunks `every_ms` apart.
        ("GET", "/drip") => {
            let every = Duration::from_millis(
                query_param(&req, "every_ms")
                    .unwrap_or("100")
                    .parse()
                    .unwrap(),
            );
            let count: usize = query_param(&req, "count").unwrap_or("3").parse().unwrap();
            let (tx, body) = channel_body(seen);
            tokio::spawn(async move {
                for i in 0..count {
                    tokio::time::sleep(every).await;
                    if tx.send(Bytes::from(format!("chunk {i}\n"))).is_err() {
                        return;
                    }
                }
            });
            Response::new(body)
        }
        // An SSE stream that stays open and silent until the client goes away.
        ("GET", "/hold") | ("POST", "/hold") => {
            let (tx, body) = channel_body(seen);
            let first = query_param(&req, "first").map(|s| s.to_string());
            if let Some(first) = first {
                let _ = tx.send(Bytes::from(first.replace("%0A", "\n")));
            }
            tokio::spawn(async move {
                tx.closed().await;
            });
            sse(body)
        }
        // Chunks separated by pauses, to see what the proxy adds between them.
        ("GET", "/script") => {
            let (tx, body) = channel_body(seen);
            tokio::spawn(async move {
                for (chunk, pause_ms) in [("data: a\n\n", 350), ("data: b", 350), ("\n\n", 0)] {
                    if tx.send(Bytes::from_static(chunk.as_bytes())).is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                }
            });
            sse(body)
        }
        // Endless events, each written in two chunks, so a stream is often mid-event.
        ("GET", "/split") => {
            let (tx, body) = channel_body(seen);
            tokio::spawn(async move {
                for i in 0.. {
                    if tx
                        .send(Bytes::from(format!("id: {i}\ndata: part")))
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if tx.send(Bytes::from_static(b"-end\n\n")).is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            sse(body)
        }
        ("GET", "/headers") => {
            let headers: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            text(StatusCode::OK, serde_json::to_string(&headers).unwrap())
        }
        // Every field in order, repeats included (the map above keeps one value per name).
        ("GET", "/headers/list") => {
            let fields: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            text(StatusCode::OK, serde_json::to_string(&fields).unwrap())
        }
        ("POST", "/echo") => match req.into_body().collect().await {
            Ok(body) => text(StatusCode::OK, body.to_bytes()),
            // The proxy gave up on a client's broken or stalled upload.
            Err(_) => text(StatusCode::BAD_REQUEST, "body cut off"),
        },
        ("GET", "/slow") => {
            tokio::time::sleep(Duration::from_millis(
                query_param(&req, "ms").unwrap_or("1000").parse().unwrap(),
            ))
            .await;
            text(StatusCode::OK, "slow")
        }
        ("GET", "/ws") => websocket_echo(req),
        _ => text(StatusCode::NOT_FOUND, "no such path"),
    }
}

/// Accepts a WebSocket upgrade and echoes raw bytes: the proxy only tunnels, it never parses frames.
fn websocket_echo(mut req: Request<Incoming>) -> Response<BoxBody> {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let (mut reader, mut writer) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    });
    let mut response = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    response
        .headers_mut()
        .insert("upgrade", "websocket".parse().unwrap());
    response
        .headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    response
}

/// A running proxy for one test; shut down and drained when dropped.
pub struct TestProxy {
    pub address: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub state: Arc<switchyard::state::State>,
    pub shutdown: CancellationToken,
    waiter: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestProxy {
    /// Starts the proxy on `config` (TOML), with every listener on port 0.
    pub async fn start(config: &str) -> TestProxy {
        TestProxy::start_as(config, Path::new("test.toml")).await
    }

    /// Like [`TestProxy::start`], for a config read as if from `source` (relative paths in it
    /// are relative to its directory).
    pub async fn start_as(config: &str, source: &Path) -> TestProxy {
        let config = Config::parse(config, source).unwrap();
        let shutdown = CancellationToken::new();
        let proxy = Proxy::start(config, shutdown.clone()).await.unwrap();
        let address = proxy.listeners()[0];
        let admin = proxy.admin();
        let state = Arc::clone(proxy.state());
        let waiter = tokio::spawn(proxy.wait());
        TestProxy {
            address,
            admin,
            state,
            shutdown,
            waiter: Some(waiter),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.unwrap())
    }

    /// Cancels the shutdown token and waits for the drain to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(waiter) = self.waiter.take() {
            waiter.await.unwrap();
        }
    }

    pub async fn reload(&self, config: &str) -> Result<u64, String> {
        let config = Config::parse(config, Path::new("test.toml")).map_err(|e| e.to_string())?;
        switchyard::control::reload::apply(&self.state, config)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A config with one listener on port 0, an admin listener, and the given pools (`name` → backends).
pub fn config_for(pools: &[(&str, &[&TestBackend])], active: &str, extra: &str) -> String {
    let mut text =
        String::from("[[listener]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n");
    for (name, backends) in pools {
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("\"{}\"", b.address))
            .collect();
        text.push_str(&format!(
            "[pools.{name}]\nbackends = [{}]\n\n",
            list.join(", ")
        ));
    }
    text.push_str(&format!("[routing]\nactive = {active}\n\n{extra}\n"));
    text
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .user_agent("switchyard-tests")
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Reads an SSE response until `count` events have arrived, returning each event's text and
/// the instant it arrived.
pub async fn read_events(
    response: reqwest::Response,
    count: usize,
    timeout: Duration,
) -> Vec<(String, Instant)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    use futures_util::StreamExt;
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time");
        let Some(chunk) = chunk else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            events.push((event, Instant::now()));
        }
    }
    events
}

/// A child process killed when the test ends, pass or fail, so no stray proxy outlives it.
pub struct KillOnDrop(pub Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP/2 connection over cleartext (prior knowledge): the client's handle, and a task that
/// ends when the connection closes. An h2 client closes a connection once no handle is left.
pub async fn h2c_connection(
    address: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, ended)
}

/// [`h2c_connection`]'s handle alone.
pub async fn h2c(address: SocketAddr) -> h2::client::SendRequest<Bytes> {
    h2c_connection(address).await.0
}

/// Like [`config_for`], for backends given by address (e.g. reference backends).
pub fn config_for_addresses(pools: &[(&str, &[SocketAddr])], active: &str, extra: &str) -> String {
    let mut text =
        String::from("[[listener]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n");
    for (name, addresses) in pools {
        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        text.push_str(&format!(
            "[pools.{name}]\nbackends = [{}]\n\n",
            list.join(", ")
        ));
    }
    text.push_str(&format!("[routing]\nactive = {active}\n\n{extra}\n"));
    text
}

/// Opens a Streamable HTTP session through `url` (a POST without a session) and returns the
/// `Mcp-Session-Id` the client was given.
pub async fn new_session(client: &reqwest::Client, url: &str) -> String {
    let init = client.post(url).body("{}").send().await.unwrap();
    assert_eq!(init.status(), 200, "initialize through {url}");
    session_of(&init)
}

/// The `Mcp-Session-Id` of a response.
pub fn session_of(response: &reqwest::Response) -> String {
    response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string()
}

/// The body of a GET, as text.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sends a raw WebSocket upgrade for `path` to `address` and returns the socket and the
/// lower-cased response head, read byte by byte so no tunnelled byte is consumed.
pub async fn websocket_upgrade(address: SocketAddr, path: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    (socket, String::from_utf8(head).unwrap().to_lowercase())
}

/// A message POST in session `session` through `url`.
pub async fn post_in_session(
    client: &reqwest::Client,
    url: &str,
    session: &str,
) -> reqwest::Response {
    client
        .post(url)
        .header("mcp-session-id", session)
        .body("{}")
        .send()
        .await
        .unwrap()
}

/// A legacy HTTP+SSE session opened through `base` (`GET {base}/sse`): the endpoint URL from the
/// first event, the session id in it, and the rest of the stream.
pub struct LegacySession<S> {
    pub endpoint: String,
    pub session: String,
    pub events: S,
}

pub async fn open_legacy(
    client: &reqwest::Client,
    base: &str,
) -> LegacySession<impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin + Send> {
    use futures_util::StreamExt;
    let stream = client
        .get(format!("{base}/sse"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut events = stream.bytes_stream();
    let mut head = String::new();
    let endpoint = loop {
        head.push_str(&String::from_utf8_lossy(
            &events.next().await.unwrap().unwrap(),
        ));
        if let Some(line) = head.lines().find(|l| l.starts_with("data: ")) {
            break line.trim_start_matches("data: ").to_string();
        }
    };
    let session = endpoint.split("sessionId=").nth(1).unwrap().to_string();
    LegacySession {
        endpoint,
        session,
        events,
    }
}

/// A GET that accepts `text/event-stream`: how MCP clients open SSE streams.
pub async fn get_sse(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
}
