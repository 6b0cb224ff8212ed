//! The admin API: its bearer token (required on a public bind, checked on every route but the
//! probes), drain and undrain of a backend changing routing, and JSON answers for sessions and
//! errors.

use std::path::Path;
use std::process::Command;

use super::{TOKEN, call, initialize, parse_exposition, scrape, total, write_config};
use crate::support::*;

/// A config whose admin listener wants [`TOKEN`], read from a file as operators would, and the
/// directory holding that file.
fn token_config(backend: &TestBackend, test: &str) -> (String, TempDir) {
    let dir = TempDir::new(&format!("ops-{test}"));
    let token_file = dir.write("admin-token", &format!("{TOKEN}\n"));
    let text = config_for(&[("blue", &[backend])], "\"blue\"", "").replace(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    );
    (text, dir)
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
    let (text, _token_dir) = token_config(&a, "token");
    let proxy = TestProxy::start(&text).await;
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
