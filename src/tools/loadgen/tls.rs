//! TLS load: full handshakes per second.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::*;

pub(super) async fn tls(args: TlsArgs) -> Result<Value, LoadgenError> {
    let connector = tls_connector(&args.ca)?;
    let server_name = rustls::pki_types::ServerName::try_from(args.server_name.clone())
        .map_err(|e| LoadgenError::Tls(e.to_string()))?;
    preflight(&args.address).await?;
    let address = Arc::new(args.address.clone());
    let window = Arc::new(Window::new(&args.common));
    let histogram = new_histogram()?;
    let watcher = watch(args.common.watch_pid.clone(), &window);
    let live = Arc::new(Live::default());
    let progress = Progress::start("tls", Arc::clone(&live), Some(window.end));
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let (connector, server_name) = (connector.clone(), server_name.clone());
            let (address, window) = (Arc::clone(&address), Arc::clone(&window));
            let mut stats = ConnStats::new(&histogram, &live);
            tokio::spawn(async move {
                while Instant::now() < window.end {
                    let started = Instant::now();
                    let outcome = handshake(&connector, &address, server_name.clone()).await;
                    stats.record(&window, started, Instant::now(), outcome.is_ok());
                    if let Err(error) = outcome {
                        stats.first_error.get_or_insert(error);
                    }
                }
                stats
            })
        })
        .collect();
    let stats = join_all(tasks).await;
    drop(progress);
    let mut line = summarize("tls", &args.common, &window, stats)?;
    merge(&mut line, json!({ "connections": args.connections }));
    merge(&mut line, watcher.await.unwrap_or_default());
    Ok(line)
}

/// X25519 only and no resumption: every server pays the same full handshake, whatever groups
/// its TLS library prefers.
pub(super) fn tls_connector(
    ca: &std::path::Path,
) -> Result<tokio_rustls::TlsConnector, LoadgenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let ca_error = |reason: String| LoadgenError::Ca {
        path: ca.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| ca_error(e.to_string()))? {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LoadgenError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    address: &str,
    server_name: rustls::pki_types::ServerName<'static>,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let stream = connect(address).await.map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(server_name, stream)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tls.shutdown().await;
    Ok(())
}
