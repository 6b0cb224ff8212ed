//! Micro-benchmarks of the per-request decisions: route matching, backend choice, session lookup,
//! SSE scanning; and of the upstream HTTP/1.1 client: head parsing and writing, chunk decoding,
//! pool check-out and check-in.
//!
//! `cargo bench --bench micro` (add `-- --quick` for a short run).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchyard::mcp::session::SessionTable;
use switchyard::mcp::sse::{BoundaryTracker, EndpointScanner};
use switchyard::upstream::backend::{Backend, PoolLimits};
use switchyard::upstream::balance::{Member, client_hash, pick_by_hash, pick_least_loaded};
use switchyard::upstream::h1::H1Conn;
use switchyard::upstream::h1::chunked::ChunkDecoder;
use switchyard::upstream::h1::codec::{AddedFields, RequestFraming, encode_head, parse_head};
use switchyard::upstream::h1::io::Io;
use tokio_util::sync::CancellationToken;

fn members(count: usize) -> Vec<Member> {
    let root = CancellationToken::new();
    (0..count)
        .map(|i| {
            let address = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1);
            Member::new(
                Backend::new(&address, &root).unwrap(),
                1 + (i % 3) as u32,
                "p",
            )
        })
        .collect()
}

fn balance(c: &mut Criterion) {
    let mut group = c.benchmark_group("balance");
    for count in [3, 16, 100] {
        let pool = members(count);
        let clients: Vec<u64> = (0..1024u32)
            .map(|i| client_hash(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919))))
            .collect();
        group.bench_with_input(BenchmarkId::new("pick_by_hash", count), &pool, |b, pool| {
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % clients.len();
                pick_by_hash(pool, black_box(clients[next]), |backend| {
                    backend.takes_new_work()
                })
                .map(|m| Arc::as_ptr(&m.backend))
            });
        });
        group.bench_with_input(
            BenchmarkId::new("pick_least_loaded", count),
            &pool,
            |b, pool| {
                b.iter(|| {
                    pick_least_loaded(black_box(pool), |backend| backend.takes_new_work())
                        .map(|m| Arc::as_ptr(&m.backend))
                });
            },
        );
    }
    group.finish();
}

fn sessions(c: &mut Criterion) {
    let mut group = c.benchmark_group("session");
    for size in [1_000usize, 100_000] {
        let table = SessionTable::new(size * 2);
        let owner: Arc<str> = Arc::from("10.0.0.1:8080");
        let ids: Vec<String> = (0..size)
            .map(|i| {
                format!(
                    "{:032x}",
                    (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                )
            })
            .collect();
        for id in &ids {
            table.learn(id, &owner);
        }
        group.bench_with_input(BenchmarkId::new("owner_hit", size), &ids, |b, ids| {
            let mut next = 0;
            b.iter(|| {
                next = (next + 7) % ids.len();
                table.owner(black_box(&ids[next]))
            });
        });
        group.bench_with_input(BenchmarkId::new("owner_miss", size), &size, |b, _| {
            b.iter(|| table.owner(black_box("0000000000000000ffffffffffffffff")));
        });
    }
    group.finish();
}

fn sse(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse");
    // A busy stream: 64 KiB of typical MCP events, fed in 1.5 KiB chunks as a socket delivers them.
    let event = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":42}}\n\n";
    let stream: Vec<u8> = event.iter().copied().cycle().take(64 * 1024).collect();
    let chunks: Vec<&[u8]> = stream.chunks(1500).collect();
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("boundary_tracker_64KiB", |b| {
        b.iter(|| {
            let mut tracker = BoundaryTracker::default();
            for chunk in &chunks {
                tracker.observe(black_box(chunk));
            }
            tracker.at_boundary()
        });
    });
    // The legacy head: comments first, then the endpoint event split over small chunks.
    let head = b": welcome\n\nevent: endpoint\ndata: /messages/?session_id=0123456789abcdef0123456789abcdef\n\n";
    group.throughput(Throughput::Bytes(head.len() as u64));
    group.bench_function("endpoint_scanner_head_16B_chunks", |b| {
        b.iter(|| {
            let mut scanner = EndpointScanner::default();
            let mut found = None;
            for chunk in head.chunks(16) {
                found = found.or(scanner.feed(black_box(chunk)));
            }
            found
        });
    });
    // Worst case: a stream that never sends an endpoint event, scanned until the 8 KiB limit.
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("endpoint_scanner_no_endpoint_64KiB", |b| {
        let comments: Vec<u8> = b": tick\n"
            .iter()
            .copied()
            .cycle()
            .take(64 * 1024)
            .collect();
        b.iter(|| {
            let mut scanner = EndpointScanner::default();
            for chunk in comments.chunks(1500) {
                if scanner.feed(black_box(chunk)).is_some() || scanner.is_done() {
                    break;
                }
            }
            scanner.is_done()
        });
    });
    group.finish();
}

/// A config with 10 services by host (each with an API prefix and a catch-all), 10 by prefix on
/// any host, and a wildcard: the route table a multi-service proxy holds.
fn routed_config() -> switchyard::config::LoadedConfig {
    let mut text = String::from(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n",
    );
    for i in 0..10 {
        text.push_str(&format!(
            "[[route]]\nhosts = [\"svc{i}.example.com\"]\nactive = \"p\"\n\
             [[route]]\nhosts = [\"svc{i}.example.com\"]\nprefix = \"/api/v{i}/\"\nactive = \"p\"\n\
             [[route]]\nprefix = \"/service{i}/\"\nstrip_prefix = true\nactive = \"p\"\n"
        ));
    }
    text.push_str("[[route]]\nhosts = [\"*.example.org\"]\nactive = \"p\"\n");
    let config = switchyard::config::Config::parse(&text, std::path::Path::new("b.toml")).unwrap();
    switchyard::config::LoadedConfig::from_config(config).unwrap()
}

fn routes(c: &mut Criterion) {
    let snapshot = switchyard::state::Snapshot::build(
        routed_config(),
        None,
        &CancellationToken::new(),
        std::time::Instant::now(),
    );
    let mut group = c.benchmark_group("route");
    let cases = [
        (
            "exact_host_prefix",
            Some("SVC7.example.com:8443"),
            "/api/v7/mcp",
        ),
        (
            "any_host_prefix",
            Some("127.0.0.1:8080"),
            "/service9/messages",
        ),
        ("wildcard_host", Some("eu.mcp.example.org"), "/mcp"),
        ("no_route", Some("nobody.example.net"), "/elsewhere"),
    ];
    for (name, host, path) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                snapshot
                    .route(black_box(host), black_box(path))
                    .map(|r| r.pools.len())
            });
        });
    }
    group.finish();
}

/// Response heads as MCP servers send them: a JSON answer and an SSE stream.
const JSON_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
    content-length: 220\r\nmcp-session-id: 0123456789abcdef0123456789abcdef\r\n\
    date: Mon, 30 Nov 2026 09:00:00 GMT\r\nx-request-id: 3f1c0e8e-7d1a-4c55-9a3f-2b8f1d7c6e5a\r\n\r\n";
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\
    date: Mon, 30 Nov 2026 09:00:00 GMT\r\n\r\n";

fn h1_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("h1");
    for (name, head) in [("parse_head_json", JSON_HEAD), ("parse_head_sse", SSE_HEAD)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                parse_head(black_box(head), &http::Method::POST)
                    .unwrap()
                    .unwrap()
                    .1
            })
        });
    }
    let (parts, ()) = http::Request::post("/mcp")
        .header(http::header::HOST, "mcp.example.com")
        .header(http::header::USER_AGENT, "mcp-client/1.0")
        .header(http::header::ACCEPT, "application/json, text/event-stream")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("mcp-session-id", "0123456789abcdef0123456789abcdef")
        .body(())
        .unwrap()
        .into_parts();
    // What the proxy adds to every request, beside the header map.
    let mut added = AddedFields::default();
    added.push(&http::header::FORWARDED, b"for=192.0.2.7;proto=http");
    added.push(
        &http::header::HeaderName::from_static("x-forwarded-for"),
        b"192.0.2.7",
    );
    group.bench_function("encode_head", |b| {
        b.iter(|| encode_head(black_box(&parts), &added, RequestFraming::Length(220)).len())
    });
    // 64 KiB in 1 KiB chunks, fed as 16 KiB reads, as a big answer comes.
    let mut wire = Vec::new();
    for _ in 0..64 {
        wire.extend_from_slice(b"400\r\n");
        wire.extend(std::iter::repeat_n(b'x', 1024));
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    group.throughput(Throughput::Bytes(64 * 1024));
    group.bench_function("decode_chunks_64k", |b| {
        b.iter(|| {
            let mut decoder = ChunkDecoder::default();
            let mut buf = BytesMut::new();
            let mut total = 0;
            for read in wire.chunks(16 * 1024) {
                buf.extend_from_slice(read);
                while let Some(data) = decoder.decode(&mut buf).unwrap() {
                    total += data.len();
                }
            }
            assert!(decoder.is_done());
            total
        })
    });
    group.finish();
}

/// Check-out and check-in of one of 64 parked connections (real sockets: check-out asks the
/// socket whether the backend closed it).
fn pool(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = Backend::new("127.0.0.1:1", &CancellationToken::new()).unwrap();
    let limits = PoolLimits {
        max_idle: 64,
        idle_timeout: std::time::Duration::from_secs(60),
    };
    let _peers = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut peers = Vec::new();
        for _ in 0..64 {
            let stream = tokio::net::TcpStream::connect(address).await.unwrap();
            peers.push(listener.accept().await.unwrap().0);
            backend.checkin(H1Conn::new(Io::Plain(stream)), limits);
        }
        peers
    });
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("pool");
    group.bench_function("checkout_checkin_64_parked", |b| {
        let now = tokio::time::Instant::now();
        b.iter(|| {
            let conn = backend.checkout(limits, now).unwrap();
            backend.checkin_at(black_box(conn), limits, now);
        });
    });
    group.bench_function("prune_64_parked", |b| {
        let now = tokio::time::Instant::now();
        b.iter(|| backend.prune_idle(limits, now));
    });
    group.finish();
}

criterion_group!(benches, routes, balance, sessions, sse, h1_codec, pool);
criterion_main!(benches);
