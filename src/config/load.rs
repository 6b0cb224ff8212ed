//! The loading step: reads the files and the variable a validated [`Config`] names into one
//! [`Loaded`]. It runs at start and on every reload, so renewed certificates and rotated keys are
//! picked up by a reload, and a file that went missing refuses the reload like a syntax error
//! would. Errors point at the place the file was named, as validation errors do.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;

use crate::mcp::seal::{SealKey, SealSetting};

use super::tls;
use super::{Config, ConfigError, FileRef, JwksSource, Place, SealConfig, TlsFiles, UpstreamTls};

/// What the files of one [`Config`] hold, ready to serve.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// One entry per listener, in config order; `None` for a listener without TLS.
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Client TLS for `https://` backends, when the config asks for it.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// Required by every admin request but `/healthz` and `/readyz` when set.
    pub admin_token: Option<AdminToken>,
    /// Whether and with which keys session ids are sealed.
    pub seal: SealSetting,
    /// The key sets `jwks_file` names, by path.
    pub jwks_files: BTreeMap<PathBuf, Arc<JwkSet>>,
}

impl Loaded {
    /// The TLS server config of listener `index`, if it has one.
    pub fn listener_tls(&self, index: usize) -> Option<&Arc<rustls::ServerConfig>> {
        self.listener_tls.get(index).and_then(Option::as_ref)
    }
}

/// A validated config together with what its files hold: what a proxy starts or reloads with.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub loaded: Loaded,
}

impl LoadedConfig {
    /// Reads, parses and validates the file at `path`, then loads the files it names.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        LoadedConfig::from_config(Config::load(path)?)
    }

    /// Loads the files `config` names.
    pub fn from_config(config: Config) -> Result<LoadedConfig, ConfigError> {
        let loaded = load_files(&config)?;
        Ok(LoadedConfig { config, loaded })
    }
}

/// Reads every certificate, key, key file and token `config` names, in the order validation
/// checks their sections, so the first error reported is the first in that order.
pub fn load_files(config: &Config) -> Result<Loaded, ConfigError> {
    read_all(config).map_err(|(at, message)| ConfigError::at(&config.source, at, message))
}

fn read_all(config: &Config) -> Result<Loaded, Failure> {
    // Fields are evaluated in the order written: listeners, admin, upstream, sessions.
    Ok(Loaded {
        listener_tls: config
            .listeners
            .iter()
            .map(|l| l.tls.as_ref().map(listener_tls).transpose())
            .collect::<Result<_, _>>()?,
        admin_token: config
            .admin
            .as_ref()
            .and_then(|a| a.token_file.as_ref())
            .map(read_token)
            .transpose()?,
        upstream_tls: config.upstream.tls.as_ref().map(upstream_tls).transpose()?,
        seal: seal_setting(&config.sessions.seal)?,
        jwks_files: jwks_files(config)?,
    })
}

fn jwks_files(config: &Config) -> Result<BTreeMap<PathBuf, Arc<JwkSet>>, Failure> {
    let policies = config.routes.iter().filter_map(|r| r.policy.as_ref());
    let files = config
        .policy
        .iter()
        .chain(policies)
        .filter_map(|p| p.auth.as_ref())
        .filter_map(|a| match &a.jwks {
            JwksSource::File(file) => Some(file),
            JwksSource::Url(_) => None,
        });
    let mut sets = BTreeMap::new();
    for file in files {
        let set = read_jwks(&file.path).map_err(|why| (file.at, why))?;
        sets.insert(file.path.clone(), Arc::new(set));
    }
    Ok(sets)
}

/// Reads a JWKS file (RFC 7517 `{"keys": [...]}`), as loading and every refresh do.
pub fn read_jwks(path: &Path) -> Result<JwkSet, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read JWKS file `{shown}`: {e}"))?;
    parse_jwks(text.as_bytes()).map_err(|why| format!("JWKS file `{shown}`: {why}"))
}

/// A key set as served or stored: `{"keys": [...]}` with at least one key.
pub fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JSON Web Key Set ({{\"keys\": [...]}}): {e}"))?;
    if set.keys.is_empty() {
        return Err("holds no key".into());
    }
    Ok(set)
}

/// A loading failure before it is given the config file's name: where, and what.
type Failure = (Place, String);

fn listener_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, Failure> {
    // Each pair on its own first, so an error points at the entry that caused it.
    let provider = tls::provider();
    let certs = files
        .pairs
        .iter()
        .map(|p| {
            tls::load_certified_key(&p.pair, &provider)
                .map(Arc::new)
                .map_err(|e| (p.at, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client_ca = files.client_ca.as_ref().map(|ca| ca.path.as_path());
    tls::server_config_from_keys(certs, client_ca, provider).map_err(|e| {
        let at = files.client_ca.as_ref().map_or(files.at, |ca| ca.at);
        (at, e.to_string())
    })
}

fn upstream_tls(settings: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, Failure> {
    let ca = settings.ca.as_ref();
    tls::client_config(ca.map(|ca| ca.path.as_path())).map_err(|e| {
        // Without a `ca`, the failure is the system store's, which no line of the file names.
        let at = ca.map_or(Place::FILE, |ca| ca.at);
        (at, e.to_string())
    })
}

/// The admin API's bearer token, read from `token_file`. Never printed, not even by `Debug`.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    /// Compares in constant time (`subtle`), so the token cannot be guessed byte by byte from
    /// response times; only a length difference shows.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(presented))
    }

    /// The `Authorization` header value a client of the admin API (e.g. `switchyard reload`) sends.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

fn read_token(file: &FileRef) -> Result<AdminToken, Failure> {
    AdminToken::from_file(&file.path).map_err(|message| (file.at, message))
}

impl AdminToken {
    /// Reads a token file as `[admin] token_file` names it (also `switchyard reload
    /// --token-file`): the file's content less surrounding whitespace, at least 16 characters.
    pub fn from_file(path: &Path) -> Result<AdminToken, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read admin token file `{shown}`: {e}"))?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(format!(
                "admin token file `{shown}` must hold a token of at least 16 characters"
            ));
        }
        Ok(AdminToken(Arc::from(token)))
    }
}

fn seal_setting(seal: &SealConfig) -> Result<SealSetting, Failure> {
    Ok(match seal {
        SealConfig::Off => SealSetting::Off,
        SealConfig::Ephemeral => SealSetting::Ephemeral,
        SealConfig::KeysFile(file) => SealSetting::Keys(keys_from_file(file)?),
        SealConfig::KeysEnv { name, at } => SealSetting::Keys(keys_from_env(name, *at)?),
    })
}

fn keys_from_file(file: &FileRef) -> Result<Vec<SealKey>, Failure> {
    let path = file.path.display();
    let text = std::fs::read_to_string(&file.path)
        .map_err(|e| (file.at, format!("cannot read key file {path}: {e}")))?;
    parse_keys(&text).map_err(|why| (file.at, format!("key file {path}: {why}")))
}

fn keys_from_env(name: &str, at: Place) -> Result<Vec<SealKey>, Failure> {
    let text = std::env::var(name)
        .map_err(|_| (at, format!("environment variable `{name}` is not set")))?;
    // Several keys in one variable: separated by newlines, commas or spaces.
    let lines = text.replace([',', ' '], "\n");
    parse_keys(&lines).map_err(|why| (at, format!("`{name}`: {why}")))
}

/// One base64 key per line; blank lines and `#` comments skipped; the first key seals.
fn parse_keys(text: &str) -> Result<Vec<SealKey>, String> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = SealKey::parse(line).map_err(|why| format!("line {}: {why}", number + 1))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("holds no key".into());
    }
    Ok(keys)
}
