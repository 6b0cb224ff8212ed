//! TLS termination: handshakes against a test CA, SNI, ALPN h2, certificate reload with open
//! streams, client certificates, redirect listeners, https backends, and config errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use switchyard::config::{Config, LoadedConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A test CA that issues leaf certificates into a temp dir.
pub(crate) struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_path: PathBuf,
}

pub(crate) struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Pki {
    pub(crate) fn new(tag: &str) -> Pki {
        let dir = TempDir::new(tag);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Switchyard test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_path = dir.write("ca.pem", &ca.pem());
        Pki { dir, ca, ca_path }
    }

    pub(crate) fn leaf(&self, stem: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: self.dir.write(&format!("{stem}.pem"), &cert.pem()),
            key: self.dir.write(&format!("{stem}.key"), &key.serialize_pem()),
            der: cert.der().to_vec(),
        }
    }

    pub(crate) fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let base = switchyard::config::tls::client_config(Some(&self.ca_path)).unwrap();
        let mut config = (*base).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Leaf {
    /// The server side of this certificate, for a test's own TLS server.
    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let pair = switchyard::config::tls::CertPair {
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        switchyard::config::tls::server_config(&[pair], None).unwrap()
    }
}

impl Pki {
    pub(crate) fn ca_path(&self) -> &std::path::Path {
        &self.ca_path
    }
}

pub(crate) fn tls_line(leaf: &Leaf) -> String {
    format!(
        "tls = {{ cert = {:?}, key = {:?} }}",
        leaf.cert.display().to_string(),
        leaf.key.display().to_string()
    )
}

/// `config_for` with extra keys on its (first) client listener.
fn with_listener(config: String, keys: &str) -> String {
    config.replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!("bind = \"127.0.0.1:0\"\n{keys}\n"),
        1,
    )
}

pub(crate) async fn tls_connect(
    address: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

fn peer_certificate(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http1(stream: TlsStream<TcpStream>) -> Sender {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut Sender, path: &str) -> (StatusCode, String) {
    let request = Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Reads body frames until `count` SSE events (blank-line separated) have arrived.
async fn next_events(body: &mut hyper::body::Incoming, count: usize) -> Vec<String> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event in time")
            .expect("the stream is still open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = buffer.find("\n\n") {
            events.push(buffer.drain(..end + 2).collect());
        }
    }
    events
}

async fn metrics_text(proxy: &TestProxy) -> String {
    get_text(&proxy.admin_url("/metrics")).await
}

/// A proxy with one TLS listener for `localhost` (a certificate from a fresh test CA) in front of
/// backend `b1`; the CA's files and the backend live as long as the values returned.
pub(crate) async fn localhost_tls_proxy(tag: &str) -> (Pki, TestBackend, TestProxy) {
    let pki = Pki::new(tag);
    let leaf = pki.leaf("localhost", &["localhost"]);
    let backend = TestBackend::start("b1").await;
    let config = with_listener(
        config_for(&[("blue", &[&backend])], "\"blue\"", ""),
        &tls_line(&leaf),
    );
    let proxy = TestProxy::start(&config).await;
    (pki, backend, proxy)
}

#[tokio::test]
async fn handshake_with_a_client_that_trusts_the_test_ca() {
    let (pki, _backend, proxy) = localhost_tls_proxy("handshake").await;

    let stream = tls_connect(
        proxy.address,
        "localhost",
        pki.client_config(&[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1(stream).await;
    assert_eq!(
        get(&mut sender, "/name").await,
        (StatusCode::OK, "b1".into())
    );
    let (_, headers) = get(&mut sender, "/headers").await;
    let headers: serde_json::Value = serde_json::from_str(&headers).unwrap();
    assert_eq!(headers["x-forwarded-proto"], "https");

    // A plain-HTTP client on the TLS port gets no answer, and the failure is counted.
    let mut plain = TcpStream::connect(proxy.address).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /name HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("b1"));
    let metrics = eventually("handshake metrics", Duration::from_secs(5), async || {
        let text = metrics_text(&proxy).await;
        (text.contains("switchyard_tls_handshakes_total{outcome=\"success\"} 1")
            && text.contains("switchyard_tls_handshakes_total{outcome=\"failure\"} 1"))
        .then_some(text)
    })
    .await;
    assert!(metrics.contains("tls_handshakes"));
}

/// A client with rustls' (and OpenSSL's) default order, AES-256 first, or offering only the
/// given suites.
fn client_offering(pki: &Pki, suites: Option<&[rustls::CipherSuite]>) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    assert_eq!(
        provider.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "the test needs a client that lists AES-256 first"
    );
    if let Some(suites) = suites {
        provider
            .cipher_suites
            .retain(|suite| suites.contains(&suite.suite()));
    }
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn the_listener_picks_aes_128_even_when_the_client_lists_aes_256_first() {
    let (pki, _backend, proxy) = localhost_tls_proxy("suites").await;
    let negotiated = async |client| {
        let stream = tls_connect(proxy.address, "localhost", client)
            .await
            .unwrap();
        let suite = stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .unwrap()
            .suite();
        let mut sender = http1(stream).await;
        assert_eq!(
            get(&mut sender, "/name").await,
            (StatusCode::OK, "b1".into())
        );
        suite
    };

    use rustls::CipherSuite as S;
    assert_eq!(
        negotiated(client_offering(&pki, None)).await,
        S::TLS13_AES_128_GCM_SHA256
    );
    // A client that offers neither AES suite still gets what it offers.
    assert_eq!(
        negotiated(client_offering(
            &pki,
            Some(&[S::TLS13_CHACHA20_POLY1305_SHA256])
        ))
        .await,
        S::TLS13_CHACHA20_POLY1305_SHA256
    );
    assert_eq!(
        negotiated(client_offering(&pki, Some(&[S::TLS13_AES_256_GCM_SHA384]))).await,
        S::TLS13_AES_256_GCM_SHA384
    );
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test", "*.b.test"]);
    let backend = TestBackend::start("b1").await;
    let keys = format!(
        "tls = {{ certificates = [{{ cert = {:?}, key = {:?} }}, {{ cert = {:?}, key = {:?} }}] }}",
        a.cert.display().to_string(),
        a.key.display().to_string(),
        b.cert.display().to_string(),
        b.key.display().to_string(),
    );
    let config = with_listener(config_for(&[("blue", &[&backend])], "\"blue\"", ""), &keys);
    let proxy = TestProxy::start(&config).await;
    let client = pki.client_config(&[b"http/1.1"]);

    for (name, expected) in [
        ("a.test", &a.der),
        ("b.test", &b.der),
        ("api.b.test", &b.der),
    ] {
        let stream = tls_connect(proxy.address, name, Arc::clone(&client))
            .await
            .unwrap();
        assert_eq!(&peer_certificate(&stream), expected, "SNI {name}");
    }
    // An unknown name gets the first certificate, which the client then rejects for that name.
    let unknown = tls_connect(proxy.address, "c.test", Arc::clone(&client)).await;
    assert!(unknown.is_err());
}

#[tokio::test]
async fn http2_via_alpn_carries_sse_streams_and_posts() {
    let pki = Pki::new("h2");
    let leaf = pki.leaf("localhost", &["localhost"]);
    let backend = TestBackend::start("b1").await;
    let config = with_listener(
        config_for(&[("blue", &[&backend])], "\"blue\"", ""),
        &tls_line(&leaf),
    );
    let proxy = TestProxy::start(&config).await;

    let stream = tls_connect(
        proxy.address,
        "localhost",
        pki.client_config(&[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);

    // An SSE stream and POSTs share the one connection, concurrently.
    let request = Request::get("https://localhost/ticks?every_ms=50&count=3")
        .header("accept", "text/event-stream")
        .body(Full::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream_body = response.into_body();
    for i in 0..3 {
        let request = Request::post("https://localhost/echo")
            .body(Full::new(Bytes::from(format!("message {i}"))))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("message {i}"));
    }
    let events = next_events(&mut stream_body, 3).await;
    assert!(events[2].starts_with("id: 2\n"), "{events:?}");
}

#[tokio::test]
async fn certificate_reload_keeps_open_streams_and_serves_the_new_certificate() {
    let pki = Pki::new("reload");
    let old = pki.leaf("old", &["localhost"]);
    let new = pki.leaf("new", &["localhost"]);
    let backend = TestBackend::start("b1").await;
    let base = config_for(&[("blue", &[&backend])], "\"blue\"", "");
    let proxy = TestProxy::start(&with_listener(base.clone(), &tls_line(&old))).await;
    let client = pki.client_config(&[b"http/1.1"]);

    let stream = tls_connect(proxy.address, "localhost", Arc::clone(&client))
        .await
        .unwrap();
    assert_eq!(peer_certificate(&stream), old.der);
    let mut sender = http1(stream).await;
    let request = Request::get("/ticks?every_ms=100&count=30")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .body(Empty::new())
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    next_events(&mut body, 1).await;

    proxy
        .reload(&with_listener(base, &tls_line(&new)))
        .await
        .unwrap();

    let fresh = tls_connect(proxy.address, "localhost", Arc::clone(&client))
        .await
        .unwrap();
    assert_eq!(peer_certificate(&fresh), new.der);
    // The stream opened under the old certificate goes on.
    let events = next_events(&mut body, 3).await;
    assert_eq!(events.len(), 3);
    assert!(events[2].starts_with("id: 3\n"), "{events:?}");
}

#[tokio::test]
async fn reload_with_a_broken_certificate_changes_nothing() {
    let pki = Pki::new("badreload");
    let good = pki.leaf("good", &["localhost"]);
    let backend = TestBackend::start("b1").await;
    let base = config_for(&[("blue", &[&backend])], "\"blue\"", "");
    let proxy = TestProxy::start(&with_listener(base.clone(), &tls_line(&good))).await;
    let missing = Leaf {
        cert: pki.dir.join("missing.pem"),
        key: good.key.clone(),
        der: Vec::new(),
    };
    let err = proxy
        .reload(&with_listener(base.clone(), &tls_line(&missing)))
        .await
        .unwrap_err();
    assert!(err.contains("missing.pem"), "{err}");
    // Certificates may change on reload; the set of bound sockets may not.
    let two_listeners = format!("[[listener]]\nbind = \"127.0.0.1:0\"\n\n{base}");
    let err = proxy
        .reload(&with_listener(two_listeners, &tls_line(&good)))
        .await
        .unwrap_err();
    assert!(err.contains("bind addresses cannot change"), "{err}");
    let stream = tls_connect(proxy.address, "localhost", pki.client_config(&[]))
        .await
        .unwrap();
    assert_eq!(peer_certificate(&stream), good.der);
}

#[tokio::test]
async fn client_certificates_are_required_with_client_ca() {
    let pki = Pki::new("mtls");
    let server = pki.leaf("server", &["localhost"]);
    let client_leaf = pki.leaf("client", &["client.test"]);
    let backend = TestBackend::start("b1").await;
    let keys = format!(
        "tls = {{ cert = {:?}, key = {:?}, client_ca = {:?} }}",
        server.cert.display().to_string(),
        server.key.display().to_string(),
        pki.ca_path.display().to_string(),
    );
    let config = with_listener(config_for(&[("blue", &[&backend])], "\"blue\"", ""), &keys);
    let proxy = TestProxy::start(&config).await;

    // Without a certificate the handshake fails (TLS 1.3 reports it on first use).
    let anonymous = tls_connect(proxy.address, "localhost", pki.client_config(&[])).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(stream) => {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let request = Request::get("/name")
                .header("host", "localhost")
                .body(Empty::new())
                .unwrap();
            sender.send_request(request).await.is_err()
        }
    };
    assert!(refused);

    let chain = switchyard::config::tls::load_certificates(&client_leaf.cert).unwrap();
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&client_leaf.key).unwrap()
    };
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in switchyard::config::tls::load_certificates(&pki.ca_path).unwrap() {
            roots.add(cert).unwrap();
        }
        roots
    };
    let with_cert =
        rustls::ClientConfig::builder_with_provider(switchyard::config::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    let stream = tls_connect(proxy.address, "localhost", Arc::new(with_cert))
        .await
        .unwrap();
    let mut sender = http1(stream).await;
    assert_eq!(
        get(&mut sender, "/name").await,
        (StatusCode::OK, "b1".into())
    );
}

#[tokio::test]
async fn redirect_listener_answers_301_to_https() {
    let backend = TestBackend::start("b1").await;
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let config = with_listener(
        config_for(&[("blue", &[&backend])], "\"blue\"", ""),
        "redirect_https = true",
    );
    let proxy = TestProxy::start(&config).await;
    let response = no_redirects
        .get(proxy.url("/mcp/path?x=1&y=2"))
        .header("host", "example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        response.headers()["location"],
        "https://example.com/mcp/path?x=1&y=2"
    );
    assert_eq!(backend.requests(), 0);

    let config = with_listener(
        config_for(&[("blue", &[&backend])], "\"blue\"", ""),
        "redirect = \"https://secure.example:8443/\"",
    );
    let proxy = TestProxy::start(&config).await;
    let response = no_redirects.get(proxy.url("/sse")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        response.headers()["location"],
        "https://secure.example:8443/sse"
    );
}

/// A TLS backend answering with its name, for `https://` pool members.
async fn start_tls_backend(leaf: &Leaf, name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let config = switchyard::config::tls::server_config(
        &[switchyard::config::tls::CertPair {
            cert: leaf.cert.clone(),
            key: leaf.key.clone(),
        }],
        None,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        name,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, connections)
}

#[tokio::test]
async fn https_backends_are_reached_over_tls_with_a_configured_ca() {
    let pki = Pki::new("upstream");
    let leaf = pki.leaf("backend", &["localhost"]);
    let (address, connections) = start_tls_backend(&leaf, "secure-1").await;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[pools.blue]\nbackends = [\"https://localhost:{}\"]\n\n[routing]\nactive = \"blue\"\n\n[upstream]\nca = {:?}\n",
        address.port(),
        pki.ca_path.display().to_string(),
    );
    let proxy = TestProxy::start(&config).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..3 {
        let response = client.get(proxy.url("/name")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "secure-1");
    }
    // Pooled: the three requests shared one TLS connection.
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    // A backend whose certificate the configured CA did not sign is refused: 502, not plaintext.
    let other = Pki::new("upstream-other");
    let stranger = other.leaf("stranger", &["localhost"]);
    let (address, _) = start_tls_backend(&stranger, "stranger").await;
    let bad = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[pools.blue]\nbackends = [\"https://localhost:{}\"]\n\n[routing]\nactive = \"blue\"\n\n[upstream]\nca = {:?}\nretries = 0\n",
        address.port(),
        pki.ca_path.display().to_string(),
    );
    let proxy = TestProxy::start(&bad).await;
    let response = client.get(proxy.url("/name")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

/// Validates `text` and loads the files it names, as a start or a reload does.
fn parse(text: &str) -> Result<LoadedConfig, String> {
    let config = Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())?;
    LoadedConfig::from_config(config).map_err(|e| e.to_string())
}

#[test]
fn missing_unreadable_and_mismatched_tls_files_are_config_errors() {
    let pki = Pki::new("errors");
    let one = pki.leaf("one", &["localhost"]);
    let two = pki.leaf("two", &["localhost"]);
    let config = |tls: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n{tls}\n\n[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n\n[routing]\nactive = \"blue\"\n"
        )
    };
    let missing = pki.dir.join("nope.pem");
    let cases = [
        (
            format!(
                "tls = {{ cert = {:?}, key = {:?} }}",
                missing.display().to_string(),
                one.key.display().to_string()
            ),
            "nope.pem",
            "cannot read",
        ),
        (
            format!(
                "tls = {{ cert = {:?}, key = {:?} }}",
                one.cert.display().to_string(),
                two.key.display().to_string()
            ),
            "two.key",
            "does not belong",
        ),
        (
            format!(
                "tls = {{ cert = {:?}, key = {:?} }}",
                one.key.display().to_string(),
                one.key.display().to_string()
            ),
            "one.key",
            "no PEM certificate",
        ),
        (
            format!("tls = {{ cert = {:?} }}", one.cert.display().to_string()),
            "",
            "both cert and key",
        ),
    ];
    for (tls, file, why) in cases {
        let err = parse(&config(&tls)).unwrap_err();
        assert!(err.starts_with("test.toml:3:"), "{err}");
        assert!(err.contains(file), "{err}");
        assert!(err.contains(why), "{err}");
    }
    let good = parse(&config(&format!(
        "tls = {{ cert = {:?}, key = {:?} }}",
        one.cert.display().to_string(),
        one.key.display().to_string()
    )))
    .unwrap();
    assert!(good.summary().contains("https: h2, http/1.1"));
}

#[test]
fn switchyard_check_names_the_bad_certificate_file() {
    let dir = TempDir::new("check");
    let config = dir.write(
        "switchyard.toml",
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = { cert = \"certs/missing.pem\", key = \"certs/missing.key\" }\n\n[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n\n[routing]\nactive = \"blue\"\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Relative paths resolve against the config file's directory.
    let expected = dir.join("certs/missing.pem");
    assert!(stderr.contains(&expected.display().to_string()), "{stderr}");
    assert!(stderr.contains("switchyard.toml:3:"), "{stderr}");
}

#[test]
fn redirect_and_backend_address_settings_are_validated() {
    let config = |listener: &str, backend: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n{listener}\n\n[pools.blue]\nbackends = [\"{backend}\"]\n\n[routing]\nactive = \"blue\"\n"
        )
    };
    for (listener, backend, why) in [
        (
            "redirect_https = true\nredirect = \"https://a.example\"",
            "127.0.0.1:1",
            "not both",
        ),
        ("redirect = \"a.example\"", "127.0.0.1:1", "not a URL"),
        ("", "https://localhost", "needs a port"),
        ("", "http://localhost:80", "not a backend address"),
        ("tls = { }", "127.0.0.1:1", "needs a certificate"),
    ] {
        let err = parse(&config(listener, backend)).unwrap_err();
        assert!(err.contains(why), "{listener} {backend}: {err}");
        assert!(err.starts_with("test.toml:"), "{err}");
    }
    let ok = parse(&config("redirect = \"https://a.example/\"", "127.0.0.1:1")).unwrap();
    assert_eq!(
        ok.config.listeners[0].redirect,
        Some(switchyard::config::Redirect::To("https://a.example".into()))
    );
}
