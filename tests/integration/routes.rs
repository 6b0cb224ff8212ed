//! Routes: several services behind one proxy, by path prefix and by host, each with its own
//! blue/green pools and its own flip; prefixes stripped with the legacy endpoint URL put back;
//! Host policies; response header rules; per-route limits; no route → 404.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use futures_util::StreamExt;

/// A service's two fleets.
struct Service {
    name: &'static str,
    blue: TestBackend,
    green: TestBackend,
}

impl Service {
    async fn start(name: &'static str) -> Service {
        Service {
            name,
            blue: TestBackend::start(&format!("{name}blue")).await,
            green: TestBackend::start(&format!("{name}green")).await,
        }
    }

    /// Its pools, named `NAME-blue` and `NAME-green`.
    fn pools(&self) -> String {
        format!(
            "[pools.{n}-blue]\nbackends = [\"{}\"]\n[pools.{n}-green]\nbackends = [\"{}\"]\n",
            self.blue.address,
            self.green.address,
            n = self.name
        )
    }

    /// Its route: `matcher` is the route's `prefix`/`hosts` lines.
    fn route(&self, matcher: &str, colour: &str) -> String {
        format!(
            "[[route]]\nname = \"{n}\"\n{matcher}\npools = [\"{n}-blue\", \"{n}-green\"]\n\
             active = \"{n}-{colour}\"\n",
            n = self.name
        )
    }
}

/// A client that resolves the test host names to loopback.
fn named_client() -> reqwest::Client {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .resolve("alpha.example.com", loopback)
        .resolve("beta.example.com", loopback)
        .resolve("other.example.org", loopback)
        .build()
        .unwrap()
}

/// The backend that minted a test session (`NAME-N` or `NAME-legacy-N`).
fn owner_of(session: &str) -> &str {
    session.split('-').next().unwrap()
}

const PREFIXED: [(&str, &str); 2] = [("github", "/github/"), ("jira", "/jira/")];
const HOSTED: [(&str, &str); 2] = [("alpha", "alpha.example.com"), ("beta", "beta.example.com")];

fn four_services_config(services: &[Service], colours: &[&str]) -> String {
    let mut text =
        String::from("[[listener]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n");
    for (service, colour) in services.iter().zip(colours) {
        text.push_str(&service.pools());
        let matcher = match PREFIXED.iter().find(|(n, _)| *n == service.name) {
            Some((_, prefix)) => format!("prefix = \"{prefix}\"\nstrip_prefix = true"),
            None => {
                let (_, host) = HOSTED.iter().find(|(n, _)| *n == service.name).unwrap();
                format!("hosts = [\"{host}\"]")
            }
        };
        text.push_str(&service.route(&matcher, colour));
    }
    text
}

/// Where a service is reached: under its prefix, or at its host name.
fn base(proxy: &TestProxy, name: &str) -> String {
    match PREFIXED.iter().find(|(n, _)| *n == name) {
        Some((_, prefix)) => proxy.url(prefix.trim_end_matches('/')),
        None => {
            let (_, host) = HOSTED.iter().find(|(n, _)| *n == name).unwrap();
            format!("http://{host}:{}", proxy.address.port())
        }
    }
}

/// One session of each generation through `base`; returns the backends that took them:
/// a Streamable HTTP session, a legacy HTTP+SSE session (its POST answered on its stream), and a
/// session-less (stateless) request.
async fn three_generations(client: &reqwest::Client, base: &str) -> [String; 3] {
    let session = new_session(client, &format!("{base}/mcp")).await;
    let answer = post_in_session(client, &format!("{base}/mcp"), &session).await;
    assert_eq!(answer.status(), 200);
    let streamable = owner_of(&session).to_string();
    assert!(answer.text().await.unwrap().contains(&streamable));

    let mut legacy = open_legacy(client, base).await;
    let origin = reqwest::Url::parse(base).unwrap();
    let post = origin.join(&legacy.endpoint).unwrap();
    let accepted = client.post(post).body("42").send().await.unwrap();
    assert_eq!(accepted.status(), 202, "legacy POST to {}", legacy.endpoint);
    let event = tokio::time::timeout(Duration::from_secs(5), legacy.events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let event = String::from_utf8_lossy(&event).to_string();
    let legacy_owner = owner_of(&legacy.session).to_string();
    assert!(event.contains(&legacy_owner), "{event}");

    let stateless = client
        .post(format!("{base}/mcp"))
        .header("mcp-method", "tools/call")
        .body("{}")
        .send()
        .await
        .unwrap();
    let body = stateless.text().await.unwrap();
    let stateless_owner = body.split('"').nth(3).unwrap().to_string();
    [streamable, legacy_owner, stateless_owner]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_by_prefix_and_host_flip_one_at_a_time() {
    let mut services = Vec::new();
    for name in ["github", "jira", "alpha", "beta"] {
        services.push(Service::start(name).await);
    }
    let blue = ["blue"; 4];
    let proxy = TestProxy::start(&four_services_config(&services, &blue)).await;
    let client = named_client();
    let mut kept = Vec::new();
    for service in &services {
        let base = base(&proxy, service.name);
        let owners = three_generations(&client, &base).await;
        for owner in &owners {
            assert_eq!(owner, &format!("{}blue", service.name), "through {base}");
        }
        kept.push((
            base.clone(),
            new_session(&client, &format!("{base}/mcp")).await,
        ));
    }

    // Flip github alone to green: its new work moves, everything else stays where it was.
    let flipped = four_services_config(&services, &["green", "blue", "blue", "blue"]);
    proxy.reload(&flipped).await.unwrap();
    for service in &services {
        let base = base(&proxy, service.name);
        let colour = if service.name == "github" {
            "green"
        } else {
            "blue"
        };
        for owner in three_generations(&client, &base).await {
            assert_eq!(owner, format!("{}{colour}", service.name), "through {base}");
        }
    }
    // Sessions opened before the flip still reach their owners, blue ones included.
    for (base, session) in &kept {
        let answer = post_in_session(&client, &format!("{base}/mcp"), session).await;
        assert_eq!(answer.status(), 200, "{base}");
        assert!(answer.text().await.unwrap().contains(owner_of(session)));
    }
    // The route a request matched is counted.
    let metrics = get_text(&format!("http://{}/metrics", proxy.admin.unwrap())).await;
    assert!(
        metrics.contains(r#"switchyard_route_requests_total{route="github",status="200"}"#),
        "{metrics}"
    );
}

fn one_prefixed_service(service: &Service, extra: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n{}{}{extra}\n",
        service.pools(),
        service.route("prefix = \"/github/\"\nstrip_prefix = true", "blue"),
    )
}

/// The legacy transport behind a stripped prefix: the endpoint event the client receives names
/// the prefixed URL (relative or absolute from the backend), and the POSTs reach the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_endpoint_gets_the_stripped_prefix_back_sealed_or_not() {
    let service = Service::start("github").await;
    for seal in ["", "[sessions]\nseal = true\n"] {
        let proxy = TestProxy::start(&one_prefixed_service(&service, seal)).await;
        let client = client();
        for query in ["", "?absolute=1"] {
            let stream = get_sse(&client, &proxy.url(&format!("/github/sse{query}"))).await;
            let mut events = stream.bytes_stream();
            let head = String::from_utf8_lossy(&events.next().await.unwrap().unwrap()).to_string();
            let endpoint = head
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap()
                .to_string();
            assert!(
                endpoint.starts_with("/github/messages?sessionId="),
                "seal {seal:?}, {query}: {endpoint}"
            );
            let sealed = !endpoint.contains("githubblue-legacy-");
            assert_eq!(sealed, !seal.is_empty(), "{endpoint}");
            let accepted = client
                .post(proxy.url(&endpoint))
                .body("7")
                .send()
                .await
                .unwrap();
            assert_eq!(accepted.status(), 202);
            let event = String::from_utf8_lossy(&events.next().await.unwrap().unwrap()).to_string();
            assert!(event.contains(r#""backend":"githubblue""#), "{event}");
        }
        proxy.stop().await;
    }
}

/// `host = "backend"` sends the backend its own name: a backend that accepts only its own name
/// (the reference backend on loopback: DNS-rebinding protection) serves a client that used a
/// public name, which `host = "client"` passes through and the backend refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_policies_reach_a_backend_that_checks_host() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let args = switchyard::tools::backend::BackendArgs::new("ref");
    let task = tokio::spawn(switchyard::tools::backend::run(
        listener,
        args,
        stop.clone(),
    ));
    let client = named_client();
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}});
    for (policy, expected) in [("client", 403), ("backend", 200), ("localhost", 200)] {
        let config = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[pools.ref]\nbackends = [\"{backend}\"]\n\
             [[route]]\nhosts = [\"alpha.example.com\"]\nactive = \"ref\"\nhost = \"{policy}\"\n"
        );
        let proxy = TestProxy::start(&config).await;
        let url = format!("http://alpha.example.com:{}/mcp", proxy.address.port());
        let response = client
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "host = {policy}");
        proxy.stop().await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Whatever the policy, `X-Forwarded-Host` carries the name the client used.
#[tokio::test]
async fn forwarded_host_is_the_clients_under_every_policy() {
    let backend = TestBackend::start("h").await;
    for (policy, host) in [
        ("backend", backend.address.to_string()),
        ("mcp.internal", "mcp.internal".to_string()),
        ("client", "alpha.example.com:PORT".to_string()),
    ] {
        let config = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[pools.p]\nbackends = [\"{}\"]\n\
             [[route]]\nhosts = [\"alpha.example.com\"]\nactive = \"p\"\nhost = \"{policy}\"\n",
            backend.address
        );
        let proxy = TestProxy::start(&config).await;
        let port = proxy.address.port();
        let url = format!("http://alpha.example.com:{port}/headers");
        let seen: serde_json::Value = named_client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            seen["host"],
            host.replace("PORT", &port.to_string()),
            "{policy}"
        );
        assert_eq!(
            seen["x-forwarded-host"],
            format!("alpha.example.com:{port}")
        );
        proxy.stop().await;
    }
}

/// Response headers per route, on backend answers and the proxy's own alike; no route: `404`
/// with a small JSON body; per-route body limit and response timeout.
#[tokio::test]
async fn header_rules_limits_and_no_route() {
    let backend = TestBackend::start("b").await;
    let config = format!(
        r#"[[listener]]
bind = "127.0.0.1:0"
[pools.p]
backends = ["{}"]
[[route]]
name = "browser"
prefix = "/browser/"
strip_prefix = true
active = "p"
max_request_body = 10
timeouts = {{ response = "200ms" }}
[route.response_headers]
set = {{ "Strict-Transport-Security" = "max-age=63072000", "X-Accel-Buffering" = "no" }}
add = {{ "Access-Control-Allow-Origin" = "*" }}
remove = ["cache-control"]
[[route]]
name = "plain"
hosts = ["alpha.example.com"]
prefix = "/echo"
active = "p"
"#,
        backend.address
    );
    let proxy = TestProxy::start(&config).await;
    let client = named_client();
    let stream = get_sse(&client, &proxy.url("/browser/hold")).await;
    let headers = stream.headers();
    assert_eq!(headers["strict-transport-security"], "max-age=63072000");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(!headers.contains_key("cache-control"));
    assert_eq!(headers["content-type"], "text/event-stream");
    drop(stream);
    let lost = post_in_session(&client, &proxy.url("/browser/mcp"), "nobody").await;
    assert_eq!(lost.status(), 404);
    assert_eq!(lost.headers()["access-control-allow-origin"], "*");

    let big = client
        .post(proxy.url("/browser/echo"))
        .body("0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let slow = client
        .get(proxy.url("/browser/slow?ms=1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 504);
    let other = format!("http://alpha.example.com:{}", proxy.address.port());
    let fine = client
        .post(format!("{other}/echo"))
        .body("0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    assert!(!fine.headers().contains_key("strict-transport-security"));

    // No route: a path no route for any host takes, and a host whose own routes do not take
    // the path (it never falls through to the routes for any host).
    for url in [proxy.url("/elsewhere"), format!("{other}/browser/hold")] {
        let missed = client.get(&url).send().await.unwrap();
        assert_eq!(missed.status(), 404, "{url}");
        assert_eq!(missed.headers()["content-type"], "application/json");
        let body: serde_json::Value = missed.json().await.unwrap();
        assert_eq!(body["error"]["status"], 404, "{url}");
    }
}
