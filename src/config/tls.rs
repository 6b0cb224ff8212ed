//! TLS with rustls: the server config of a TLS listener (certificates chosen by SNI, ALPN, optional
//! client certificates) and the client config for `https://` backends.
//!
//! The loading step (`load.rs`) calls these after validation, at start and on every reload, so
//! `switchyard check` and a refused reload report a missing, unreadable or mismatched file before
//! anything serves it. The built `ServerConfig` lives in the snapshot: a reload swaps it for new
//! handshakes while open connections keep the session they negotiated.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};

/// ALPN protocols offered to clients, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A file that cannot serve as TLS material. Displays with the file name first.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{}`: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The one crypto provider Switchyard uses, named explicitly: with both rustls backends in the
/// dependency tree, rustls cannot pick a process default by itself.
///
/// AES-128-GCM comes before AES-256-GCM. Its suites hash with SHA-256, which x86 and ARM servers
/// compute in hardware, where AES-256-GCM's SHA-384 runs in software: measured on the benchmark
/// machine, SHA-384 was 6 % of a full handshake's CPU and taking AES-128 first gave about 6 % more
/// handshakes per second. Most clients an MCP server sees (Node, Python, curl: OpenSSL's order)
/// list AES-256 first, so the server's listeners choose by this order, not the client's.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(preference);
    Arc::new(provider)
}

/// Sort key: TLS 1.3 suites first (as the provider lists them), AES-128-GCM first within each
/// version, the provider's order otherwise (the sort is stable).
fn preference(suite: &SupportedCipherSuite) -> (bool, bool) {
    let tls12 = matches!(suite, SupportedCipherSuite::Tls12(_));
    let aes_128 = matches!(
        suite.suite(),
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    );
    (tls12, !aes_128)
}

fn pem_error(path: &Path, what: &str, error: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error as E;
    let message = match error {
        E::Io(io) => format!("cannot read {what}: {io}"),
        E::NoItemsFound => format!("no PEM {what} found in the file"),
        other => format!("not a valid PEM {what}: {other:?}"),
    };
    file_error(path, message)
}

pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(
            path,
            "certificate",
            rustls::pki_types::pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

/// Loads a chain and its key and checks that the key belongs to the chain's first certificate.
pub fn load_certified_key(
    pair: &CertPair,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certificates(&pair.cert)?;
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| pem_error(&pair.key, "private key", e))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => file_error(
            &pair.key,
            format!(
                "this key does not belong to the certificate in `{}`",
                pair.cert.display()
            ),
        ),
        other => file_error(&pair.key, format!("unusable private key: {other}")),
    })?;
    // An unparsable end-entity certificate would fail every handshake: refuse it now.
    webpki::EndEntityCert::try_from(&certified.cert[0])
        .map_err(|e| file_error(&pair.cert, format!("unusable certificate: {e}")))?;
    Ok(certified)
}

/// The server config of a TLS listener: TLS 1.3 and 1.2 only, the cipher suite picked by
/// [`provider`]'s order, ALPN `h2` and `http/1.1`, the
/// certificate matching the SNI name (the first pair when none matches), and client certificates
/// required and verified against `client_ca` when it is given.
pub fn server_config(
    pairs: &[CertPair],
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let certs = pairs
        .iter()
        .map(|pair| load_certified_key(pair, &provider).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    server_config_from_keys(certs, client_ca, provider)
}

/// Like [`server_config`], with the pairs already loaded (the first is the default).
pub fn server_config_from_keys(
    certs: Vec<Arc<CertifiedKey>>,
    client_ca: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = root_store(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(path, format!("unusable client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The client config for `https://` backends: the CA file if given, else the system's roots.
/// Offers only `http/1.1`, which is what the upstream pool speaks.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(path) => root_store(path)?,
        None => {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(file_error(
                    Path::new("(system CA store)"),
                    "no trusted CA certificates found; set [upstream] ca = \"…\"",
                ));
            }
            roots
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Picks the first certificate valid for the SNI name (wildcards included); the first one when the
/// client sends no name or no certificate matches, as nginx's default server does.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let matching = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| {
                self.certs.iter().find(|certified| {
                    certified.cert.first().is_some_and(|der| {
                        webpki::EndEntityCert::try_from(der)
                            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                    })
                })
            });
        matching.or_else(|| self.certs.first()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_file() {
        let pair = CertPair {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
        };
        let err = server_config(&[pair], None).unwrap_err().to_string();
        assert!(
            err.starts_with("`/nonexistent/cert.pem`: cannot read"),
            "{err}"
        );
    }
}
