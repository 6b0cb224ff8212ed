//! Configuration: strict TOML in, a validated [`Config`] out, then the files it names loaded.
//!
//! Three steps, each in its own file:
//!
//! 1. `raw.rs`: serde reads a raw shape that rejects unknown keys (as in sozu's
//!    `command/src/config.rs`);
//! 2. `validate.rs` (with `values.rs` for single values): the raw shape becomes a [`Config`] of
//!    types the proxy uses without further checks. This step reads no file, so a [`Config`] is
//!    plain data that compares with `==`, and each file path keeps the place it was written;
//! 3. `load.rs`: [`load_files`] reads what the config names (certificates and keys via [`tls`],
//!    seal keys, the admin token) into one [`Loaded`].
//!
//! Every error names the file, the line and column, and what is wrong, like `nginx -t`, whichever
//! step finds it. [`LoadedConfig::load`] runs all three for callers that want a config ready to
//! serve; a reload runs all three and changes nothing unless every one succeeds.

mod load;
mod policy;
mod raw;
mod routes;
mod summary;
pub mod tls;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use load::{AdminToken, Loaded, LoadedConfig, load_files, parse_jwks, read_jwks};
pub use policy::{
    AllowRule, AuthConfig, Grant, JwksSource, JwtAlgorithm, LimitConfig, LimitKey, PolicyConfig,
    ResourceMetadata,
};
pub use routes::{HeaderRules, HostMatch, HostPolicy, PathMatch, RouteConfig, RouteTimeouts};

/// A configuration that passed validation: every pool exists, every address parses. Files it names
/// are referenced, not read: see [`load_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: PathBuf,
    /// Hash of the text this config was parsed from: the file watch compares against it.
    pub digest: u64,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub pools: BTreeMap<String, PoolConfig>,
    /// Never empty: without `[[route]]` one route takes every request to `[routing] active`.
    pub routes: Vec<RouteConfig>,
    pub trusted_proxies: Vec<Cidr>,
    pub sessions: SessionConfig,
    pub timeouts: Timeouts,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    /// Poll the config file this often and reload when it changes; `None` = off.
    pub watch_interval: Option<Duration>,
    pub health: HealthConfig,
    pub log: LogConfig,
    pub discovery: DiscoveryConfig,
    /// `[policy]`: MCP call metrics, rate limits, authentication; `None`: requests pass blind.
    pub policy: Option<PolicyConfig>,
    pub lifecycle: LifecycleConfig,
}

/// How this process starts next to, and hands over to, another one (`[lifecycle]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// The Unix socket a `run --upgrade` process reaches this one through; `None`: a path in the
    /// temporary directory derived from the config file's path (see `control::upgrade`).
    pub upgrade_socket: Option<FileRef>,
    /// Bind with `SO_REUSEPORT`, letting other processes bind the same ports and share their
    /// connections. Off: a busy port is a start error.
    pub reuse_port: bool,
}

/// Where something was written in the config file, 1-based; errors about it point here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub line: usize,
    pub column: usize,
}

impl Place {
    /// The whole file, for errors no single key caused.
    pub const FILE: Place = Place { line: 1, column: 1 };
}

/// A file the config names: its path, already resolved against the config file's directory,
/// and where the path was written, so an error reading it points at that place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub path: PathBuf,
    pub at: Place,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    /// The certificate files; loaded by [`load_files`], and again on every reload, so new
    /// handshakes after a reload use the new files.
    pub tls: Option<TlsFiles>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header naming the client.
    pub proxy_protocol: bool,
    /// A redirect listener answers every request with `301` to its `https://` URL.
    pub redirect: Option<Redirect>,
}

/// A TLS listener's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The first pair is the default for clients whose SNI name matches no certificate.
    pub pairs: Vec<CertPairRef>,
    /// Client certificates are required and verified against this CA when set.
    pub client_ca: Option<FileRef>,
    /// The `tls = …` value, where errors about the whole set point (when no `client_ca` is set).
    pub at: Place,
}

/// One certificate and key, and the place an error about either points at: the `cert` key of
/// `tls = { cert, key }`, or the entry of `certificates = [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPairRef {
    pub pair: tls::CertPair,
    pub at: Place,
}

/// Where a redirect listener sends clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `https://` + the request's host (port dropped) + path and query, like nginx's
    /// `return 301 https://$host$request_uri`.
    SameHost,
    /// This base URL (no trailing `/`) + path and query.
    To(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// The bearer token every admin request but `/healthz` and `/readyz` needs, when set.
    pub token_file: Option<FileRef>,
    /// Admin connections at once, apart from the client listeners' `max_connections`, so that
    /// neither can use up the other's file descriptors.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `info,switchyard=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The address as written (`host:port`), which is also the backend's identity across reloads.
    pub address: String,
    pub weight: u32,
}

impl BackendConfig {
    /// `(host, port)` when the entry names a host rather than an IP address: the entry that
    /// discovery resolves. `https://` entries are left alone: their name is what TLS verifies
    /// and sends as SNI, so they are resolved per connection instead.
    pub fn hostname(&self) -> Option<(&str, u16)> {
        if self.address.contains("://") {
            return None;
        }
        let (host, port) = self.address.rsplit_once(':')?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if literal.parse::<IpAddr>().is_ok() {
            return None;
        }
        Some((host, port.parse().ok()?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    /// Whether session ids are sealed into tokens any replica can route (see `mcp/seal.rs`).
    pub seal: SealConfig,
}

/// Sealing as configured; the keys themselves are read by [`load_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealConfig {
    Off,
    /// A random per-process key: `seal = true` without a key source.
    Ephemeral,
    /// One base64 key per line of this file.
    KeysFile(FileRef),
    /// Keys in this environment variable, separated by newlines, commas or spaces.
    KeysEnv {
        name: String,
        at: Place,
    },
}

/// Re-resolving pool entries written as hostnames (`fleet.internal:3000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `None` turns discovery off: hostnames are then resolved per connection.
    pub interval: Option<Duration>,
    /// A nameserver to ask instead of the system resolver.
    pub resolver: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub stream_idle: Option<Duration>,
    pub sse_keepalive: Option<Duration>,
    pub drain: Duration,
    /// Longest silence between two reads of a client's request body (nginx
    /// `client_body_timeout`); `None`: no limit.
    pub client_body: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
    pub retries: usize,
    /// Client TLS for `https://` backends; present only when some backend or `ca` needs it.
    pub tls: Option<UpstreamTls>,
}

/// What the client TLS config of `https://` backends trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `[upstream] ca`; `None`: the system's roots.
    pub ca: Option<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// PROXY header plus TLS handshake must complete within this.
    pub handshake_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// `None`: no limit.
    pub max_request_body: Option<u64>,
    pub http2_max_concurrent_streams: u32,
}

/// Upstream health: active probes (only when a `[health]` table is present), passive ejection
/// (always on unless `max_fails = 0`), and what to do when a whole pool is unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub probes: Option<ProbeConfig>,
    /// Failures of real traffic that were the backend's doing (see
    /// `UpstreamError::counts_against_backend`) within `fail_window` that eject a backend; 0 turns
    /// passive detection off.
    pub max_fails: u32,
    pub fail_window: Duration,
    /// How long an ejected backend takes no traffic; with probes on, it then needs `rise` passes.
    pub ejection: Duration,
    /// When no backend of the active pools is healthy, send to all of them (Envoy's panic mode)
    /// instead of answering `503`.
    pub fail_open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    /// Extra random delay, up to this, added to every interval.
    pub jitter: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Inclusive range of statuses that count as a pass.
    pub expect_status: (u16, u16),
}

/// A CIDR block such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let ignored = u32::from(bits - prefix);
    a.checked_shr(ignored).unwrap_or(0) == b.checked_shr(ignored).unwrap_or(0)
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why a configuration was refused. Displays as `FILE:LINE:COL: message` where a place is known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl ConfigError {
    fn at(file: &Path, place: Place, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line: place.line,
            column: place.column,
            message,
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`; reads none of the files it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `source` names the file in error messages, and relative
    /// paths in the config are resolved against its directory.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, source)
    }
}

/// A duration as written in the config and on the command line: whole numbers with units, one
/// or several, as in `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"` or `"1d"` (units from `ns` to
/// `d` and `w`; humantime's grammar); `"0s"` means off where allowed. The one parser of both, so
/// a value that works in a file works on the command line.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{text}` needs a unit: write \"{text}s\", \"{text}ms\" or \"{text}m\""
        ));
    }
    humantime::parse_duration(text).map_err(|error| {
        format!("`{text}` is not a duration ({error}): write e.g. \"30s\", \"1m30s\" or \"250ms\"")
    })
}
