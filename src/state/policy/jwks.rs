//! The keys that sign bearer tokens, kept fresh: read from a file or fetched from an `https://`
//! URL, again every `jwks_refresh`, and at once when a token names a key id (`kid`) the set
//! does not hold (the issuer rotated its keys) unless the last look was under
//! [`UNKNOWN_KID_COOLDOWN`] ago, so that tokens with made-up ids cannot make the proxy hammer
//! the issuer. A failed refresh keeps the keys it had.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{AlgorithmFamily, DecodingKey};

use crate::config::{JwksSource, read_jwks};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::upstream::backend::{Backend, Exchange, PoolLimits};
use crate::upstream::body::RequestBody;
use crate::upstream::h1::Outbound;

/// The shortest time between two refreshes that unknown key ids cause.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(10);
/// A key set larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One verification key of the set.
pub struct Key {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?}, {:?})", self.kid, self.family)
    }
}

/// The usable keys of a set: RSA, EC and OKP keys; symmetric (`oct`) keys never, since a
/// published secret would let anyone sign.
pub fn usable_keys(set: &JwkSet) -> Vec<Key> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                _ => return None,
            };
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                family,
                key,
            })
        })
        .collect()
}

#[derive(Debug)]
pub struct JwksStore {
    source: JwksSource,
    keys: Mutex<Arc<Vec<Key>>>,
    /// When keys were last looked for (whatever came of it); `None`: never.
    last_look: Mutex<Option<Instant>>,
    /// When an unknown key id last made the store look.
    last_unknown: Mutex<Option<Instant>>,
    /// One refresh at a time; callers that waited find the keys it brought.
    refreshing: tokio::sync::Mutex<()>,
    /// The issuer, as a backend, for `https://` sources.
    issuer: Option<Arc<Backend>>,
}

impl JwksStore {
    /// A store for `source`, holding `initial` (what loading read from a file) until refreshed.
    pub fn new(source: &JwksSource, initial: Option<&JwkSet>) -> JwksStore {
        let issuer = match source {
            JwksSource::Url(url) => url.authority().and_then(|authority| {
                let port = authority.port_u16().unwrap_or(443);
                let address = format!("https://{}:{port}", authority.host());
                Backend::new(&address, &tokio_util::sync::CancellationToken::new())
            }),
            JwksSource::File(_) => None,
        };
        let loaded = initial.is_some();
        JwksStore {
            source: source.clone(),
            keys: Mutex::new(Arc::new(initial.map(usable_keys).unwrap_or_default())),
            last_look: Mutex::new(loaded.then(Instant::now)),
            last_unknown: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            issuer,
        }
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    pub fn keys(&self) -> Arc<Vec<Key>> {
        Arc::clone(&self.keys.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts in the keys a reload read from the file.
    pub fn replace(&self, set: &JwkSet) {
        *self.keys.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(usable_keys(set));
        *self
            .last_look
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    fn within(clock: &Mutex<Option<Instant>>, span: Duration) -> bool {
        clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < span)
    }

    /// The periodic refresh: unless the keys were looked for under `interval` ago.
    pub async fn refresh_if_due(
        &self,
        interval: Duration,
        metrics: &Metrics,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) {
        if Self::within(&self.last_look, interval) {
            return;
        }
        let _one = self.refreshing.lock().await;
        if !Self::within(&self.last_look, interval) {
            self.refresh(metrics, tls).await;
        }
    }

    /// A token named a key id the set lacks: look again, unless an unknown id already made the
    /// store look under [`UNKNOWN_KID_COOLDOWN`] ago.
    pub async fn refresh_for_unknown_kid(
        &self,
        metrics: &Metrics,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) {
        if Self::within(&self.last_unknown, UNKNOWN_KID_COOLDOWN) {
            return;
        }
        let _one = self.refreshing.lock().await;
        // Another caller looked while this one waited: its keys will do.
        if Self::within(&self.last_unknown, UNKNOWN_KID_COOLDOWN) {
            return;
        }
        let now = Some(Instant::now());
        *self
            .last_unknown
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now;
        self.refresh(metrics, tls).await;
    }

    async fn refresh(&self, metrics: &Metrics, tls: Option<&Arc<rustls::ClientConfig>>) {
        *self
            .last_look
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let outcome = match self.fetch(tls).await {
            Ok(set) => {
                *self.keys.lock().unwrap_or_else(PoisonError::into_inner) =
                    Arc::new(usable_keys(&set));
                "success"
            }
            Err(why) => {
                tracing::warn!(source = %self.describe(), %why, "cannot refresh the JWKS; keeping the keys held");
                "failure"
            }
        };
        metrics
            .jwks_refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn describe(&self) -> String {
        match &self.source {
            JwksSource::File(file) => file.path.display().to_string(),
            JwksSource::Url(url) => url.to_string(),
        }
    }

    async fn fetch(&self, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<JwkSet, String> {
        match &self.source {
            JwksSource::File(file) => {
                let path = file.path.clone();
                tokio::task::spawn_blocking(move || read_jwks(&path))
                    .await
                    .map_err(|e| e.to_string())?
            }
            JwksSource::Url(url) => {
                let issuer = self.issuer.as_ref().ok_or("the JWKS URL names no host")?;
                tokio::time::timeout(FETCH_TIMEOUT, fetch_url(issuer, url, tls))
                    .await
                    .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
            }
        }
    }
}

async fn fetch_url(
    issuer: &Backend,
    url: &http::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<JwkSet, String> {
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, issuer.authority.as_str())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "switchyard-jwks")
        .body(RequestBody::empty())
        .map_err(|e| e.to_string())?;
    let limits = PoolLimits {
        max_idle: 0,
        idle_timeout: Duration::ZERO,
    };
    let Exchange { response, .. } = issuer
        .send(
            Outbound::boxed(request),
            FETCH_TIMEOUT,
            FETCH_TIMEOUT,
            limits,
            tls,
        )
        .await
        .map_err(|(error, _)| error.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?
        .to_bytes();
    crate::config::parse_jwks(&body).map_err(|why| format!("{url}: {why}"))
}
