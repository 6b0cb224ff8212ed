//! Operating the proxy: Prometheus metrics, JSON access logs, the admin API and its token,
//! drain/undrain by API, and the configs shipped for Docker and Kubernetes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const TOKEN: &str = "ops-test-token-0123456789abcdef";

/// One sample of the Prometheus/OpenMetrics text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format strictly enough to catch a broken encoder: every line is a
/// well-formed comment or sample, every sample belongs to a declared family, and `# EOF` ends it.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "exposition must end with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap());
            assert!(valid_name(name), "bad family name in {line:?}");
            match kind {
                "TYPE" => {
                    let metric_type = words.next().unwrap();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "info",
                            "unknown"
                        ]
                        .contains(&metric_type),
                        "bad type in {line:?}"
                    );
                    families.push(name.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap(), line)),
            None => (series, BTreeMap::new()),
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let declared = families.iter().any(|family| {
            name.strip_prefix(family.as_str()).is_some_and(|suffix| {
                [
                    "", "_total", "_bucket", "_sum", "_count", "_created", "_info",
                ]
                .contains(&suffix)
            })
        });
        assert!(declared, "sample of an undeclared family: {line:?}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_labels(mut text: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (name, rest) = text
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label in {line:?}"));
        assert!(valid_name(name), "bad label name in {line:?}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(name.to_string(), value);
        text = &rest[end + 1..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
    labels
}

/// The sum of samples named `name` whose labels include all of `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(proxy: &TestProxy) -> Vec<Sample> {
    let response = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    parse_exposition(&response.text().await.unwrap())
}

async fn initialize(proxy: &TestProxy) -> String {
    new_session(&client(), &proxy.url("/mcp")).await
}

async fn call(proxy: &TestProxy, session: &str) -> (u16, String) {
    let reply = post_in_session(&client(), &proxy.url("/mcp"), session).await;
    (reply.status().as_u16(), reply.text().await.unwrap())
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let backend = a.address.to_string();
    let before = scrape(&proxy).await;
    let message = [("class", "message"), ("status", "200"), ("pool", "blue")];
    assert_eq!(total(&before, "switchyard_requests_total", &message), 0.0);
    assert_eq!(total(&before, "switchyard_config_generation", &[]), 1.0);
    let labels = [("pool", "blue"), ("backend", backend.as_str())];
    assert_eq!(total(&before, "switchyard_backend_healthy", &labels), 1.0);

    let session = initialize(&proxy).await;
    for _ in 0..3 {
        assert_eq!(call(&proxy, &session).await.0, 200);
    }
    assert_eq!(call(&proxy, "nobody").await.0, 404);
    let stream = get_sse(&client(), &proxy.url("/ticks?count=2&every_ms=10")).await;
    assert_eq!(stream.text().await.unwrap().matches("data:").count(), 2);

    let after = eventually(
        // The stream's connection goes back to the pool just after its last byte.
        "the stream finished and its connection is idle",
        Duration::from_secs(5),
        async || {
            let samples = scrape(&proxy).await;
            let streams = total(
                &samples,
                "switchyard_stream_duration_seconds_count",
                &[("class", "sse")],
            );
            let idle = total(&samples, "switchyard_backend_idle_connections", &labels);
            (streams == 1.0 && idle >= 1.0).then_some(samples)
        },
    )
    .await;
    assert_eq!(total(&after, "switchyard_requests_total", &message), 4.0);
    assert_eq!(
        total(
            &after,
            "switchyard_requests_total",
            &[("class", "message"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(total(&after, "switchyard_sessions_learned_total", &[]), 1.0);
    assert_eq!(total(&after, "switchyard_sessions_tracked", &[]), 1.0);
    assert_eq!(total(&after, "switchyard_sessions_lost_total", &[]), 1.0);
    assert_eq!(total(&after, "switchyard_backend_sessions", &labels), 1.0);
    assert_eq!(
        total(
            &after,
            "switchyard_upstream_response_seconds_count",
            &labels
        ),
        5.0
    );
    assert!(total(&after, "switchyard_bytes_in_total", &[]) > 0.0);
    assert!(total(&after, "switchyard_bytes_out_total", &[]) > 0.0);
    assert_eq!(total(&after, "switchyard_backend_in_flight", &labels), 0.0);
}

fn write_config(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-ops-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The proxy as a child process logging JSON; its stderr lines arrive parsed on the channel.
struct LoggingProxy {
    child: KillOnDrop,
    lines: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    address: String,
}

impl LoggingProxy {
    async fn start(config: &Path, rust_log: Option<&str>) -> LoggingProxy {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .args([
                "--log-format",
                "json",
                "run",
                "--config",
                config.to_str().unwrap(),
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let mut child = KillOnDrop(Some(command.spawn().unwrap()));
        let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let parsed = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(
                    |e| serde_json::json!({ "unparsed": line, "error": e.to_string() }),
                );
                if tx.send(parsed).is_err() {
                    return;
                }
            }
        });
        let address = loop {
            let line = next_line(&mut lines).await.expect("proxy starts");
            assert!(line.get("unparsed").is_none(), "not JSON: {line}");
            if line["message"] == "listening" {
                break line["address"].as_str().unwrap().to_string();
            }
        };
        LoggingProxy {
            child,
            lines,
            address,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops the proxy with SIGTERM and returns every line it wrote from now on.
    async fn stop(mut self) -> Vec<serde_json::Value> {
        let pid = self.child.0.as_ref().unwrap().id();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let mut rest = Vec::new();
        while let Some(line) = next_line(&mut self.lines).await {
            rest.push(line);
        }
        rest
    }
}

async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) -> Option<serde_json::Value> {
    tokio::time::timeout(Duration::from_secs(20), lines.recv())
        .await
        .expect("a log line or the end of the log in time")
}

fn logging_config(backend: &TestBackend) -> String {
    config_for(
        &[("blue", &[backend])],
        "\"blue\"",
        "[log]\nlevel = \"info,access=off\"\n[timeouts]\ndrain = \"1s\"\n",
    )
}

/// Exercises the proxy: a session, a call in it, an SSE stream. Returns the raw session id.
async fn traffic(proxy: &LoggingProxy) -> String {
    let client = client();
    let session = new_session(&client, &proxy.url("/mcp")).await;
    let call = post_in_session(&client, &proxy.url("/mcp"), &session).await;
    assert_eq!(call.status(), 200);
    call.bytes().await.unwrap();
    let stream = get_sse(&client, &proxy.url("/ticks?count=2&every_ms=10")).await;
    stream.bytes().await.unwrap();
    session
}

#[tokio::test]
async fn json_access_log_lines_carry_the_fields() {
    let backend = TestBackend::start("b1").await;
    let config = write_config("json-log", &logging_config(&backend));
    // RUST_LOG overrides the config's `access=off`.
    let mut proxy = LoggingProxy::start(&config, Some("info")).await;
    let session = traffic(&proxy).await;
    let tag = switchyard::mcp::session::session_tag(&session);
    let mut access = Vec::new();
    while access.len() < 3 {
        let line = next_line(&mut proxy.lines).await.expect("access lines");
        assert!(line.get("unparsed").is_none(), "not JSON: {line}");
        assert!(
            !line.to_string().contains(&session),
            "raw session id logged: {line}"
        );
        if line["target"] == "access" {
            access.push(line);
        }
    }
    let backend_address = backend.address.to_string();
    for line in &access {
        for field in [
            "method",
            "path",
            "status",
            "backend",
            "pool",
            "duration_ms",
            "bytes",
            "outcome",
        ] {
            assert!(line.get(field).is_some(), "no {field} in {line}");
        }
        assert_eq!(line["backend"], backend_address.as_str(), "{line}");
        assert_eq!(line["pool"], "blue", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
        assert!(line["bytes"].as_u64().unwrap() > 0, "{line}");
    }
    assert_eq!(access[0]["method"], "POST");
    assert_eq!(access[0]["path"], "/mcp");
    assert_eq!(
        access[0]["session"],
        tag.as_str(),
        "minted session is tagged"
    );
    assert_eq!(access[1]["session"], tag.as_str());
    assert_eq!(access[2]["path"], "/ticks");
    assert_eq!(access[2]["class"], "sse");
    assert_eq!(access[2]["outcome"], "complete");
    let rest = proxy.stop().await;
    assert!(rest.iter().all(|l| !l.to_string().contains(&session)));
}

#[tokio::test]
async fn log_level_comes_from_the_config() {
    let backend = TestBackend::start("b1").await;
    let config = write_config("log-level", &logging_config(&backend));
    let proxy = LoggingProxy::start(&config, None).await;
    traffic(&proxy).await;
    let rest = proxy.stop().await;
    assert!(rest.iter().any(|l| l["message"] == "stopped"), "{rest:?}");
    assert!(
        rest.iter().all(|l| l["target"] != "access"),
        "access=off in [log] level: {rest:?}"
    );
}

/// A config whose admin listener wants [`TOKEN`], read from a file as operators would.
fn token_config(backend: &TestBackend, test: &str) -> String {
    let token_file = write_config(test, "").with_file_name("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    config_for(&[("blue", &[backend])], "\"blue\"", "").replace(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    )
}

#[tokio::test]
async fn admin_refuses_a_public_bind_without_a_token() {
    let a = TestBackend::start("b1").await;
    let text = config_for(&[("blue", &[&a])], "\"blue\"", "").replace(
        "[admin]\nbind = \"127.0.0.1:0\"",
        "[admin]\nbind = \"0.0.0.0:0\"",
    );
    let error = switchyard::config::Config::parse(&text, Path::new("public.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("public.toml:5:8: "), "{error}");
    assert!(error.contains("token_file"), "{error}");
    let path = write_config("public-bind", &text);
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("token_file"));
}

#[tokio::test]
async fn admin_requests_need_the_token_when_one_is_set() {
    let a = TestBackend::start("b1").await;
    let proxy = TestProxy::start(&token_config(&a, "token")).await;
    let client = client();
    for probe in ["/healthz", "/readyz"] {
        let reply = client.get(proxy.admin_url(probe)).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{probe} needs no token");
    }
    let wrong = format!("Bearer {}x", TOKEN);
    let right = format!("Bearer {TOKEN}");
    for (method, path) in [
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("GET", "/sessions"),
        ("POST", "/reload"),
        ("POST", &*format!("/backends/{}/drain", a.address)),
    ] {
        let method: reqwest::Method = method.parse().unwrap();
        for auth in [None, Some(wrong.as_str()), Some("Basic abc")] {
            let mut request = client.request(method.clone(), proxy.admin_url(path));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let reply = request.send().await.unwrap();
            assert_eq!(reply.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(reply.headers()["www-authenticate"], "Bearer");
            let body: serde_json::Value = reply.json().await.unwrap();
            assert!(body["error"].is_string());
        }
    }
    let address = a.address.to_string();
    assert!(
        !proxy.state.snapshot().backends[address.as_str()].is_drained_by_admin(),
        "a refused drain changed nothing"
    );
    let status = client
        .get(proxy.admin_url("/status"))
        .header("authorization", &right)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let metrics = client
        .get(proxy.admin_url("/metrics"))
        .header("authorization", &right)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_exposition(&metrics);
    assert_eq!(
        total(&samples, "switchyard_admin_unauthorized_total", &[]),
        15.0
    );
}

async fn admin_post(proxy: &TestProxy, path: &str) -> (u16, serde_json::Value) {
    let reply = client().post(proxy.admin_url(path)).send().await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap())
}

/// Sends `count` session-less calls and returns how many reached each backend.
async fn spread(
    proxy: &TestProxy,
    a: &TestBackend,
    b: &TestBackend,
    count: usize,
) -> (usize, usize) {
    let (a0, b0) = (a.requests(), b.requests());
    for _ in 0..count {
        let reply = client().get(proxy.url("/name")).send().await.unwrap();
        assert_eq!(reply.status(), 200);
    }
    (a.requests() - a0, b.requests() - b0)
}

#[tokio::test]
async fn drain_and_undrain_through_the_api_change_routing() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a, &b])], "\"blue\"", "")).await;

    let (status, reply) = admin_post(&proxy, &format!("/backends/{}/drain", b.address)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["drained_by_admin"], true);
    assert_eq!(reply["changed"], true);
    assert_eq!(reply["pool"], "blue");
    let session = initialize(&proxy).await;
    assert!(session.starts_with("a-"), "{session}");
    assert_eq!(spread(&proxy, &a, &b, 20).await, (20, 0));

    // Flip: a drains, b takes the new work, a still serves the session it owns.
    admin_post(&proxy, &format!("/backends/{}/undrain", b.address)).await;
    // Percent-encoded addresses work too.
    let encoded = a.address.to_string().replace(':', "%3A");
    let (status, _) = admin_post(&proxy, &format!("/backends/{encoded}/drain")).await;
    assert_eq!(status, 200);
    assert_eq!(spread(&proxy, &a, &b, 20).await, (0, 20));
    let (status, body) = call(&proxy, &session).await;
    assert_eq!((status, body.as_str()), (200, r#"{"backend":"a"}"#));
    let status: serde_json::Value = client()
        .get(proxy.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let drained: Vec<bool> = status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["drained_by_admin"].as_bool().unwrap())
        .collect();
    assert_eq!(drained, [true, false]);
    let samples = scrape(&proxy).await;
    let a_labels = [("backend", &*a.address.to_string())];
    assert_eq!(
        total(&samples, "switchyard_backend_drained_by_admin", &a_labels),
        1.0
    );
    assert_eq!(
        total(&samples, "switchyard_backend_draining", &a_labels),
        1.0
    );

    // Both drained: nothing takes new work, and readiness says so.
    admin_post(&proxy, &format!("/backends/{}/drain", b.address)).await;
    let ready = client()
        .get(proxy.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], false);

    admin_post(&proxy, &format!("/backends/{}/undrain", a.address)).await;
    admin_post(&proxy, &format!("/backends/{}/undrain", b.address)).await;
    let (to_a, to_b) = spread(&proxy, &a, &b, 40).await;
    assert!(
        to_a > 0 && to_b > 0,
        "undrained backends share work: {to_a}/{to_b}"
    );
}

#[tokio::test]
async fn admin_answers_json_for_sessions_and_errors() {
    let a = TestBackend::start("a").await;
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a])], "\"blue\"", "")).await;
    let first = initialize(&proxy).await;
    let second = initialize(&proxy).await;
    let reply = client()
        .get(proxy.admin_url("/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let text = reply.text().await.unwrap();
    assert!(
        !text.contains(&first) && !text.contains(&second),
        "raw ids listed: {text}"
    );
    let sessions: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(sessions["total"], 2);
    let owner = &sessions["backends"][0];
    assert_eq!(owner["address"], a.address.to_string().as_str());
    assert_eq!(owner["pool"], "blue");
    assert_eq!(owner["count"], 2);
    let mut tags: Vec<String> = owner["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    let mut expected = vec![
        switchyard::mcp::session::session_tag(&first),
        switchyard::mcp::session::session_tag(&second),
    ];
    expected.sort();
    assert_eq!(tags, expected);

    let client = client();
    let unknown = client.get(proxy.admin_url("/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["content-type"], "application/json");
    let wrong_method = client.get(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let body: serde_json::Value = wrong_method.json().await.unwrap();
    assert!(body["error"].is_string());
    let (status, body) = admin_post(&proxy, "/backends/10.9.9.9:1/drain").await;
    assert_eq!(status, 404);
    assert_eq!(body["backends"][0], a.address.to_string().as_str());
    let health: serde_json::Value = client
        .get(proxy.admin_url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}

fn check(path: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn docker_configs_pass_check() {
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docker).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, text) = check(&path);
            assert_eq!(code, 0, "{}: {text}", path.display());
            assert!(text.contains("bearer token required"), "{text}");
            checked += 1;
        }
    }
    assert!(checked > 0, "no docker/conf/*.toml found");
}

/// The ConfigMap in kubernetes.yaml carries a switchyard.toml: it must pass `check` too, with the
/// token Secret mounted where the Deployment mounts it.
#[test]
fn kubernetes_configmap_passes_check() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/kubernetes.yaml"),
    )
    .unwrap();
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "switchyard.toml: |");
    assert!(lines.next().is_some(), "no switchyard.toml in a ConfigMap");
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    let toml: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    let dir = write_config("kubernetes", "").with_file_name("config");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, &toml).unwrap();
    let token_file = toml
        .lines()
        .find_map(|l| l.strip_prefix("token_file = "))
        .expect("the ConfigMap's admin section names a token_file")
        .trim_matches('"');
    let token_path = path.parent().unwrap().join(token_file);
    std::fs::create_dir_all(token_path.parent().unwrap()).unwrap();
    std::fs::write(&token_path, TOKEN).unwrap();
    let (code, text) = check(&path);
    assert_eq!(code, 0, "{text}\n---\n{toml}");
}

#[tokio::test]
async fn removed_backends_leave_no_stale_series() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let drain = "[timeouts]\ndrain = \"200ms\"\n";
    let proxy = TestProxy::start(&config_for(&[("blue", &[&a, &b])], "\"blue\"", drain)).await;
    let b_labels = [("backend", &*b.address.to_string())];
    let samples = scrape(&proxy).await;
    assert_eq!(
        total(
            &samples,
            "switchyard_backend_draining",
            &[("pool", "blue"), b_labels[0]]
        ),
        0.0
    );
    assert_eq!(
        total(&samples, "switchyard_backend_healthy", &b_labels),
        1.0
    );

    proxy
        .reload(&config_for(&[("blue", &[&a])], "\"blue\"", drain))
        .unwrap();
    let samples = scrape(&proxy).await;
    assert_eq!(total(&samples, "switchyard_config_generation", &[]), 2.0);
    let removed = [("pool", "(removed)"), b_labels[0]];
    assert_eq!(
        total(&samples, "switchyard_backend_draining", &removed),
        1.0
    );
    eventually(
        "the removed backend's series go away",
        Duration::from_secs(5),
        async || {
            let samples = scrape(&proxy).await;
            let left = samples
                .iter()
                .filter(|s| s.name.starts_with("switchyard_backend_"))
                .any(|s| s.labels.get("backend") == Some(&b.address.to_string()));
            (!left).then_some(())
        },
    )
    .await;
}
