//! Upstream health end to end: probes, passive ejection, readiness, streams of dying backends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::StreamExt;
use switchyard::upstream::backend::Backend;
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(10);

/// One active pool `blue` of `backends`, plus `extra` TOML (a `[health]` table, timeouts, …).
fn config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [pools.blue]\nbackends = [{}]\n\n[routing]\nactive = \"blue\"\n\n{extra}\n",
        list.join(", ")
    )
}

fn backend(proxy: &TestProxy, address: SocketAddr) -> Arc<Backend> {
    let snapshot = proxy.state.snapshot();
    Arc::clone(snapshot.backends.get(address.to_string().as_str()).unwrap())
}

/// An `initialize` of the load: when it started, its status, its session.
type Placed = (Instant, u16, Option<String>);

fn owner_of(session: &str) -> &str {
    session.split('-').next().unwrap()
}

/// `initialize` through the proxy: the status and, on success, the new session id.
async fn initialize(client: &reqwest::Client, proxy: &TestProxy) -> (u16, Option<String>) {
    let reply = client
        .post(proxy.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let session = reply
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    (reply.status().as_u16(), session)
}

async fn metrics(proxy: &TestProxy) -> String {
    get_text(&proxy.admin_url("/metrics")).await
}

/// Kill one of three backends under load: probes find it within `fall × interval` plus one
/// interval, no new session goes there after that, its sessions get `404` and re-initialise
/// elsewhere, the other backends' sessions lose nothing; restarted, it gets new sessions again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_routed_around_and_comes_back() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let b3 = TestBackend::start("b3").await;
    let (interval, fall) = (Duration::from_millis(100), 2);
    // Passive detection off: the bound under test is the probes' (it has its own test).
    let health = "[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n\
                  max_fails = 0\n";
    let proxy = TestProxy::start(&config(&[b1.address, b2.address, b3.address], health)).await;
    let client = client();

    let mut sessions: Vec<String> = Vec::new();
    for _ in 0..300 {
        let (status, session) = initialize(&client, &proxy).await;
        assert_eq!(status, 200);
        sessions.push(session.unwrap());
        let on = |name| sessions.iter().filter(|s| owner_of(s) == name).count();
        if ["b1", "b2", "b3"].iter().all(|name| on(*name) >= 2) {
            break;
        }
    }
    let (doomed, survivors): (Vec<String>, Vec<String>) =
        sessions.into_iter().partition(|s| owner_of(s) == "b3");
    assert!(doomed.len() >= 2 && survivors.len() >= 4);

    // Load: the survivors' sessions, and new sessions, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let session_failures = Arc::new(AtomicUsize::new(0));
    let session_requests = Arc::new(AtomicUsize::new(0));
    let inits: Arc<Mutex<Vec<Placed>>> = Arc::default();
    let mut load = Vec::new();
    for worker in 0..2 {
        let (client, stop, url) = (client.clone(), Arc::clone(&stop), proxy.url("/mcp"));
        let (failures, requests) = (Arc::clone(&session_failures), Arc::clone(&session_requests));
        let survivors = survivors.clone();
        load.push(tokio::spawn(async move {
            let mut turn = worker;
            while !stop.load(Ordering::SeqCst) {
                let session = &survivors[turn % survivors.len()];
                turn += 1;
                let reply = client
                    .post(&url)
                    .header("mcp-session-id", session)
                    .body("{}")
                    .send()
                    .await;
                let ok = match reply {
                    Ok(reply) if reply.status() == 200 => reply
                        .text()
                        .await
                        .is_ok_and(|body| body.contains(owner_of(session))),
                    _ => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                requests.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    {
        let (client, stop, inits) = (client.clone(), Arc::clone(&stop), Arc::clone(&inits));
        let url = proxy.url("/mcp");
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let reply = client.post(&url).body("{}").send().await.unwrap();
                let session = reply
                    .headers()
                    .get("mcp-session-id")
                    .map(|v| v.to_str().unwrap().to_string());
                inits
                    .lock()
                    .unwrap()
                    .push((started, reply.status().as_u16(), session));
            }
        }));
    }
    eventually("load is flowing", WAIT, async || {
        (session_requests.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await;

    let dead = backend(&proxy, b3.address);
    let killed = Instant::now();
    b3.kill();
    eventually("b3 marked unhealthy", WAIT, async || {
        (!dead.is_healthy()).then_some(())
    })
    .await;
    let detected = killed.elapsed();
    eprintln!("killed backend marked unhealthy after {detected:?}");
    // The issue's bound, plus scheduling slack for a loaded CI machine.
    let bound = interval * (fall + 1);
    assert!(
        detected <= bound + Duration::from_millis(250),
        "took {detected:?}"
    );
    let settled = killed + bound + Duration::from_millis(250);
    eventually("new sessions placed after detection", WAIT, async || {
        let inits = inits.lock().unwrap();
        (inits.iter().filter(|(at, ..)| *at > settled).count() >= 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(session_failures.load(Ordering::SeqCst), 0);
    for (at, status, session) in inits
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, ..)| *at > settled)
    {
        assert_eq!(
            *status,
            200,
            "initialize at {:?}",
            at.duration_since(killed)
        );
        assert_ne!(owner_of(session.as_deref().unwrap()), "b3");
    }

    // The dead backend's sessions: 404 with a JSON-RPC error, then a fresh session elsewhere.
    for session in &doomed {
        let reply = post_in_session(&client, &proxy.url("/mcp"), session).await;
        assert_eq!(reply.status(), 404);
        let body: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["error"]["code"], -32001);
        let (status, session) = initialize(&client, &proxy).await;
        assert_eq!(status, 200);
        assert_ne!(owner_of(&session.unwrap()), "b3");
    }

    // Back on the same address: `rise` passing probes, then new sessions again.
    let revived = TestBackend::start_on("b3", b3.address).await;
    eventually("b3 healthy again", WAIT, async || {
        dead.is_healthy().then_some(())
    })
    .await;
    assert!(
        revived.probes() >= 2,
        "healthy after {} probes",
        revived.probes()
    );
    eventually("a new session lands on b3", WAIT, async || {
        let (status, session) = initialize(&client, &proxy).await;
        assert_eq!(status, 200);
        (owner_of(&session.unwrap()) == "b3").then_some(())
    })
    .await;
    let text = metrics(&proxy).await;
    let label = format!("backend=\"{}\",to=\"unhealthy\"", b3.address);
    assert!(text.contains(&label), "{text}");
}

/// A backend that accepts connections but never answers is found by the probe timeout, and
/// new work avoids it.
#[tokio::test]
async fn silent_backend_is_detected_by_probe_timeout() {
    let a = TestBackend::start("b1").await;
    let silent = SilentBackend::start().await;
    let health = "[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\n";
    let proxy = TestProxy::start(&config(&[a.address, silent.address], health)).await;
    let hung = backend(&proxy, silent.address);
    eventually("silent backend marked unhealthy", WAIT, async || {
        (!hung.is_healthy()).then_some(())
    })
    .await;
    let text = metrics(&proxy).await;
    let label = format!("backend=\"{}\",outcome=\"timeout\"", silent.address);
    assert!(text.contains(&label), "{text}");
    let client = client();
    for _ in 0..10 {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.post(proxy.url("/mcp")).body("{}").send(),
        )
        .await
        .expect("no request waits on the silent backend")
        .unwrap();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text().await.unwrap(), r#"{"backend":"b1"}"#);
    }
    let status: serde_json::Value = client
        .get(proxy.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = status["pools"][0]["backends"].as_array().unwrap();
    let entry = listed
        .iter()
        .find(|b| b["address"] == silent.address.to_string())
        .unwrap();
    assert_eq!(entry["healthy"], false);
}

/// Alternating probe results never make a streak of `fall` (or `rise`): routing holds still.
#[tokio::test]
async fn flapping_backend_does_not_flap_routing() {
    let a = TestBackend::start("b1").await;
    let b = TestBackend::start("b2").await;
    let health = "[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
    let proxy = TestProxy::start(&config(&[a.address, b.address], health)).await;
    let flapper = backend(&proxy, a.address);
    let transitions = async || {
        let text = metrics(&proxy).await;
        text.lines()
            .filter(|l| {
                l.starts_with("switchyard_health_transitions_total")
                    && l.contains(&a.address.to_string())
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };

    a.set_health(&[200, 500]);
    let start = a.probes();
    eventually("a dozen flapping probes", WAIT, async || {
        (a.probes() >= start + 12).then_some(())
    })
    .await;
    assert!(flapper.is_healthy());
    assert_eq!(transitions().await, 0);

    a.set_health(&[500]);
    eventually("steady failures turn it unhealthy", WAIT, async || {
        (!flapper.is_healthy()).then_some(())
    })
    .await;

    a.set_health(&[500, 200]);
    let start = a.probes();
    let client = client();
    while a.probes() < start + 12 {
        let (status, session) = initialize(&client, &proxy).await;
        assert_eq!(status, 200);
        assert_eq!(owner_of(&session.unwrap()), "b2");
        assert!(!flapper.is_healthy());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(transitions().await, 1);

    a.set_health(&[200]);
    eventually("steady passes turn it healthy", WAIT, async || {
        flapper.is_healthy().then_some(())
    })
    .await;
    assert_eq!(transitions().await, 2);
}

/// A backend whose process dies: the client's open stream ends within a second.
#[tokio::test]
async fn stream_to_killed_backend_ends_within_a_second() {
    let a = TestBackend::start("b1").await;
    // Probes far apart: the stream must end because the connection died, not because of them.
    let health = "[health]\ninterval = \"1h\"\n";
    let proxy = TestProxy::start(&config(&[a.address], health)).await;
    let response = get_sse(&client(), &proxy.url("/hold?first=data:hi%0A%0A")).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data:hi\n\n");
    let killed = Instant::now();
    a.kill();
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        // Ends cleanly or with an error; either way the client is told.
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "stream still open {:?} after kill",
        killed.elapsed()
    );
}

/// A backend that fails its probes while its TCP connections live: its SSE streams close at an
/// event boundary with a `retry:` hint, its WebSocket tunnels close.
#[tokio::test]
async fn streams_close_when_backend_turns_unhealthy() {
    let a = TestBackend::start("b1").await;
    let health = "[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nfall = 2\n";
    let proxy = TestProxy::start(&config(&[a.address], health)).await;
    let response = get_sse(&client(), &proxy.url("/hold?first=data:hi%0A%0A")).await;
    assert_eq!(response.status(), 200);

    let (mut socket, head) = websocket_upgrade(proxy.address, "/ws").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let sick = backend(&proxy, a.address);
    eventually("both streams counted", WAIT, async || {
        (sick.open_streams() == 2).then_some(())
    })
    .await;

    a.set_health(&[503]);
    let body = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("SSE stream closed")
        .unwrap();
    assert!(body.starts_with("data:hi\n\n"), "{body}");
    assert!(body.contains("retry: "), "{body}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, socket.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "tunnel still open");
    assert!(!sick.is_healthy());
    eventually("no stream counted", WAIT, async || {
        (sick.open_streams() == 0).then_some(())
    })
    .await;
}

/// A stream stuck in the middle of an event when its backend turns unhealthy ends at once,
/// without a `retry:` line glued to the partial event.
#[tokio::test]
async fn stream_stuck_mid_event_ends_when_backend_turns_unhealthy() {
    let a = TestBackend::start("b1").await;
    let health = "[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nfall = 2\n";
    let proxy = TestProxy::start(&config(&[a.address], health)).await;
    let response = get_sse(&client(), &proxy.url("/hold?first=data:hi%0A%0Adata:par")).await;
    assert_eq!(response.status(), 200);
    let sick = backend(&proxy, a.address);
    eventually("stream counted", WAIT, async || {
        (sick.open_streams() == 1).then_some(())
    })
    .await;
    a.set_health(&[503]);
    let body = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("stream ended")
        .unwrap();
    assert_eq!(body, "data:hi\n\ndata:par");
    assert!(!sick.is_healthy());
}

/// `/readyz` follows the active pool's health; with nothing healthy, new work gets `503` with
/// `Retry-After`, unless `fail_open` sends it to the unhealthy backends anyway.
#[tokio::test]
async fn readiness_and_whole_pool_unhealthy() {
    let a = TestBackend::start("b1").await;
    let health = "[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n";
    let closed = TestProxy::start(&config(&[a.address], health)).await;
    let open_health = format!("{health}fail_open = true\n");
    let open = TestProxy::start(&config(&[a.address], &open_health)).await;
    let client = client();
    let ready = async |proxy: &TestProxy| {
        let reply = client.get(proxy.admin_url("/readyz")).send().await.unwrap();
        (reply.status().as_u16(), reply.text().await.unwrap())
    };
    assert_eq!(ready(&closed).await.0, 200);
    let (status, kept) = initialize(&client, &open).await;
    assert_eq!(status, 200);
    let kept = kept.unwrap();

    a.set_health(&[500]);
    for proxy in [&closed, &open] {
        eventually("readyz turns 503", WAIT, async || {
            let (status, body) = ready(proxy).await;
            (status == 503).then(|| assert!(body.contains("no healthy backend"), "{body}"))
        })
        .await;
    }
    let reply = client
        .post(closed.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 503);
    assert_eq!(reply.headers()["retry-after"], "1");
    // Fail-open: new work and existing sessions still reach the (only) backend.
    let (status, _) = initialize(&client, &open).await;
    assert_eq!(status, 200);
    let reply = post_in_session(&client, &open.url("/mcp"), &kept).await;
    assert_eq!(reply.status(), 200);

    a.set_health(&[200]);
    eventually("ready again", WAIT, async || {
        (ready(&closed).await.0 == 200).then_some(())
    })
    .await;
    let (status, _) = initialize(&client, &closed).await;
    assert_eq!(status, 200);
}

/// Without probes, an ejected backend returns by itself when the ejection ends (nginx style).
#[tokio::test]
async fn without_probes_ejection_ends_by_itself() {
    let dead = TestBackend::start("dead").await;
    let address = dead.address;
    dead.kill();
    eventually("dead backend refuses", WAIT, async || {
        tokio::net::TcpStream::connect(address)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let extra = "[health]\ninterval = \"0s\"\nmax_fails = 1\nejection = \"200ms\"\n";
    let proxy = TestProxy::start(&config(&[address], extra)).await;
    let reply = client()
        .post(proxy.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 502);
    let ejected = backend(&proxy, address);
    assert!(!ejected.is_healthy());
    let reply = client()
        .post(proxy.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 503);
    let _revived = TestBackend::start_on("back", address).await;
    eventually("ejection over", WAIT, async || {
        ejected.is_healthy().then_some(())
    })
    .await;
    let reply = client()
        .post(proxy.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
}

/// Health survives a reload for an address that stays; new backends get probes; removed ones
/// stop being probed once their drain ends.
#[tokio::test]
async fn health_follows_reloads() {
    let a = TestBackend::start("b1").await;
    let b = TestBackend::start("b2").await;
    let c = TestBackend::start("b3").await;
    let health = "[timeouts]\ndrain = \"100ms\"\n\n[health]\ninterval = \"50ms\"\n\
                  timeout = \"200ms\"\nfall = 2\n";
    let proxy = TestProxy::start(&config(&[a.address, b.address], health)).await;
    b.set_health(&[500]);
    let sick = backend(&proxy, b.address);
    eventually("b2 unhealthy", WAIT, async || {
        (!sick.is_healthy()).then_some(())
    })
    .await;

    proxy
        .reload(&config(&[a.address, b.address, c.address], health))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&sick, &backend(&proxy, b.address)));
    assert!(!sick.is_healthy(), "health survives the reload");
    eventually("the new backend is probed", WAIT, async || {
        (c.probes() >= 2).then_some(())
    })
    .await;

    proxy
        .reload(&config(&[a.address, c.address], health))
        .await
        .unwrap();
    eventually("b2 forgotten after its drain", WAIT, async || {
        let snapshot = proxy.state.snapshot();
        (!snapshot
            .backends
            .contains_key(b.address.to_string().as_str()))
        .then_some(())
    })
    .await;
    let (seen_b, seen_c) = (b.probes(), c.probes());
    eventually("c probed five more times", WAIT, async || {
        (c.probes() >= seen_c + 5).then_some(())
    })
    .await;
    // At most a probe already under way when the supervisor noticed.
    assert!(b.probes() <= seen_b + 1, "{} > {}", b.probes(), seen_b + 1);

    // Probes switched off by a reload: no verdict of theirs lingers.
    c.set_health(&[500]);
    let down = backend(&proxy, c.address);
    eventually("b3 unhealthy", WAIT, async || {
        (!down.is_healthy()).then_some(())
    })
    .await;
    proxy
        .reload(&config(&[a.address, c.address], ""))
        .await
        .unwrap();
    eventually("b3 healthy once probes are off", WAIT, async || {
        down.is_healthy().then_some(())
    })
    .await;
}
