//! Scale-out: several proxy replicas sharing nothing but config and a sealing key, restarts,
//! key rotation, forged tokens, and DNS discovery against a nameserver the test controls.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    TestBackend, TestProxy, client, config_for, eventually, get_sse, get_text, session_of,
};
use futures_util::StreamExt;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const KEY_1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const KEY_2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

/// A key file with `keys` (first seals), removed when the test ends.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(keys: &[&str]) -> KeyFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-scale-{}-{}.keys",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, format!("# test keys\n{}\n", keys.join("\n"))).unwrap();
        KeyFile(path)
    }

    fn sessions(&self) -> String {
        format!("[sessions]\nseal_keys_file = \"{}\"\n", self.0.display())
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn replicas(config: &str, n: usize) -> Vec<TestProxy> {
    let mut proxies = Vec::new();
    for _ in 0..n {
        proxies.push(TestProxy::start(config).await);
    }
    proxies
}

/// Initialises a Streamable HTTP session through `proxy`: (token the client got, owner name).
async fn initialize(proxy: &TestProxy) -> (String, String) {
    let response = client()
        .post(proxy.url("/mcp"))
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = session_of(&response);
    let body: serde_json::Value = response.json().await.unwrap();
    (token, body["backend"].as_str().unwrap().to_string())
}

/// Sends a message of the session `token` through `proxy`: (status, body).
async fn message(proxy: &TestProxy, token: &str) -> (u16, String) {
    let response = client()
        .post(proxy.url("/mcp"))
        .header("mcp-session-id", token)
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

fn owner<'a>(name: &str, backends: &[&'a TestBackend]) -> &'a TestBackend {
    backends.iter().find(|b| b.name == name).unwrap()
}

/// The session id the backend minted last (the one behind the newest token).
fn raw_session(backend: &TestBackend) -> String {
    backend
        .seen
        .sessions
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

fn last_session_header(backend: &TestBackend) -> Option<String> {
    let headers = backend.seen.headers.lock().unwrap();
    headers
        .last()?
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn streamable_session_continues_through_every_replica() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let keys = KeyFile::new(&[KEY_1]);
    let config = config_for(&[("blue", &[&b1, &b2])], "\"blue\"", &keys.sessions());
    let proxies = replicas(&config, 3).await;

    let (token, name) = initialize(&proxies[0]).await;
    let owner = owner(&name, &[&b1, &b2]);
    let raw = raw_session(owner);
    // The client sees a sealed token: neither the backend's id nor its address.
    assert_ne!(token, raw);
    assert!(!token.contains(&raw), "{token}");
    assert!(!token.contains("127.0.0.1"), "{token}");

    for (i, proxy) in proxies.iter().enumerate().cycle().skip(1).take(6) {
        let (status, body) = message(proxy, &token).await;
        assert_eq!(status, 200, "replica {i}: {body}");
        assert!(body.contains(&name), "replica {i} routed elsewhere: {body}");
        // The backend never sees the token, only its own id.
        assert_eq!(last_session_header(owner).as_deref(), Some(raw.as_str()));
    }

    // DELETE through one replica ends the session for all of them (the owner forgot it).
    let deleted = client()
        .delete(proxies[2].url("/mcp"))
        .header("mcp-session-id", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(message(&proxies[1], &token).await.0, 404);
}

/// Reads SSE events from a response one at a time.
struct Events {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Events {
        Events {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                return self.buffer.drain(..end + 2).collect();
            }
            let chunk = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("an event in time")
                .expect("stream still open")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event that is not a keepalive comment.
    async fn next_data(&mut self) -> String {
        loop {
            let event = self.next().await;
            if event.lines().any(|l| l.starts_with("data:")) {
                return event;
            }
        }
    }
}

/// Opens a legacy SSE stream through `proxy`: the events and the endpoint URL it announced.
async fn open_legacy(proxy: &TestProxy) -> (Events, String) {
    let response = get_sse(&client(), &proxy.url("/sse")).await;
    assert_eq!(response.status(), 200);
    let mut events = Events::new(response);
    let endpoint = events.next_data().await;
    assert!(endpoint.starts_with("event: endpoint\n"), "{endpoint}");
    let url = endpoint
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap()
        .to_string();
    (events, url)
}

async fn post_legacy(proxy: &TestProxy, url: &str, body: &str) -> u16 {
    client()
        .post(proxy.url(url))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn legacy_sse_session_continues_through_every_replica() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let keys = KeyFile::new(&[KEY_1]);
    let config = config_for(&[("blue", &[&b1, &b2])], "\"blue\"", &keys.sessions());
    let proxies = replicas(&config, 3).await;

    let (mut events, url) = open_legacy(&proxies[0]).await;
    let (_, token) = url.split_once("sessionId=").unwrap();
    let raw_ids: Vec<String> = [&b1, &b2]
        .iter()
        .flat_map(|b| {
            b.seen
                .legacy
                .lock()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(raw_ids.len(), 1);
    assert!(url.starts_with("/messages?sessionId="), "{url}");
    assert_ne!(
        token, raw_ids[0],
        "the endpoint event must carry a sealed id"
    );

    for (n, proxy) in [&proxies[1], &proxies[2], &proxies[0]].iter().enumerate() {
        assert_eq!(post_legacy(proxy, &url, &format!("{n}")).await, 202);
        let event = events.next_data().await;
        assert!(event.contains(&format!("\"echo\":{n}")), "{event}");
    }
}

#[tokio::test]
async fn restarted_replica_loses_nothing() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let keys = KeyFile::new(&[KEY_1]);
    let config = config_for(&[("blue", &[&b1, &b2])], "\"blue\"", &keys.sessions());
    let mut proxies = replicas(&config, 2).await;

    // Streamable HTTP: the replica that saw the initialize restarts; its successor routes.
    let (token, name) = initialize(&proxies[0]).await;
    proxies.remove(0).stop().await;
    let restarted = TestProxy::start(&config).await;
    let (status, body) = message(&restarted, &token).await;
    assert_eq!(status, 200);
    assert!(body.contains(&name), "{body}");
    assert_eq!(
        restarted.state.sessions.len(),
        0,
        "routed by the token alone"
    );

    // Legacy SSE: the stream stays open through one replica while another restarts.
    let (mut events, url) = open_legacy(&restarted).await;
    assert_eq!(post_legacy(&proxies[0], &url, "1").await, 202);
    assert!(events.next_data().await.contains("\"echo\":1"));
    proxies.remove(0).stop().await;
    let again = TestProxy::start(&config).await;
    assert_eq!(post_legacy(&again, &url, "2").await, 202);
    assert!(events.next_data().await.contains("\"echo\":2"));
}

#[tokio::test]
async fn forged_and_tampered_tokens_get_404_and_reach_no_backend() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let keys = KeyFile::new(&[KEY_1]);
    let config = config_for(&[("blue", &[&b1, &b2])], "\"blue\"", &keys.sessions());
    let proxy = TestProxy::start(&config).await;
    let (token, name) = initialize(&proxy).await;
    let raw = raw_session(owner(&name, &[&b1, &b2]));

    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign_keys = KeyFile::new(&[KEY_2]);
    let foreign = TestProxy::start(&config_for(
        &[("blue", &[&b1, &b2])],
        "\"blue\"",
        &foreign_keys.sessions(),
    ))
    .await;
    let (foreign_token, _) = initialize(&foreign).await;

    let before = b1.requests() + b2.requests();
    for forged in [tampered.as_str(), raw.as_str(), "garbage", &foreign_token] {
        let response = client()
            .post(proxy.url("/mcp"))
            .header("mcp-session-id", forged)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{forged}");
        let body = response.text().await.unwrap();
        assert!(body.contains("-32001"), "{body}");
        let legacy = post_legacy(&proxy, &format!("/messages?sessionId={forged}"), "1").await;
        assert_eq!(legacy, 404, "{forged}");
    }
    assert_eq!(b1.requests() + b2.requests(), before, "nothing was routed");
    assert_eq!(proxy.state.metrics.session_tokens_rejected.get(), 8);
    // The genuine token still works.
    assert_eq!(message(&proxy, &token).await.0, 200);
}

#[tokio::test]
async fn rotated_keys_still_open_old_tokens() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let pools: &[(&str, &[&TestBackend])] = &[("blue", &[&b1, &b2])];
    let old_keys = KeyFile::new(&[KEY_1]);
    let rotated_keys = KeyFile::new(&[KEY_2, KEY_1]);
    let new_only = KeyFile::new(&[KEY_2]);
    let old = TestProxy::start(&config_for(pools, "\"blue\"", &old_keys.sessions())).await;
    let (old_token, old_owner) = initialize(&old).await;

    // A replica started with the new key first opens the old token…
    let rotated = TestProxy::start(&config_for(pools, "\"blue\"", &rotated_keys.sessions())).await;
    let (status, body) = message(&rotated, &old_token).await;
    assert_eq!(status, 200);
    assert!(body.contains(&old_owner));
    // …and seals new sessions with the new key, which the old-key-only replica cannot open.
    let (new_token, _) = initialize(&rotated).await;
    assert_eq!(message(&old, &new_token).await.0, 404);
    let retired = TestProxy::start(&config_for(pools, "\"blue\"", &new_only.sessions())).await;
    assert_eq!(message(&retired, &new_token).await.0, 200);
    assert_eq!(message(&retired, &old_token).await.0, 404);

    // Reloading the old replica with the rotated keys: both tokens open there.
    old.reload(&config_for(pools, "\"blue\"", &rotated_keys.sessions()))
        .await
        .unwrap();
    assert_eq!(message(&old, &new_token).await.0, 200);
    assert_eq!(message(&old, &old_token).await.0, 200);
}

#[tokio::test]
async fn sealing_off_keeps_raw_ids() {
    let b1 = TestBackend::start("b1").await;
    let config = config_for(
        &[("blue", &[&b1])],
        "\"blue\"",
        "[sessions]\nseal = false\n",
    );
    let proxy = TestProxy::start(&config).await;
    let (token, _) = initialize(&proxy).await;
    assert_eq!(token, raw_session(&b1));
    assert_eq!(message(&proxy, &token).await.0, 200);
}

#[test]
fn the_client_hash_is_pinned_across_builds() {
    use switchyard::mcp::hash::stable_hash;
    use switchyard::upstream::balance::{Member, client_hash, pick_by_hash};
    let root = CancellationToken::new();
    let members: Vec<Member> = (1..=3)
        .map(|i| {
            let address = format!("10.0.0.{i}:3000");
            let backend = switchyard::upstream::backend::Backend::new(&address, &root).unwrap();
            Member::new(backend, 1, "p")
        })
        .collect();
    let placed: Vec<String> = ["192.168.1.10", "192.168.1.11", "203.0.113.7", "2001:db8::1"]
        .iter()
        .map(|ip| {
            let chosen = pick_by_hash(&members, client_hash(ip.parse().unwrap()), |_| true);
            chosen.unwrap().backend.address.to_string()
        })
        .collect();
    // Exact values: replicas of different builds must agree on placements. If this fails, the
    // hash changed, and a mixed-version fleet would place streams differently during a rollout.
    // (FxHash is word-size dependent: these are the 64-bit values.)
    assert_eq!(stable_hash(b"127.0.0.1:3001"), 0x4ad7_2cc9_ca1d_a559);
    assert_eq!(stable_hash(b"10.0.0.7:3000"), 0x8ab9_51e7_1017_0902);
    assert_eq!(
        client_hash("10.0.0.1".parse().unwrap()),
        0xafce_5b07_9c52_cd4d
    );
    assert_eq!(
        client_hash("2001:db8::1".parse().unwrap()),
        0xc575_3b06_5fae_ad2c
    );
    assert_eq!(
        placed,
        [
            "10.0.0.2:3000",
            "10.0.0.2:3000",
            "10.0.0.3:3000",
            "10.0.0.2:3000"
        ]
    );
}

#[tokio::test]
async fn replicas_place_a_new_stream_on_the_same_backend() {
    let backends = [
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        TestBackend::start("b3").await,
        TestBackend::start("b4").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let config = config_for(&[("blue", &refs)], "\"blue\"", "");
    let proxies = replicas(&config, 3).await;
    let mut names = Vec::new();
    for proxy in &proxies {
        // A GET accepting an event stream is placed by client hash, like a new SSE stream.
        let response = get_sse(&client(), &proxy.url("/name")).await;
        names.push(response.text().await.unwrap());
    }
    assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
}

/// A tiny authoritative nameserver on 127.0.0.1:0 whose A records the test changes.
pub(crate) struct TestDns {
    pub(crate) address: SocketAddr,
    answers: Arc<Mutex<Vec<Ipv4Addr>>>,
    pub(crate) failing: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    /// How long each answer takes (a slow nameserver), in milliseconds.
    pub(crate) delay_ms: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestDns {
    pub(crate) async fn start(answers: &[Ipv4Addr]) -> TestDns {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let dns = TestDns {
            address: socket.local_addr().unwrap(),
            answers: Arc::new(Mutex::new(answers.to_vec())),
            failing: Arc::new(AtomicBool::new(false)),
            queries: Arc::new(AtomicUsize::new(0)),
            delay_ms: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (answers, failing, queries, delay, stop) = (
            Arc::clone(&dns.answers),
            Arc::clone(&dns.failing),
            Arc::clone(&dns.queries),
            Arc::clone(&dns.delay_ms),
            dns.stop.clone(),
        );
        tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            loop {
                let (len, from) = tokio::select! {
                    () = stop.cancelled() => return,
                    received = socket.recv_from(&mut buffer) => received.unwrap(),
                };
                let Ok(query) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                queries.fetch_add(1, Ordering::SeqCst);
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.authoritative = true;
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.add_queries(query.queries.clone());
                if failing.load(Ordering::SeqCst) {
                    reply.metadata.response_code = ResponseCode::ServFail;
                } else {
                    for q in &query.queries {
                        if q.query_type() != RecordType::A {
                            continue;
                        }
                        for ip in answers.lock().unwrap().iter() {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                0,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                }
                let delay = Duration::from_millis(delay.load(Ordering::SeqCst));
                let socket = Arc::clone(&socket);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
                });
            }
        });
        dns
    }

    /// Queries received so far.
    pub(crate) fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    pub(crate) fn set(&self, answers: &[Ipv4Addr]) {
        *self.answers.lock().unwrap() = answers.to_vec();
    }
}

async fn name_via(proxy: &TestProxy) -> String {
    get_text(&proxy.url("/name")).await
}

#[tokio::test]
async fn dns_discovery_follows_address_changes() {
    let (first, second) = pair_on_one_port().await;
    let port = first.address.port();
    let (one, two) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    let dns = TestDns::start(&[one]).await;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[pools.fleet]\nbackends = [\"fleet.test:{port}\"]\n\n\
         [routing]\nactive = \"fleet\"\n\n[discovery]\ninterval = \"50ms\"\nresolver = \"{}\"\n",
        dns.address
    );
    let proxy = TestProxy::start(&config).await;
    // Resolved before the first request: the name's one address serves everything.
    for _ in 0..5 {
        assert_eq!(name_via(&proxy).await, "first");
    }
    let (session, _) = initialize(&proxy).await;

    // The name moves: new traffic follows; the old address drains but keeps its sessions.
    dns.set(&[two]);
    eventually("traffic moves to the new address", WAIT, async || {
        (name_via(&proxy).await == "second").then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(name_via(&proxy).await, "second");
    }
    let snapshot = proxy.state.snapshot();
    let old_address = format!("127.0.0.1:{port}");
    assert!(
        snapshot
            .draining
            .iter()
            .any(|d| *d.backend.address == *old_address)
    );
    let (status, body) = message(&proxy, &session).await;
    assert_eq!(status, 200);
    assert!(body.contains("first"), "{body}");

    // Both addresses: both take new work.
    dns.set(&[one, two]);
    eventually("both addresses serve", WAIT, async || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            seen.insert(name_via(&proxy).await);
        }
        (seen.len() == 2).then_some(())
    })
    .await;

    // The nameserver fails: the last good answer stays in force.
    dns.failing.store(true, Ordering::SeqCst);
    let failures = || {
        proxy
            .state
            .metrics
            .discovery_lookups
            .get_or_create(&switchyard::metrics::OutcomeLabels { outcome: "failure" })
            .get()
    };
    eventually("two failed lookups", WAIT, async || {
        (failures() >= 2).then_some(())
    })
    .await;
    assert!(dns.queries.load(Ordering::SeqCst) > 0);
    assert_eq!(proxy.state.snapshot().pools[0].members.len(), 2);
    assert!(["first", "second"].contains(&name_via(&proxy).await.as_str()));
    assert!(second.requests() > 0 && first.requests() > 0);
}

/// A raw HTTP/1.1 backend whose one SSE response is written in the given chunks, each flushed
/// on its own, so the proxy sees the endpoint event split across reads.
async fn chunked_sse_backend(chunks: &'static [&'static str]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  transfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        for chunk in chunks {
            let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
            stream.write_all(framed.as_bytes()).await.unwrap();
            stream.flush().await.unwrap();
            // Pacing only (not synchronisation): makes each chunk a separate read upstream.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // Hold the stream open until the proxy goes away.
        let _ = stream.read(&mut [0u8; 1]).await;
    });
    address
}

#[tokio::test]
async fn split_endpoint_event_is_sealed_and_the_rest_passes_untouched() {
    let backend = chunked_sse_backend(&[
        ": hello\n\n",
        "event: endp",
        "oint\ndata: /messages/?session_id=py-",
        "raw-1\n",
        "\ndata: after\n\n",
    ])
    .await;
    let keys = KeyFile::new(&[KEY_1]);
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[pools.blue]\nbackends = [\"{backend}\"]\n\n\
         [routing]\nactive = \"blue\"\n\n{}",
        keys.sessions()
    );
    let proxy = TestProxy::start(&config).await;
    let response = get_sse(&client(), &proxy.url("/sse")).await;
    let mut events = Events::new(response);
    assert_eq!(events.next().await, ": hello\n\n");
    let endpoint = events.next().await;
    let token = endpoint
        .strip_prefix("event: endpoint\ndata: /messages/?session_id=")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("{endpoint:?}"));
    let sealer = switchyard::mcp::seal::Sealer::new(&[switchyard::mcp::seal::SealKey::parse(
        KEY_1,
    )
    .unwrap()])
    .unwrap();
    let opened = sealer.open(token).unwrap();
    assert_eq!(opened.id, "py-raw-1");
    assert_eq!(opened.owner, backend.to_string());
    assert_eq!(events.next().await, "data: after\n\n");
}

/// With health probes on, an address DNS newly reveals takes no traffic until its probes pass.
#[tokio::test]
async fn discovered_addresses_join_after_passing_health_checks() {
    let (first, second) = pair_on_one_port().await;
    let port = first.address.port();
    second.set_health(&[503]);
    let (one, two) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    let dns = TestDns::start(&[one]).await;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[pools.fleet]\nbackends = [\"fleet.test:{port}\"]\n\n\
         [routing]\nactive = \"fleet\"\n\n[discovery]\ninterval = \"50ms\"\nresolver = \"{}\"\n\n\
         [health]\ninterval = \"50ms\"\nrise = 2\nfall = 2\n",
        dns.address
    );
    let proxy = TestProxy::start(&config).await;
    dns.set(&[one, two]);
    eventually("the new address is known", WAIT, async || {
        (proxy.state.snapshot().pools[0].members.len() == 2).then_some(())
    })
    .await;
    // Before any probe has judged it, and after several have failed it.
    for round in 0..2 {
        for _ in 0..20 {
            assert_eq!(name_via(&proxy).await, "first", "round {round}");
        }
        eventually("probes of the new address", WAIT, async || {
            (second.probes() >= 3).then_some(())
        })
        .await;
    }
    second.set_health(&[200]);
    eventually("the new address joins once healthy", WAIT, async || {
        (name_via(&proxy).await == "second").then_some(())
    })
    .await;
}

/// Two backends on one port, at 127.0.0.1 and 127.0.0.2, as DNS answers for one name would give:
/// a port free on both, since another test may hold the one picked for 127.0.0.1 on 127.0.0.2.
pub(crate) async fn pair_on_one_port() -> (TestBackend, TestBackend) {
    for _ in 0..20 {
        let first = TestBackend::start("first").await;
        let port = first.address.port();
        if std::net::TcpListener::bind(("127.0.0.2", port)).is_ok() {
            let second = TestBackend::start_on("second", &format!("127.0.0.2:{port}")).await;
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2 in 20 tries");
}
