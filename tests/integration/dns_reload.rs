//! A reload that adds DNS names resolves them before the new snapshot is swapped in, so a pool
//! of new names serves from the first request after the reload returns.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard::control::reload::reload_off_runtime;

use crate::reload::proxy_from_file;
use crate::scale::TestDns;
use crate::support::{TestBackend, TestProxy, client, eventually, get_text};

/// The blue pool by address, and discovery on (with an interval long enough that only a reload
/// can be what resolves a new name in time).
fn config(blue: &TestBackend, dns: &TestDns, fleet: Option<(u16, &str)>) -> String {
    let (pool, active) = match fleet {
        Some((port, active)) => (
            format!("[pools.fleet]\nbackends = [\"fleet.test:{port}\"]\n\n"),
            active,
        ),
        None => (String::new(), "blue"),
    };
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [pools.blue]\nbackends = [\"{}\"]\n\n{pool}[routing]\nactive = \"{active}\"\n\n\
         [discovery]\ninterval = \"1h\"\nresolver = \"{}\"\n",
        blue.address, dns.address
    )
}

/// Fails on a build that swaps the pool in empty and leaves the name to the discovery task: the
/// nameserver takes 300 ms to answer, so the first request finds no backend (503).
#[tokio::test]
async fn admin_reload_resolves_a_new_name_before_the_swap() {
    let blue = TestBackend::start("blue").await;
    let fleet = TestBackend::start("fleet").await;
    let dns = TestDns::start(&[Ipv4Addr::LOCALHOST]).await;
    dns.delay_ms.store(300, Ordering::SeqCst);
    let text = config(&blue, &dns, None);
    let (path, proxy, shutdown) = proxy_from_file("dns-reload", &text).await;
    let base = format!("http://{}", proxy.listeners()[0]);
    assert_eq!(get_text(&format!("{base}/name")).await, "blue");

    let port = fleet.address.port();
    std::fs::write(&path, config(&blue, &dns, Some((port, "fleet")))).unwrap();
    let admin = format!("http://{}", proxy.admin().unwrap());
    let reply = client()
        .post(format!("{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let first = client().get(format!("{base}/name")).send().await.unwrap();
    assert_eq!(first.status(), 200, "the first request after the reload");
    assert_eq!(first.text().await.unwrap(), "fleet");
    shutdown.cancel();
    proxy.wait().await;
}

/// A name that does not resolve: a reload that would leave a route nothing to serve from is
/// refused (and says which name); one that only adds a standby pool applies, the pool empty
/// until the name resolves.
#[tokio::test]
async fn a_new_name_that_does_not_resolve() {
    let blue = TestBackend::start("blue").await;
    let fleet = TestBackend::start("fleet").await;
    let dns = TestDns::start(&[Ipv4Addr::LOCALHOST]).await;
    dns.failing.store(true, Ordering::SeqCst);
    let proxy = TestProxy::start(&config(&blue, &dns, None)).await;
    let port = fleet.address.port();

    let refused = proxy
        .reload(&config(&blue, &dns, Some((port, "fleet"))))
        .await
        .unwrap_err();
    assert!(refused.contains("fleet.test"), "{refused}");
    assert_eq!(proxy.state.snapshot().generation, 1);
    assert_eq!(get_text(&proxy.url("/name")).await, "blue");

    let generation = proxy
        .reload(&config(&blue, &dns, Some((port, "blue"))))
        .await
        .unwrap();
    assert_eq!(generation, 2);
    let snapshot = proxy.state.snapshot();
    let pool = snapshot.pools.iter().find(|p| &*p.name == "fleet").unwrap();
    assert!(pool.members.is_empty());
    assert_eq!(get_text(&proxy.url("/name")).await, "blue");
}

/// Two reloads at once (an admin call while a SIGHUP's reload waits on a slow nameserver): the
/// file as the later one read it is what stays in force. Fails on a build that runs reloads side
/// by side: the later one, with no name to resolve, commits first, and the earlier one then swaps
/// in the file as it was before the edit.
#[tokio::test]
async fn overlapping_reloads_leave_the_newest_file_in_force() {
    let blue = TestBackend::start("blue").await;
    let fleet = TestBackend::start("fleet").await;
    let dns = TestDns::start(&[Ipv4Addr::LOCALHOST]).await;
    dns.delay_ms.store(1_000, Ordering::SeqCst);
    let (path, proxy, shutdown) = proxy_from_file("dns-overlap", &config(&blue, &dns, None)).await;
    let base = format!("http://{}", proxy.listeners()[0]);
    let state = Arc::clone(proxy.state());

    let port = fleet.address.port();
    std::fs::write(&path, config(&blue, &dns, Some((port, "fleet")))).unwrap();
    let earlier = tokio::spawn(reload_off_runtime(Arc::clone(&state)));
    // It has read the file once its new name reaches the nameserver.
    eventually(
        "the first reload's query",
        Duration::from_secs(10),
        async || (dns.queries() > 0).then_some(()),
    )
    .await;
    std::fs::write(&path, config(&blue, &dns, None)).unwrap();
    let later = reload_off_runtime(Arc::clone(&state)).await.unwrap();
    let earlier = earlier.await.unwrap().unwrap();

    assert!(
        later > earlier,
        "generations: earlier {earlier}, later {later}"
    );
    let snapshot = state.snapshot();
    assert!(snapshot.pools.iter().all(|p| &*p.name != "fleet"));
    assert_eq!(get_text(&format!("{base}/name")).await, "blue");
    shutdown.cancel();
    proxy.wait().await;
}
