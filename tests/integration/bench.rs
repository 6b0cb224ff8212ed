//! The benchmark routes of the reference backend and `switchyard loadgen` against them.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::support::{TestProxy, get_text};
use crate::tls::{Pki, tls_line};

/// Serves `switchyard::tools::backend::bench::handle` on a free loopback port until the test ends.
async fn bench_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request| async move {
                    Ok::<_, Infallible>(switchyard::tools::backend::bench::handle(request).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// Runs `switchyard loadgen ARGS`: whether it succeeded, its stdout and its stderr.
async fn run_loadgen(args: &[&str]) -> (bool, Vec<u8>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("loadgen")
        .args(args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), output.stdout, stderr)
}

async fn loadgen(args: &[&str]) -> serde_json::Value {
    let (success, stdout, stderr) = run_loadgen(args).await;
    assert!(success, "{stderr}");
    serde_json::from_slice(&stdout).unwrap()
}

/// Runs a load generator that must fail; its stderr.
async fn loadgen_refused(args: &[&str]) -> String {
    let (success, _, stderr) = run_loadgen(args).await;
    assert!(!success, "{stderr}");
    stderr
}

#[tokio::test]
async fn echo_returns_the_body_and_sse_sends_timestamps() {
    let address = bench_backend().await;
    let client = reqwest::Client::new();
    let echoed = client
        .post(format!("http://{address}/bench/echo"))
        .body(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.headers()["content-type"], "application/json");
    assert_eq!(
        echoed.text().await.unwrap(),
        r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#
    );

    let before = switchyard::tools::backend::bench::micros_since_epoch();
    let stream = client
        .get(format!("http://{address}/bench/sse?every_ms=10&count=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let text = stream.text().await.unwrap();
    let stamps: Vec<u128> = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(|stamp| stamp.parse().unwrap())
        .collect();
    assert_eq!(stamps.len(), 3, "{text:?}");
    assert!(stamps[0] >= before && stamps.windows(2).all(|w| w[0] < w[1]));

    let missing = client
        .get(format!("http://{address}/bench/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// Streams opened together send their first event at once by default; with `phase=random`
/// each picks its own moment in the period, so twenty streams do not all send in the same
/// 100 ms.
#[tokio::test]
async fn a_random_phase_spreads_the_first_events_of_streams_opened_together() {
    let address = bench_backend().await;
    let first_stamps = |query: &'static str| async move {
        let url = format!("http://{address}/bench/sse?{query}");
        let streams = (0..20).map(|_| async {
            let text = get_text(&url).await;
            let stamp = text.strip_prefix("data: ").unwrap().trim_end();
            stamp.parse::<u128>().unwrap()
        });
        futures_util::future::join_all(streams).await
    };
    let spread = |stamps: &[u128]| stamps.iter().max().unwrap() - stamps.iter().min().unwrap();
    let aligned = first_stamps("every_ms=1000&count=1").await;
    assert!(spread(&aligned) < 500_000, "{aligned:?}");
    let random = first_stamps("every_ms=1000&count=1&phase=random").await;
    assert!(spread(&random) >= 100_000, "{random:?}");
}

#[tokio::test]
async fn loadgen_measures_posts_open_loop_and_sse_delivery() {
    let address = bench_backend().await;
    let post = loadgen(&[
        "post",
        "--url",
        &format!("http://{address}/bench/echo"),
        "--connections",
        "4",
        "--rate",
        "400",
        "--seconds",
        "0.5",
        "--warmup",
        "0.1",
        "--label",
        "t",
    ])
    .await;
    assert_eq!(post["mode"], "post");
    assert_eq!(post["label"], "t");
    assert_eq!(post["errors"], 0);
    // Open loop: about rate × seconds requests, never many more.
    let ok = post["ok"].as_u64().unwrap();
    assert!((100..=220).contains(&ok), "{post}");
    assert!(post["p99_us"].as_u64().unwrap() >= post["p50_us"].as_u64().unwrap());

    let sse = loadgen(&[
        "sse",
        "--url",
        &format!("http://{address}/bench/sse?every_ms=20"),
        "--streams",
        "5",
        "--seconds",
        "0.5",
        "--warmup",
        "0.1",
        "--watch-pid",
        &std::process::id().to_string(),
    ])
    .await;
    assert_eq!(sse["streams_open"], 5, "{sse}");
    assert!(sse["events"].as_u64().unwrap() >= 5 * 10, "{sse}");
    assert!(sse["watched_rss_kib"].as_u64().unwrap() > 0, "{sse}");
    // The warm figure is taken after one stream was opened and closed, before the others.
    assert!(sse["watched_rss_kib_warm"].as_u64().unwrap() > 0, "{sse}");
    assert!(sse["rss_bytes_per_stream_warm"].is_u64(), "{sse}");
}

#[tokio::test]
async fn loadgen_holds_idle_keep_alive_connections_and_counts_their_memory() {
    let address = bench_backend().await;
    let idle = loadgen(&[
        "idle",
        "--url",
        &format!("http://{address}/bench/echo"),
        "--connections",
        "20",
        "--warmup",
        "0.1",
        "--settle",
        "0.1",
        "--watch-pid",
        &std::process::id().to_string(),
    ])
    .await;
    assert_eq!(idle["mode"], "idle");
    assert_eq!(idle["connections_open"], 20, "{idle}");
    assert_eq!(idle["connections_failed"], 0, "{idle}");
    assert!(idle["rss_bytes_per_connection"].is_u64(), "{idle}");
    // The backend keeps them open: all still there for the second sample.
    assert_eq!(idle["connections_open_settled"], 20, "{idle}");
    assert!(idle["rss_bytes_per_connection_settled"].is_u64(), "{idle}");

    // Every POST refused: nothing to measure, and the run says why.
    let missing = format!("http://{address}/no-such-route");
    let stderr = loadgen_refused(&["idle", "--url", &missing, "--connections", "3"]).await;
    assert!(
        stderr.contains("every connection failed; first error: status 404"),
        "{stderr}"
    );
}

/// `loadgen sse` over TLS (`--ca`): the streams go through a TLS listener of the proxy.
#[tokio::test]
async fn loadgen_opens_sse_streams_over_tls() {
    let address = bench_backend().await;
    let pki = Pki::new("loadgen-sse");
    let leaf = pki.leaf("localhost", &["localhost"]);
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n{}\n\n[pools.bench]\nbackends = [\"{address}\"]\n\n\
         [routing]\nactive = \"bench\"\n",
        tls_line(&leaf)
    );
    let proxy = TestProxy::start(&config).await;
    let sse = loadgen(&[
        "sse",
        "--url",
        &format!("https://{}/bench/sse?every_ms=20", proxy.address),
        "--ca",
        pki.ca_path().to_str().unwrap(),
        "--streams",
        "3",
        "--seconds",
        "0.5",
        "--warmup",
        "0.1",
    ])
    .await;
    assert_eq!(sse["streams_open"], 3, "{sse}");
    assert_eq!(sse["streams_failed"], 0, "{sse}");
    assert!(sse["events"].as_u64().unwrap() >= 3 * 10, "{sse}");
}

/// A target that cannot work is refused at once, not after the run: a dead address, and an
/// `https://` URL (loadgen speaks plain HTTP; `loadgen tls` measures handshakes).
#[tokio::test]
async fn loadgen_refuses_a_dead_target_or_an_https_url_at_once() {
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = unused.local_addr().unwrap();
    drop(unused);
    let dead = format!("http://{address}/bench/echo");
    let https = format!("https://{address}/bench/echo");
    for (url, expected) in [
        (dead.as_str(), format!("cannot connect to {address}: ")),
        (
            https.as_str(),
            format!("{https}: this mode speaks http:// only; give the address of a plain listener"),
        ),
    ] {
        let started = std::time::Instant::now();
        let stderr = loadgen_refused(&[
            "post",
            "--url",
            url,
            "--connections",
            "1",
            "--seconds",
            "30",
            "--warmup",
            "0",
        ])
        .await;
        assert!(
            stderr.starts_with(&format!("switchyard: {expected}")),
            "{stderr}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "refused only after {:?}",
            started.elapsed()
        );
    }
}
