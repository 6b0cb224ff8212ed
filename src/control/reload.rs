//! Configuration reload: parse and validate the new file, load the files it names, then swap it in
//! at once; or, if any step fails, change nothing and keep serving the last good config
//! (agentgateway's state manager does the same).

use std::sync::Arc;

use super::discovery::NewNames;
use crate::config::{Config, ConfigError, LoadedConfig};
use crate::state::State;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "listener bind addresses cannot change on reload (restart the proxy to change them; TLS certificates, PROXY protocol and redirects can): {0}"
    )]
    ListenersChanged(String),
    #[error(
        "route `{route}` would have no backend: {names} did not resolve (check the names and `[discovery] resolver`; the previous configuration stays in force)"
    )]
    Unresolved { route: String, names: String },
    #[error(
        "the reload task stopped before it finished; the previous configuration stays in force"
    )]
    Interrupted,
}

/// Reloads from the file the running config came from: files are read and parsed on a blocking
/// thread (a config on a slow or remote mount must not hold up a runtime worker and the
/// connections on it), then the names the new config adds are resolved, then it is swapped in.
/// Every reload (admin, SIGHUP, the file watcher) comes through here, one at a time: one that
/// read the file before an edit must not swap in after one that read it since.
pub async fn reload_off_runtime(state: Arc<State>) -> Result<u64, ReloadError> {
    let _one_at_a_time = state.reloading.lock().await;
    super::notify::reloading();
    let reader = Arc::clone(&state);
    let prepared = tokio::task::spawn_blocking(move || {
        let source = reader.snapshot().config.source.clone();
        prepare(&reader, Config::load(&source)?)
    })
    .await
    .unwrap_or(Err(ReloadError::Interrupted));
    let outcome = match prepared {
        Ok(ready) => commit(&state, ready).await,
        Err(error) => Err(error),
    };
    record(&state, &outcome);
    // Ready again either way: a refused reload leaves the last good config serving.
    super::notify::ready();
    outcome
}

fn record(state: &State, outcome: &Result<u64, ReloadError>) {
    let label = if outcome.is_ok() {
        "success"
    } else {
        "failure"
    };
    state
        .metrics
        .reloads
        .get_or_create(&crate::metrics::OutcomeLabels { outcome: label })
        .inc();
    match outcome {
        Ok(generation) => tracing::info!(generation, "configuration reloaded"),
        Err(error) => {
            tracing::error!(%error, "reload refused; the previous configuration stays in force")
        }
    }
}

/// Loads the files a validated config names and applies it, refusing changes a running process
/// cannot make: the bound sockets stay, everything else about a listener (certificates included)
/// comes from the new snapshot for each connection accepted after the swap. Nothing changes
/// unless every step succeeds.
pub async fn apply(state: &State, config: Config) -> Result<u64, ReloadError> {
    let _one_at_a_time = state.reloading.lock().await;
    let ready = prepare(state, config)?;
    commit(state, ready).await
}

/// Every check that needs no network: the files the config names, and the listeners.
fn prepare(state: &State, config: Config) -> Result<LoadedConfig, ReloadError> {
    let ready = LoadedConfig::from_config(config)?;
    let config = &ready.config;
    let current = state.snapshot();
    let old: Vec<_> = current.config.listeners.iter().map(|l| l.bind).collect();
    let new: Vec<_> = config.listeners.iter().map(|l| l.bind).collect();
    // Port 0 (tests) binds a fresh port each time, so it compares equal to anything.
    let same = old.len() == new.len()
        && old
            .iter()
            .zip(&new)
            .all(|(a, b)| a == b || b.port() == 0 || a.port() == 0);
    if !same {
        return Err(ReloadError::ListenersChanged(format!("{old:?} -> {new:?}")));
    }
    Ok(ready)
}

/// Resolves the names `ready` adds, then swaps it in.
///
/// A new name that does not resolve (a typo, a Service not created yet, the nameserver down)
/// refuses the reload only when it would leave a route with nothing to serve from: applying it
/// would turn a reload into an outage, and the refusal tells the operator at once (`switchyard
/// reload` prints it) while the previous config keeps serving. Otherwise the reload applies with
/// a warning and that pool starts empty until discovery resolves the name: a standby pool being
/// prepared must not hold up the rest of a reload (a certificate rotation, a backend removed).
async fn commit(state: &State, ready: LoadedConfig) -> Result<u64, ReloadError> {
    let new = super::discovery::resolve_new_names(state, &ready.config).await;
    if !new.failed.is_empty() {
        if let Some(route) = stranded_route(&ready.config, state, &new) {
            return Err(ReloadError::Unresolved {
                route,
                names: new.failed.join(", "),
            });
        }
        tracing::warn!(names = ?new.failed, "reload: new names did not resolve; their pools start empty until discovery resolves them");
    }
    Ok(state.apply(ready, new.resolved))
}

/// The first route whose active pools would hold no backend because their names did not resolve.
fn stranded_route(config: &Config, state: &State, new: &NewNames) -> Option<String> {
    let known = state.resolved();
    let serves = |entry: &crate::config::BackendConfig| {
        entry.hostname().is_none()
            || new.resolved.contains_key(&entry.address)
            || known.get(&entry.address).is_some_and(|a| !a.is_empty())
    };
    config
        .routes
        .iter()
        .find(|route| {
            let entries = || {
                route
                    .active
                    .iter()
                    .filter_map(|(pool, _)| config.pools.get(pool))
                    .flat_map(|p| &p.backends)
            };
            !entries().any(serves) && entries().any(|e| new.failed.contains(&e.address))
        })
        .map(|route| route.name.clone())
}

/// Polls the config file every `interval` and reloads when its contents differ both from the
/// config in force and from the last broken version tried, until `stop`. Contents rather than
/// mtime: an editor that rewrites the file twice within a second, or a Kubernetes ConfigMap
/// symlink swap, is still seen. Comparing with the snapshot's digest means a file that a SIGHUP
/// or admin reload already applied is not loaded again; a broken edit is tried once, not on
/// every tick.
pub async fn watch(
    state: Arc<State>,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tried = None;
    let mut ticks = super::periodic::Ticks::new(interval, &stop);
    while ticks.next().await {
        let current = state.snapshot();
        let source = current.config.source.clone();
        let Ok(text) = tokio::fs::read(&source).await else {
            continue;
        };
        let digest = crate::mcp::hash::stable_hash(&text);
        if digest != current.config.digest && tried != Some(digest) {
            tried = Some(digest);
            tracing::info!(file = %source.display(), "config file changed; reloading");
            let _ = reload_off_runtime(Arc::clone(&state)).await;
        }
    }
}

/// Why `switchyard reload` could not get an answer from the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    #[error("cannot connect to the admin listener at {address}: {source}")]
    Connect {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the admin listener at {address} did not answer: {source}")]
    Http {
        address: std::net::SocketAddr,
        source: hyper::Error,
    },
    #[error("the admin listener at {address} did not answer within {timeout:?}")]
    Timeout {
        address: std::net::SocketAddr,
        timeout: std::time::Duration,
    },
}

/// `POST /reload` on a running proxy's admin listener; returns the status and the JSON answer.
pub async fn request_reload(
    address: std::net::SocketAddr,
    token: Option<&str>,
) -> Result<(http::StatusCode, String), AdminCallError> {
    let timeout = std::time::Duration::from_secs(10);
    tokio::time::timeout(timeout, post_reload(address, token))
        .await
        .map_err(|_| AdminCallError::Timeout { address, timeout })?
}

async fn post_reload(
    address: std::net::SocketAddr,
    token: Option<&str>,
) -> Result<(http::StatusCode, String), AdminCallError> {
    use http_body_util::{BodyExt, Empty};
    let http = |source| AdminCallError::Http { address, source };
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|source| AdminCallError::Connect { address, source })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    tokio::spawn(connection);
    let mut request =
        http::Request::post("/reload").header(http::header::HOST, address.to_string());
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, token);
    }
    let request = request
        .body(Empty::<bytes::Bytes>::new())
        .unwrap_or_default();
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
