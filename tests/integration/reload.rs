//! Hot reload, blue/green cutover, drain, and graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::StreamExt;

fn owner_of(session: &str) -> &str {
    session.split('-').next().unwrap()
}

fn pool_of(backend: &str) -> &'static str {
    if backend.starts_with('g') {
        "green"
    } else {
        "blue"
    }
}

#[derive(Default)]
struct Tally {
    calls: AtomicUsize,
    failures: AtomicUsize,
    dropped_streams: AtomicUsize,
    wrong_owner: AtomicUsize,
}

/// A Streamable HTTP session that keeps calling until `stop`; every answer must come from its owner.
async fn streamable_session(
    client: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let init = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(init.status(), 200);
    let session = session_of(&init);
    while !stop.load(Ordering::Relaxed) {
        match client
            .post(&url)
            .header("mcp-session-id", &session)
            .body("{}")
            .send()
            .await
        {
            Ok(reply) if reply.status() == 200 => {
                let body = reply.text().await.unwrap_or_default();
                if body != format!(r#"{{"backend":"{}"}}"#, owner_of(&session)) {
                    tally.wrong_owner.fetch_add(1, Ordering::Relaxed);
                }
                tally.calls.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tally.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A legacy HTTP+SSE session: its GET stream must stay open, and every POST's answer must come
/// back on it.
async fn legacy_session(
    client: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let LegacySession {
        endpoint,
        session,
        events: mut bytes,
    } = open_legacy(&client, &base).await;
    let mut buffer = String::new();
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        match client
            .post(format!("{base}{endpoint}"))
            .body("1")
            .send()
            .await
        {
            Ok(reply) if reply.status() == 202 => {}
            _ => {
                tally.failures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        // The answer arrives on the stream.
        loop {
            if buffer.matches("event: message").count() > answered {
                answered += 1;
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), bytes.next()).await {
                Ok(Some(Ok(chunk))) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
                _ => {
                    tally.dropped_streams.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        if !buffer.contains(&format!("\"backend\":\"{}\"", owner_of(&session))) {
            tally.wrong_owner.fetch_add(1, Ordering::Relaxed);
        }
        tally.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 200 sessions (half legacy SSE, half Streamable HTTP) call continuously while the config flips
/// blue → green → blue five times in ten seconds: nothing fails, no stream drops, and after each
/// flip new sessions land on the new active pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_flips_under_load_lose_nothing() {
    let blue = [
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    ];
    let green = [
        TestBackend::start("g1").await,
        TestBackend::start("g2").await,
    ];
    let pools = |active: &str| {
        config_for(
            &[
                ("blue", &[&blue[0], &blue[1]]),
                ("green", &[&green[0], &green[1]]),
            ],
            &format!("\"{active}\""),
            "[timeouts]\ndrain = \"60s\"\n",
        )
    };
    let proxy = TestProxy::start(&pools("blue")).await;
    let client = client();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, stop, tally) = (client.clone(), Arc::clone(&stop), Arc::clone(&tally));
        if i % 2 == 0 {
            tasks.push(tokio::spawn(streamable_session(
                client,
                proxy.url("/mcp"),
                stop,
                tally,
            )));
        } else {
            tasks.push(tokio::spawn(legacy_session(
                client,
                proxy.url(""),
                stop,
                tally,
            )));
        }
    }
    // Reloads at fixed instants, 2 s apart: five in ten seconds however long the checks between
    // them take on a loaded machine.
    let started = tokio::time::Instant::now();
    let mut reloaded_at = Vec::new();
    for (flip, active) in ["green", "blue", "green", "blue", "green"]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep_until(started + Duration::from_secs(2 * (flip as u64 + 1))).await;
        reloaded_at.push(tokio::time::Instant::now());
        proxy.reload(&pools(active)).await.unwrap();
        // New work goes to the new pool at once.
        for _ in 0..4 {
            let session = new_session(&client, &proxy.url("/mcp")).await;
            assert_eq!(
                pool_of(owner_of(&session)),
                active,
                "flip {flip}: new session {session}"
            );
        }
    }
    let window = reloaded_at[4] - reloaded_at[0];
    assert!(
        window <= Duration::from_secs(10),
        "5 reloads took {window:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
    }
    let calls = tally.calls.load(Ordering::Relaxed);
    assert_eq!(tally.failures.load(Ordering::Relaxed), 0, "failed calls");
    assert_eq!(
        tally.dropped_streams.load(Ordering::Relaxed),
        0,
        "dropped streams"
    );
    assert_eq!(
        tally.wrong_owner.load(Ordering::Relaxed),
        0,
        "answers from a stranger"
    );
    assert!(calls > 2000, "only {calls} calls were made");
    assert_eq!(proxy.state.snapshot().generation, 6);
}

/// A bad config is refused whole: syntax errors, unknown pools, invalid addresses. Traffic goes on.
#[tokio::test]
async fn invalid_reload_changes_nothing() {
    let a = TestBackend::start("b1").await;
    let good = config_for(&[("blue", &[&a])], "\"blue\"", "");
    let proxy = TestProxy::start(&good).await;
    let client = client();
    let session = new_session(&client, &proxy.url("/mcp")).await;
    for (bad, why) in [
        (good.replace("[routing]", "[routing"), "syntax"),
        (
            good.replace("active = \"blue\"", "active = \"green\""),
            "`green`",
        ),
        (
            good.replace(&a.address.to_string(), "not-an-address"),
            "needs a port",
        ),
    ] {
        let error = proxy.reload(&bad).await.unwrap_err();
        assert!(error.contains(why) || why == "syntax", "{error}");
        assert!(error.starts_with("test.toml:"), "{error}");
        assert_eq!(proxy.state.snapshot().generation, 1, "nothing changed");
        let reply = post_in_session(&client, &proxy.url("/mcp"), &session).await;
        assert_eq!(reply.status(), 200);
    }
}

/// The admin reload endpoint reads the file again, and reports why a bad file was refused.
#[tokio::test]
async fn admin_reload_reports_the_outcome() {
    let a = TestBackend::start("b1").await;
    let b = TestBackend::start("g1").await;
    let text = config_for(&[("blue", &[&a]), ("green", &[&b])], "\"blue\"", "");
    let (path, proxy, shutdown) = proxy_from_file("admin-reload", &text).await;
    let admin = format!("http://{}", proxy.admin().unwrap());
    let client = client();

    std::fs::write(
        &path,
        text.replace("active = \"blue\"", "active = \"green\""),
    )
    .unwrap();
    let reply: serde_json::Value = client
        .post(format!("{admin}/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["reloaded"], true);
    assert_eq!(reply["generation"], 2);

    std::fs::write(
        &path,
        text.replace("active = \"blue\"", "active = \"purple\""),
    )
    .unwrap();
    let response = client.post(format!("{admin}/reload")).send().await.unwrap();
    assert_eq!(response.status(), 422);
    let reply: serde_json::Value = response.json().await.unwrap();
    assert_eq!(reply["reloaded"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("`purple`"),
        "{reply}"
    );
    let status: serde_json::Value = client
        .get(format!("{admin}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["generation"], 2);
    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_reloads_total{outcome=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_reloads_total{outcome=\"success\"} 1"),
        "{metrics}"
    );
    shutdown.cancel();
    proxy.wait().await;
}

/// At the drain deadline, streams still open on the old pool close at an event boundary with a
/// `retry:` hint; the client reconnects to the new pool.
#[tokio::test]
async fn drain_deadline_closes_streams_at_an_event_boundary() {
    let blue = TestBackend::start("b1").await;
    let green = TestBackend::start("g1").await;
    let pools = |active: &str| {
        config_for(
            &[("blue", &[&blue]), ("green", &[&green])],
            &format!("\"{active}\""),
            "[timeouts]\ndrain = \"400ms\"\n",
        )
    };
    let proxy = TestProxy::start(&pools("blue")).await;
    let client = client();
    let stream = get_sse(&client, &proxy.url("/split")).await;
    assert_eq!(blue.requests(), 1);
    let flipped = Instant::now();
    proxy.reload(&pools("green")).await.unwrap();
    let raw = tokio::time::timeout(Duration::from_secs(5), stream.bytes())
        .await
        .unwrap()
        .unwrap();
    let closed_after = flipped.elapsed();
    let raw = String::from_utf8(raw.to_vec()).unwrap();
    assert!(
        closed_after >= Duration::from_millis(400),
        "closed before the deadline: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_secs(2),
        "closed late: {closed_after:?}"
    );
    let retry = raw
        .rfind(": switchyard: stream closed for drain")
        .expect("drain notice");
    assert!(raw.ends_with("retry: 1000\n\n"), "{raw:?}");
    let before = &raw[..retry];
    assert!(before.ends_with("-end\n\n"), "closed mid-event: {raw:?}");
    assert_eq!(
        before.matches("data: part").count(),
        before.matches("-end\n\n").count()
    );
    // The reconnect lands on the new pool.
    let again = get_sse(&client, &proxy.url("/hold")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(green.requests(), 1);
    assert_eq!(proxy.state.metrics.streams_drained.get(), 1);
}

/// A removed backend keeps its sessions until the drain deadline, then they are lost (404).
#[tokio::test]
async fn removed_backend_serves_sessions_until_its_drain_ends() {
    let a = TestBackend::start("b1").await;
    let b = TestBackend::start("b2").await;
    let extra = "[timeouts]\ndrain = \"500ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", extra)).await;
    let client = client();
    let session = new_session(&client, &proxy.url("/mcp")).await;
    proxy
        .reload(&config_for(&[("blue", &[&b])], "\"blue\"", extra))
        .await
        .unwrap();
    let during = post_in_session(&client, &proxy.url("/mcp"), &session).await;
    assert_eq!(during.status(), 200);
    assert_eq!(during.text().await.unwrap(), r#"{"backend":"b1"}"#);
    eventually(
        "session lost after the drain",
        Duration::from_secs(5),
        async || {
            let reply = post_in_session(&client, &proxy.url("/mcp"), &session).await;
            (reply.status() == 404).then_some(())
        },
    )
    .await;
    let fresh = client
        .post(proxy.url("/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(
        fresh.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .starts_with("b2-")
    );
}

/// SIGTERM: readiness fails at once, the in-flight call completes, the process exits 0 within the
/// drain timeout.
#[tokio::test]
async fn sigterm_finishes_in_flight_calls_then_exits_zero() {
    let backend = TestBackend::start("b1").await;
    let path = TempFile::new(
        "sigterm",
        "switchyard.toml",
        &config_for(
            &[("blue", &[&backend])],
            "\"blue\"",
            "[timeouts]\ndrain = \"5s\"\n",
        ),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let pid = child.0.as_ref().unwrap().id();
    let (addresses_tx, addresses_rx) = std::sync::mpsc::channel();
    let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("address=").nth(1) {
                let kind = if line.contains("admin listening") {
                    "admin"
                } else {
                    "proxy"
                };
                let _ =
                    addresses_tx.send((kind, rest.split_whitespace().next().unwrap().to_string()));
            }
        }
    });
    let mut proxy = None;
    let mut admin = None;
    while proxy.is_none() || admin.is_none() {
        let (kind, address) = addresses_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        if kind == "admin" {
            admin = Some(address)
        } else {
            proxy = Some(address)
        }
    }
    let (proxy, admin) = (proxy.unwrap(), admin.unwrap());
    let client = client();
    assert_eq!(
        client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let slow = tokio::spawn({
        let client = client.clone();
        let url = format!("http://{proxy}/slow?ms=1500");
        async move { client.get(url).send().await.unwrap() }
    });
    eventually(
        "slow call reached the backend",
        Duration::from_secs(5),
        async || (backend.requests() == 1).then_some(()),
    )
    .await;
    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    eventually("readyz turns 503", Duration::from_secs(2), async || {
        let ready = client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .ok()?;
        (ready.status() == 503).then_some(())
    })
    .await;
    let reply = slow.await.unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await.unwrap(), "slow");
    let mut process = child.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || process.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        signalled.elapsed()
    );
}

/// Writes `text` to a fresh file for one test (removed when the returned file is dropped) and
/// starts the proxy from it, as `run` does.
pub(crate) async fn proxy_from_file(
    name: &str,
    text: &str,
) -> (
    TempFile,
    switchyard::control::server::Proxy,
    tokio_util::sync::CancellationToken,
) {
    let path = TempFile::new(name, "switchyard.toml", text);
    let config = switchyard::config::Config::load(&path).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let proxy = switchyard::control::server::Proxy::start(config, shutdown.clone())
        .await
        .unwrap();
    (path, proxy, shutdown)
}

/// `switchyard reload` calls the admin API and prints its answer; its exit code tells the outcome.
#[tokio::test]
async fn reload_command_prints_the_outcome() {
    let a = TestBackend::start("b1").await;
    let b = TestBackend::start("g1").await;
    let text = config_for(&[("blue", &[&a]), ("green", &[&b])], "\"blue\"", "");
    let (path, proxy, shutdown) = proxy_from_file("reload-cli", &text).await;
    let admin = proxy.admin().unwrap().to_string();
    let run = |admin: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["reload", "--admin", &admin])
                .output()
                .unwrap()
        })
    };

    std::fs::write(
        &path,
        text.replace("active = \"blue\"", "active = \"green\""),
    )
    .unwrap();
    let output = run(admin.clone()).await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["reloaded"], true);
    assert_eq!(answer["generation"], 2);

    std::fs::write(
        &path,
        text.replace("active = \"blue\"", "active = \"purple\""),
    )
    .unwrap();
    let output = run(admin).await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["reloaded"], false);
    assert!(
        answer["error"].as_str().unwrap().contains("`purple`"),
        "{answer}"
    );
    assert_eq!(proxy.state().snapshot().generation, 2);

    // Nobody listening: a clear error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let output = run(closed).await.unwrap();
    assert_ne!(output.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot connect to the admin listener")
    );
    shutdown.cancel();
    proxy.wait().await;
}

/// With `watch_interval` set, editing the file reloads it; a broken edit is refused and counted.
#[tokio::test]
async fn watched_config_file_reloads_on_change() {
    let a = TestBackend::start("b1").await;
    let b = TestBackend::start("g1").await;
    let text = config_for(
        &[("blue", &[&a]), ("green", &[&b])],
        "\"blue\"",
        "[reload]\nwatch_interval = \"50ms\"\n",
    );
    let (path, proxy, shutdown) = proxy_from_file("watch", &text).await;
    let state = std::sync::Arc::clone(proxy.state());
    std::fs::write(
        &path,
        text.replace("active = \"blue\"", "active = \"green\""),
    )
    .unwrap();
    eventually(
        "the edit is picked up",
        Duration::from_secs(5),
        async || (state.snapshot().generation == 2).then_some(()),
    )
    .await;
    let client = client();
    let init = client
        .post(format!("http://{}/mcp", proxy.listeners()[0]))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(
        init.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .starts_with("g1-")
    );

    std::fs::write(&path, "[[listener]\n").unwrap();
    let failures = || {
        state
            .metrics
            .reloads
            .get_or_create(&switchyard::metrics::OutcomeLabels { outcome: "failure" })
            .get()
    };
    eventually(
        "the broken edit is refused",
        Duration::from_secs(5),
        async || (failures() == 1).then_some(()),
    )
    .await;
    assert_eq!(
        state.snapshot().generation,
        2,
        "the last good config stays in force"
    );
    shutdown.cancel();
    proxy.wait().await;
}

/// A canary is one line: `active = { blue = 90, green = 10 }` sends about a tenth of new sessions
/// to green, while every session keeps reaching its owner.
#[tokio::test]
async fn canary_split_sends_its_share_of_new_sessions() {
    let blue = TestBackend::start("b1").await;
    let green = TestBackend::start("g1").await;
    let proxy = TestProxy::start(&config_for(
        &[("blue", &[&blue]), ("green", &[&green])],
        "{ blue = 90, green = 10 }",
        "",
    ))
    .await;
    let client = client();
    let url = proxy.url("/mcp");
    let mut on_green = 0;
    for _ in 0..500 {
        let session = new_session(&client, &url).await;
        if pool_of(owner_of(&session)) == "green" {
            on_green += 1;
        }
        let reply = post_in_session(&client, &url, &session).await;
        let body = reply.text().await.unwrap();
        assert_eq!(body, format!(r#"{{"backend":"{}"}}"#, owner_of(&session)));
    }
    assert!((25..=75).contains(&on_green), "{on_green} of 500 on green");
}
