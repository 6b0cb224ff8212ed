//! Bearer tokens: a valid one reaches the backend as an identity header without the token; every
//! way of being invalid is `401` with `WWW-Authenticate` pointing at the metadata document, which
//! is served; an unknown key id makes the proxy look at the key set again; tool allow-lists are
//! `403`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::*;

struct Setup {
    backend: TestBackend,
    proxy: TestProxy,
    dir: TempDir,
}

async fn setup(test: &str, signers: &[&Signer], extra: &str) -> Setup {
    let dir = temp_dir(test);
    let jwks = write_jwks(&dir, signers);
    let backend = TestBackend::start("b").await;
    let policy = format!("[policy]\n{}", auth_table(&jwks, extra));
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &policy);
    let proxy = TestProxy::start(&config).await;
    Setup {
        backend,
        proxy,
        dir,
    }
}

async fn get_headers(proxy: &TestProxy, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(proxy.url("/headers"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Asserts a `401` whose challenge points at the metadata document.
async fn assert_unauthorized(response: reqwest::Response, why: &str) {
    assert_eq!(response.status(), 401, "{why}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer resource_metadata=\"http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp\""),
        "{why}: {challenge}"
    );
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32010, "{why}: {answer}");
}

#[tokio::test]
async fn a_valid_token_reaches_the_backend_as_an_identity() {
    let signer = Signer::example();
    let s = setup("valid", &[&signer], "").await;
    let token = signer.sign(&claims("alice"));
    let response = get_headers(&s.proxy, Some(&token)).await;
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["x-switchyard-subject"], "alice", "{seen}");
    assert!(
        seen.get("authorization").is_none(),
        "the token is not forwarded: {seen}"
    );
    // A client cannot claim an identity of its own.
    let forged = client()
        .get(s.proxy.url("/headers"))
        .bearer_auth(&token)
        .header("x-switchyard-subject", "mallory")
        .send()
        .await
        .unwrap();
    let seen: Value = forged.json().await.unwrap();
    assert_eq!(seen["x-switchyard-subject"], "alice", "{seen}");
}

#[tokio::test]
async fn pass_token_forwards_it() {
    let signer = Signer::example();
    let s = setup(
        "pass",
        &[&signer],
        "pass_token = true\nidentity_header = \"x-user\"",
    )
    .await;
    let token = signer.sign(&claims("bob"));
    let seen: Value = get_headers(&s.proxy, Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["authorization"], format!("Bearer {token}"));
    assert_eq!(seen["x-user"], "bob");
}

#[tokio::test]
async fn invalid_tokens_are_401_with_the_metadata_challenge() {
    let signer = Signer::example();
    let stranger = Signer::ec("demo-1");
    let s = setup("invalid", &[&signer], "leeway = \"5s\"").await;
    let expired = claims_with("a", &[("exp", seconds_from_now(-60))]);
    let not_yet = claims_with("a", &[("nbf", seconds_from_now(120))]);
    let audience = claims_with("a", &[("aud", json!("someone-else"))]);
    let issuer = claims_with("a", &[("iss", json!("https://evil.example"))]);
    let no_exp = claims_with("a", &[("exp", Value::Null)]);
    let good = signer.sign(&claims("a"));
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, _) = rest.split_once('.').unwrap();
    let mut tampered_sig = good.clone();
    tampered_sig.replace_range(good.len() - 6.., "AAAAAA");
    // `alg: none`, unsigned, in its usual shape.
    let none_head = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let cases = [
        (None, "no token"),
        (Some(signer.sign(&expired)), "expired"),
        (Some(signer.sign(&not_yet)), "not yet valid"),
        (Some(signer.sign(&audience)), "wrong audience"),
        (Some(signer.sign(&issuer)), "wrong issuer"),
        (Some(signer.sign(&no_exp)), "no exp"),
        (
            Some(signer.sign_as("who-knows", &claims("a"))),
            "unknown kid",
        ),
        (
            Some(stranger.sign(&claims("a"))),
            "another key under a known kid",
        ),
        (Some(tampered_sig), "bad signature"),
        (Some(format!("{head}.{payload}.")), "signature removed"),
        (Some(format!("{none_head}.{payload}.")), "alg none"),
        (Some("garbage".to_string()), "not a JWT"),
    ];
    for (token, why) in cases {
        assert_unauthorized(get_headers(&s.proxy, token.as_deref()).await, why).await;
    }
    assert_eq!(
        s.backend.requests(),
        0,
        "no refused request reached the backend"
    );
}

#[tokio::test]
async fn every_accepted_algorithm_verifies() {
    let (rsa, ec, ed) = (Signer::example(), Signer::ec("ec-1"), Signer::ed("ed-1"));
    let s = setup("algorithms", &[&rsa, &ec, &ed], "").await;
    for signer in [&rsa, &ec, &ed] {
        let response = get_headers(&s.proxy, Some(&signer.sign(&claims(&signer.kid)))).await;
        assert_eq!(response.status(), 200, "{}", signer.kid);
    }
    // Narrowed to RS256, the others are refused.
    let t = setup("only-rs256", &[&rsa, &ec], "algorithms = [\"RS256\"]").await;
    let response = get_headers(&t.proxy, Some(&ec.sign(&claims("x")))).await;
    assert_unauthorized(response, "ES256 not accepted").await;
}

#[tokio::test]
async fn an_unknown_kid_makes_the_proxy_read_the_keys_again() {
    let old = Signer::example();
    let s = setup("rotation", &[&old], "").await;
    // The issuer rotates: its new key is in the file before any token names it.
    let rotated = Signer::ed("rotated-1");
    write_jwks(&s.dir, &[&old, &rotated]);
    let response = get_headers(&s.proxy, Some(&rotated.sign(&claims("r")))).await;
    assert_eq!(
        response.status(),
        200,
        "the new key was fetched on sight of its kid"
    );
    let refreshes = metric(
        &s.proxy,
        "switchyard_jwks_refreshes_total",
        &[("outcome", "success")],
    );
    assert_eq!(refreshes.await, 1.0);
    // A made-up kid right after: still 401, and no second look within the cooldown.
    let made_up = get_headers(&s.proxy, Some(&rotated.sign_as("made-up", &claims("r")))).await;
    assert_unauthorized(made_up, "unknown kid").await;
    let refreshes = metric(&s.proxy, "switchyard_jwks_refreshes_total", &[]);
    assert_eq!(refreshes.await, 1.0);
}

#[tokio::test]
async fn tool_allow_lists_answer_403() {
    let signer = Signer::example();
    let rules = "[[policy.auth.allow]]\ntools = [\"echo\"]\n\n\
                 [[policy.auth.allow]]\ntools = [\"*\"]\nscope = \"mcp:admin\"\n\n\
                 [[policy.auth.allow]]\ntools = [\"sleep\"]\nclaim = \"groups\"\nvalue = \"ops\"\n";
    let s = setup("allow", &[&signer], rules).await;
    let plain = signer.sign(&claims("p"));
    let admin = signer.sign(&claims_with("adm", &[("scope", json!("openid mcp:admin"))]));
    let ops = signer.sign(&claims_with("o", &[("groups", json!(["dev", "ops"]))]));
    let bearer = |token: &str| format!("Bearer {token}");
    let status = async |token: &str, tool: &str| {
        let body = tool_call(7, tool).to_string();
        post(
            &s.proxy.url("/echo"),
            &body,
            &[("authorization", &bearer(token))],
        )
        .await
    };
    assert_eq!(status(&plain, "echo").await.status(), 200);
    let refused = status(&plain, "countdown").await;
    assert_eq!(refused.status(), 403);
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("insufficient_scope") && challenge.contains("mcp:admin"),
        "{challenge}"
    );
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(
        (answer["id"].clone(), answer["error"]["code"].clone()),
        (json!(7), json!(-32011))
    );
    assert_eq!(status(&admin, "countdown").await.status(), 200);
    assert_eq!(status(&plain, "sleep").await.status(), 403);
    assert_eq!(status(&ops, "sleep").await.status(), 200);
    // Other methods are not tool calls: allowed for any valid token.
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let listed = post(
        &s.proxy.url("/echo"),
        &list,
        &[("authorization", &bearer(&plain))],
    )
    .await;
    assert_eq!(listed.status(), 200);
}

#[tokio::test]
async fn the_metadata_document_is_served() {
    let signer = Signer::example();
    let s = setup(
        "metadata",
        &[&signer],
        "authorization_servers = [\"https://auth.example.test\"]",
    )
    .await;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let response = client().get(s.proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let document: Value = response.json().await.unwrap();
        assert_eq!(document["resource"], "http://127.0.0.1:8080/mcp");
        assert_eq!(document["authorization_servers"], json!([ISSUER]));
        assert_eq!(document["scopes_supported"], json!(["mcp:tools"]));
        assert_eq!(document["bearer_methods_supported"], json!(["header"]));
    }
    assert_eq!(s.backend.requests(), 0, "served by the proxy itself");
}

/// An HTTPS server answering every request with `jwks`; counts the requests.
async fn serve_jwks(
    tls: Arc<rustls::ServerConfig>,
    jwks: String,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let fetched = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&fetched);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, jwks, count) = (acceptor.clone(), jwks.clone(), Arc::clone(&count));
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    assert_eq!(request.uri().path(), "/keys/jwks.json");
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = http_body_util::Full::new(bytes::Bytes::from(jwks.clone()));
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, fetched)
}

#[tokio::test]
async fn keys_are_fetched_from_an_https_url() {
    let signer = Signer::ed("fetched-1");
    let dir = temp_dir("jwks-url");
    let jwks = std::fs::read_to_string(write_jwks(&dir, &[&signer])).unwrap();
    let pki = crate::tls::Pki::new("jwks-url");
    let leaf = pki.leaf("issuer", &["localhost"]);
    let (address, fetched) = serve_jwks(leaf.server_config(), jwks).await;
    let backend = TestBackend::start("b").await;
    let policy = format!(
        "[upstream]\nca = \"{}\"\n\n[policy]\n[policy.auth]\nissuer = \"{ISSUER}\"\n\
         audience = \"{AUDIENCE}\"\njwks_url = \"https://localhost:{}/keys/jwks.json\"\n\
         resource = \"http://127.0.0.1:8080/mcp\"\n",
        pki.ca_path().display(),
        address.port()
    );
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &policy);
    let proxy = TestProxy::start(&config).await;
    // Whichever comes first, the start-up fetch or the token's unknown kid, brings the key.
    let response = get_headers(&proxy, Some(&signer.sign(&claims("far")))).await;
    assert_eq!(response.status(), 200);
    assert!(fetched.load(Ordering::SeqCst) >= 1);
    let refreshes = metric(
        &proxy,
        "switchyard_jwks_refreshes_total",
        &[("outcome", "success")],
    );
    assert!(refreshes.await >= 1.0);
}

#[tokio::test]
async fn each_route_has_its_own_policy() {
    let signer = Signer::example();
    let dir = temp_dir("routes");
    let jwks = write_jwks(&dir, &[&signer]);
    let backend = TestBackend::start("b").await;
    let routes = format!(
        "[[route]]\nname = \"open\"\nprefix = \"/open/\"\nstrip_prefix = true\nactive = \"blue\"\n\n\
         [[route]]\nname = \"locked\"\nprefix = \"/locked/\"\nstrip_prefix = true\nactive = \"blue\"\n\
         [route.policy]\n{}\n[[route.policy.limit]]\nmethod = \"tools/call\"\nkey = \"client\"\n\
         rate = 1\nper = \"1m\"\nburst = 1\n",
        auth_table(&jwks, "").replace("[policy.auth]", "[route.policy.auth]")
    );
    let config = config_for(&[("blue", &[&backend])], "\"blue\"", &routes);
    let proxy = TestProxy::start(&config).await;
    let token = signer.sign(&claims("carol"));
    let bearer = format!("Bearer {token}");

    let open = client()
        .get(proxy.url("/open/headers"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200, "a route without a policy passes blind");
    assert_unauthorized(
        client()
            .get(proxy.url("/locked/headers"))
            .send()
            .await
            .unwrap(),
        "the locked route",
    )
    .await;
    let seen: Value = client()
        .get(proxy.url("/locked/headers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["x-switchyard-subject"], "carol");

    let body = tool_call(1, "echo").to_string();
    let headers = [("authorization", bearer.as_str())];
    assert_eq!(
        post(&proxy.url("/locked/echo"), &body, &headers)
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&proxy.url("/locked/echo"), &body, &headers)
            .await
            .status(),
        429
    );
    for _ in 0..2 {
        assert_eq!(
            post(&proxy.url("/open/echo"), &body, &[]).await.status(),
            200
        );
    }
    // The locked route's metadata is served though its path is outside the route's prefix.
    let document = client()
        .get(proxy.url("/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await
        .unwrap();
    assert_eq!(document.status(), 200);
    let calls = metric(&proxy, "switchyard_mcp_calls_total", &[]).await;
    assert_eq!(calls, 2.0, "only the locked route's calls are counted");
}

#[tokio::test]
async fn limits_keyed_by_a_claim_count_each_caller_apart() {
    let signer = Signer::example();
    let limit = "\n[[policy.limit]]\nmethod = \"tools/call\"\nkey = \"claim:sub\"\nrate = 1\nper = \"1m\"\nburst = 1\n";
    let s = setup("claim-limit", &[&signer], limit).await;
    let call = async |subject: &str, id: u64| {
        let token = format!("Bearer {}", signer.sign(&claims(subject)));
        let body = tool_call(id, "echo").to_string();
        let headers = [("authorization", token.as_str())];
        post(&s.proxy.url("/echo"), &body, &headers).await.status()
    };
    assert_eq!(call("alice", 1).await, 200);
    assert_eq!(call("alice", 2).await, 429, "alice's bucket is empty");
    // Same client address, another subject: its own bucket.
    assert_eq!(call("bob", 3).await, 200);
    assert_eq!(call("bob", 4).await, 429);
}
