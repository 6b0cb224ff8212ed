//! What sets a reload off besides an edit the watcher sees — SIGHUP, `POST /reload` — and how
//! those reloads and the watcher's interact.

use std::time::{Duration, Instant};

use crate::reload::proxy_from_file;
use crate::support::*;

/// A reload by other means (SIGHUP, admin) of an edited file updates what the watcher has seen:
/// the watcher does not load the same file a second time.
#[tokio::test]
async fn watcher_does_not_reload_what_another_reload_applied() {
    let a = TestBackend::start("b1").await;
    let b = TestBackend::start("g1").await;
    let text = config_for(
        &[("blue", &[&a]), ("green", &[&b])],
        "\"blue\"",
        "[reload]\nwatch_interval = \"20ms\"\n",
    );
    let (path, proxy, shutdown) = proxy_from_file("watch-other", &text).await;
    let state = std::sync::Arc::clone(proxy.state());
    let successes = || {
        state
            .metrics
            .reloads
            .get_or_create(&switchyard::metrics::OutcomeLabels { outcome: "success" })
            .get()
    };
    // First an edit the watcher loads, so it is running and has seen a file.
    std::fs::write(&path, format!("{text}\n# first edit\n")).unwrap();
    eventually(
        "the watcher loads the first edit",
        Duration::from_secs(5),
        async || (successes() == 1).then_some(()),
    )
    .await;
    std::fs::write(
        &path,
        text.replace("active = \"blue\"", "active = \"green\""),
    )
    .unwrap();
    switchyard::control::reload::reload_off_runtime(std::sync::Arc::clone(&state))
        .await
        .unwrap();
    let after = successes();
    // Waiting for something not to happen: 25 watcher intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        successes(),
        after,
        "the watcher reloaded the same file again"
    );
    assert_eq!(state.snapshot().generation, 1 + after);
    shutdown.cancel();
    proxy.wait().await;
}

/// An admin reload reads files on a blocking thread: while the config file is slow to read (a
/// FIFO nobody has written yet, standing in for a hung network mount), the runtime keeps serving
/// other requests. The test runtime has one thread, so a reload on it would stall everything.
#[tokio::test]
async fn admin_reload_reads_files_off_the_runtime() {
    let a = TestBackend::start("b1").await;
    let text = config_for(&[("blue", &[&a])], "\"blue\"", "");
    let (path, proxy, shutdown) = proxy_from_file("reload-fifo", &text).await;
    let admin = proxy.admin().unwrap();
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&*path)
        .status()
        .unwrap();
    assert!(made.success());
    let client = client();
    let reload = tokio::spawn({
        let client = client.clone();
        async move {
            let reply = client
                .post(format!("http://{admin}/reload"))
                .send()
                .await
                .unwrap();
            (reply.status(), reply.text().await.unwrap())
        }
    });
    // The slow file: its content arrives only after a second, from a thread of its own.
    let writer = std::thread::spawn({
        let path = path.to_path_buf();
        move || {
            std::thread::sleep(Duration::from_secs(1));
            std::fs::write(&path, text).unwrap();
        }
    });
    let asked = Instant::now();
    let health = client
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        asked.elapsed() < Duration::from_millis(700),
        "a pending reload held up /healthz for {:?}",
        asked.elapsed()
    );
    let (status, body) = reload.await.unwrap();
    assert_eq!(status, 200, "{body}");
    writer.join().unwrap();
    shutdown.cancel();
    proxy.wait().await;
}
