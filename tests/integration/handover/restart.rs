//! `run --upgrade` under load: the new process takes the sockets, the old one drains and exits 0,
//! and no client notices; a new process that fails to start changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::support::{TestBackend, client, config_for, eventually, session_of};

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const DRAIN_RETRY: &str = "retry: 1000\n\n";

/// One config file on two backends, sealed sessions (so any process routes any session) and a
/// one-second drain.
fn write_config(dir: &Path, backends: &[&TestBackend]) -> PathBuf {
    write(&dir.join("seal.keys"), &format!("{KEY}\n"));
    let path = dir.join("switchyard.toml");
    let extra = "[timeouts]\ndrain = \"1s\"\n\n[sessions]\nseal_keys_file = \"seal.keys\"\n";
    write(&path, &config_for(&[("blue", backends)], "\"blue\"", extra));
    path
}

/// Reads an SSE response to its end: `complete` with `expected` events, `drained` when it
/// ended with the drain's `retry:` hint, anything else is a failure.
async fn stream_outcome(
    response: reqwest::Result<reqwest::Response>,
    expected: usize,
) -> &'static str {
    let Ok(response) = response else {
        return "stream refused";
    };
    if response.status() != 200 {
        return "stream status";
    }
    let mut body = String::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(bytes) => body.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => return "stream broken",
        }
    }
    if body.ends_with(DRAIN_RETRY) {
        "drained"
    } else if body.matches("data: ").count() == expected {
        "complete"
    } else {
        "stream truncated"
    }
}

/// Short SSE streams (10 events, 0.4 s) one after the other, and one endless stream that only
/// a drain deadline ends, reopened each time.
fn streaming_load(
    address: SocketAddr,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    tokio::task::JoinHandle<()>,
) {
    let short = (0..2)
        .map(|_| {
            let (stop, tally) = (stop.clone(), tally.clone());
            tokio::spawn(async move {
                let url = format!("http://{address}/ticks?every_ms=40&count=10");
                while !stop.load(Ordering::Relaxed) {
                    let response = client().get(&url).header("accept", "text/event-stream");
                    tally.add(stream_outcome(response.send().await, 10).await);
                }
            })
        })
        .collect();
    let (stop, tally) = (stop.clone(), tally.clone());
    let endless = tokio::spawn(async move {
        let url = format!("http://{address}/split");
        loop {
            let response = client().get(&url).header("accept", "text/event-stream");
            let outcome = stream_outcome(response.send().await, usize::MAX).await;
            tally.add(&format!("endless {outcome}"));
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    });
    (short, endless)
}

/// A sealed Streamable HTTP session calling on a new connection each time; every answer must
/// come from the backend that answered `initialize`.
fn session_load(
    address: SocketAddr,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    let (stop, tally) = (stop.clone(), tally.clone());
    tokio::spawn(async move {
        let url = format!("http://{address}/mcp");
        let client = client();
        let init = client.post(&url).body("{}").send().await.unwrap();
        let session = session_of(&init);
        let owner = init.text().await.unwrap();
        while !stop.load(Ordering::Relaxed) {
            let reply = client
                .post(&url)
                .header("mcp-session-id", &session)
                .body("{}")
                .send()
                .await;
            let outcome = match reply {
                Ok(reply) if reply.status() == 200 => match reply.text().await {
                    Ok(body) if body == owner => "session call",
                    _ => "session wrong answer",
                },
                _ => "session call failed",
            };
            tally.add(outcome);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Upgrades `current` ten times, 600 ms apart, each new process on the same port and taking
/// over from the one before; returns the last process and the old ones' exits.
async fn upgrade_ten_times(
    mut current: Switchyard,
    config: &Path,
    address: SocketAddr,
) -> (Switchyard, Vec<tokio::task::JoinHandle<Option<i32>>>) {
    let started = tokio::time::Instant::now();
    let mut exits = Vec::new();
    for round in 1..=10u32 {
        tokio::time::sleep_until(started + Duration::from_millis(600) * round).await;
        let mut next = Switchyard::run(config, &["--upgrade"]);
        assert_eq!(next.address().await, address, "upgrade {round}: same port");
        let took = next.line("took over the listening sockets", WAIT).await;
        assert_eq!(field(&took, "old"), current.pid.to_string());
        next.line("upgrade socket ready", WAIT).await;
        let old = std::mem::replace(&mut current, next);
        exits.push(tokio::spawn(old.exit(Duration::from_secs(10))));
    }
    // Load on the last process for as long as between two upgrades.
    tokio::time::sleep_until(started + Duration::from_millis(6600)).await;
    (current, exits)
}

/// Ten upgrades in a row, 600 ms apart, under clients that open a new connection per request,
/// sealed sessions and SSE streams: no request fails, no connection is refused or reset, every
/// old process exits 0 on its own, and streams either finish or get `retry:` at the drain
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_upgrades_under_load_lose_nothing() {
    let backends = [
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    ];
    let dir = test_dir("ten");
    let config = write_config(&dir, &[&backends[0], &backends[1]]);
    let mut first = Switchyard::run(&config, &[]);
    let admin: SocketAddr = field(&first.line("admin listening", WAIT).await, "address")
        .parse()
        .unwrap();
    let address = first.address().await;
    first.line("upgrade socket ready", WAIT).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = per_request_load(address, 4, &stop, &tally);
    load.extend((0..4).map(|_| session_load(address, &stop, &tally)));
    let (short_streams, endless) = streaming_load(address, &stop, &tally);
    load.extend(short_streams);

    let (current, exits) = upgrade_ten_times(first, &config, address).await;
    // The admin API moved with the rest: the same address answers, ready.
    let ready = client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
    current.signal("TERM");
    tokio::time::timeout(Duration::from_secs(10), endless)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.exit(Duration::from_secs(10)).await, Some(0));
    for (round, exit) in exits.into_iter().enumerate() {
        assert_eq!(
            exit.await.unwrap(),
            Some(0),
            "old process of upgrade {}",
            round + 1
        );
    }
    let summary = tally.summary();
    eprintln!("ten upgrades: {summary}");
    assert!(tally.get("Answered") >= 300, "too little load: {summary}");
    assert!(
        tally.get("session call") >= 200,
        "too little load: {summary}"
    );
    assert!(tally.get("complete") >= 10, "too few streams: {summary}");
    // The endless stream outlives each process it lands on: their drain deadlines end it with
    // `retry:`, about once every other upgrade, and the last process's at its SIGTERM.
    assert!(tally.get("endless drained") >= 4, "{summary}");
    let good = tally.get("Answered")
        + tally.get("session call")
        + tally.get("complete")
        + tally.get("drained")
        + tally.get("endless drained");
    let total: usize = tally.counts.lock().unwrap().values().sum();
    assert_eq!(
        total, good,
        "failed requests, refusals or resets: {summary}"
    );
}

/// The new process fails to start (its config adds a listener on a busy port) after it has
/// received the sockets: it exits 1, the old one never stops accepting, and nothing is lost. A
/// good upgrade afterwards still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    let backend = TestBackend::start("b1").await;
    let dir = test_dir("failed");
    let config = write_config(&dir, &[&backend]);
    let good = std::fs::read_to_string(&config).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut old = Switchyard::run(&config, &[]);
    let address = old.address().await;
    old.line("upgrade socket ready", WAIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = per_request_load(address, 2, &stop, &tally);

    let busy_address = busy.local_addr().unwrap();
    write(
        &config,
        &format!("{good}\n[[listener]]\nbind = \"{busy_address}\"\n"),
    );
    let mut failed = Switchyard::run(&config, &["--upgrade"]);
    failed
        .line("another process already listens there", WAIT)
        .await;
    assert_eq!(failed.exit(WAIT).await, Some(1));
    let before = tally.get("Answered");
    eventually("the old process keeps answering", WAIT, async || {
        (tally.get("Answered") >= before + 50).then_some(())
    })
    .await;
    assert!(old.running(), "the old process stopped: {}", old.printed());

    write(&config, &good);
    let mut new = Switchyard::run(&config, &["--upgrade"]);
    new.line("took over the listening sockets", WAIT).await;
    assert_eq!(old.exit(WAIT).await, Some(0));
    let before = tally.get("Answered");
    eventually("the new process answers", WAIT, async || {
        (tally.get("Answered") >= before + 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let total: usize = tally.counts.lock().unwrap().values().sum();
    assert_eq!(total, tally.get("Answered"), "{}", tally.summary());
    new.signal("TERM");
    assert_eq!(new.exit(WAIT).await, Some(0));
}

/// A connection accepted before the shutdown whose request comes after it is answered, not
/// dropped: a client with keep-alive off connects, then writes; a signal between the two must
/// not cost it the request.
#[tokio::test]
async fn a_request_sent_just_after_the_shutdown_signal_is_answered() {
    use crate::support::TestProxy;
    let backend = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&backend])], "\"blue\"", "")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    eventually("the proxy serves the connection", WAIT, async || {
        (proxy.state.metrics.connections_open.get() == 1).then_some(())
    })
    .await;
    proxy.shutdown.cancel();
    eventually("the proxy drains", WAIT, async || {
        proxy.state.is_draining().then_some(())
    })
    .await;
    // Whether the server already closed shows only on reading: the write lands in the buffer.
    let _ = stream
        .write_all(b"GET /name HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap();
    assert!(read.is_ok(), "{read:?}");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response:?}");
    assert!(response.ends_with("b1"), "{response:?}");
}
