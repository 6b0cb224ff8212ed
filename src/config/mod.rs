//! Configuration: strict TOML in, a validated [`Config`] out.
//!
//! Parsing happens in two steps (as in sozu's `command/src/config.rs`): serde reads a raw shape that
//! rejects unknown keys, then validation turns it into types the proxy can use without further
//! checks. Every error names the file, the line and column, and what is wrong, like `nginx -t`.

pub mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A configuration that passed validation: every pool exists, every address parses.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    /// Hash of the text this config was parsed from: the file watch compares against it.
    pub digest: u64,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub pools: BTreeMap<String, PoolConfig>,
    pub active: Vec<(String, u32)>,
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
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    /// Loaded and checked at validation; new handshakes after a reload use the new one.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header naming the client.
    pub proxy_protocol: bool,
    /// A redirect listener answers every request with `301` to its `https://` URL.
    pub redirect: Option<Redirect>,
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

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// Required by every admin request but `/healthz` and `/readyz` when set.
    pub token: Option<AdminToken>,
}

/// The admin API's bearer token, read from `token_file`. Never printed, not even by `Debug`.
#[derive(Clone)]
pub struct AdminToken(std::sync::Arc<str>);

impl AdminToken {
    /// Compares in time that depends only on the lengths, so the token cannot be guessed byte by
    /// byte from response times.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let differences = expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        differences == 0 && expected.len() == presented.len()
    }
}

impl AdminToken {
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

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `info,switchyard=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    /// Whether session ids are sealed into tokens any replica can route (see `seal.rs`).
    pub seal: crate::mcp::seal::SealSetting,
}

/// Re-resolving pool entries written as hostnames (`fleet.internal:3000`).
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// `None` turns discovery off: hostnames are then resolved per connection.
    pub interval: Option<Duration>,
    /// A nameserver to ask instead of the system resolver.
    pub resolver: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub stream_idle: Option<Duration>,
    pub sse_keepalive: Option<Duration>,
    pub drain: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
    pub retries: usize,
    /// Client TLS for `https://` backends; built only when some backend or `ca` needs it.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub probes: Option<ProbeConfig>,
    /// Failures of real traffic (connect errors and timeouts) within `fail_window` that eject a
    /// backend; 0 turns passive detection off.
    pub max_fails: u32,
    pub fail_window: Duration,
    /// How long an ejected backend takes no traffic; with probes on, it then needs `rise` passes.
    pub ejection: Duration,
    /// When no backend of the active pools is healthy, send to all of them (Envoy's panic mode)
    /// instead of answering `503`.
    pub fail_open: bool,
}

#[derive(Debug, Clone)]
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

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `source` names the file in error messages.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let place = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = line_column(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                file: source.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| place(e.span(), e.message().trim().to_string()))?;
        let mut config = raw
            .validate(source)
            .map_err(|Invalid { span, message }| place(span, message))?;
        config.digest = crate::mcp::hash::stable_hash(text.as_bytes());
        Ok(config)
    }

    /// A short human summary, printed by `switchyard check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for listener in &self.listeners {
            let kind = match (&listener.redirect, &listener.tls) {
                (Some(_), _) => "redirect to https",
                (None, Some(_)) => "https: h2, http/1.1",
                (None, None) => "http/1.1, h2c",
            };
            let proxy = if listener.proxy_protocol {
                ", PROXY protocol"
            } else {
                ""
            };
            out.push_str(&format!("listener  {} ({kind}{proxy})\n", listener.bind));
        }
        if let Some(admin) = &self.admin {
            let auth = if admin.token.is_some() {
                " (bearer token required)"
            } else {
                ""
            };
            out.push_str(&format!("admin     {}{auth}\n", admin.bind));
        }
        for (name, pool) in &self.pools {
            let backends: Vec<String> = pool
                .backends
                .iter()
                .map(|b| format!("{} (weight {})", b.address, b.weight))
                .collect();
            out.push_str(&format!("pool      {name}: {}\n", backends.join(", ")));
        }
        let active: Vec<String> = self
            .active
            .iter()
            .map(|(pool, weight)| format!("{pool} ({weight})"))
            .collect();
        out.push_str(&format!("active    {}\n", active.join(", ")));
        let sessions = match &self.sessions.seal {
            crate::mcp::seal::SealSetting::Keys(keys) => {
                format!("sealed ({} key(s), the first seals)", keys.len())
            }
            crate::mcp::seal::SealSetting::Ephemeral => {
                "sealed with a random per-process key (single replica only)".to_string()
            }
            crate::mcp::seal::SealSetting::Off => "in-memory table (sealing off)".to_string(),
        };
        out.push_str(&format!("sessions  {sessions}\n"));
        if let Some(interval) = self.discovery.interval {
            let names = self
                .pools
                .values()
                .flat_map(|p| &p.backends)
                .filter(|b| b.hostname().is_some())
                .count();
            if names > 0 {
                let via = self
                    .discovery
                    .resolver
                    .map_or_else(|| "the system resolver".to_string(), |r| r.to_string());
                out.push_str(&format!(
                    "discovery {names} hostname entr(ies) every {interval:?} via {via}\n"
                ));
            }
        }
        out
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

struct Invalid {
    span: Option<std::ops::Range<usize>>,
    message: String,
}

fn invalid<T>(value: &Spanned<T>, message: String) -> Invalid {
    Invalid {
        span: Some(value.span()),
        message,
    }
}

/// A duration written as `"250ms"`, `"30s"`, `"5m"` or `"1h"`; `"0s"` means off where allowed.
/// A duration as written in the config and on the command line: a whole number and a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: ms, s, m or h (e.g. \"30s\")"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like \"30s\""))?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(format!("`{text}`: unit must be ms, s, m or h")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listener: Vec<RawListener>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    routing: Option<RawRouting>,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    reload: RawReload,
    health: Option<RawHealth>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    discovery: RawDiscovery,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReload {
    watch_interval: RawDuration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    interval: RawDuration,
    resolver: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    bind: Spanned<String>,
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    redirect_https: Option<Spanned<bool>>,
    redirect: Option<Spanned<String>>,
}

/// `tls = { cert = "…", key = "…" }`, optionally with more pairs chosen by SNI in
/// `certificates = [{ cert = "…", key = "…" }, …]` and client certificates checked against
/// `client_ca`. The first pair is the default for clients that match no certificate.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    #[serde(default)]
    certificates: Vec<Spanned<RawCertPair>>,
    client_ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertPair {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Spanned<String>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    backends: Spanned<Vec<Spanned<RawBackend>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    active: Spanned<RawActive>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawActive {
    One(String),
    Split(BTreeMap<String, u32>),
}

type RawDuration = Option<Spanned<String>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    idle_timeout: RawDuration,
    max_sessions: Option<usize>,
    seal: Option<Spanned<bool>>,
    seal_keys_file: Option<Spanned<String>>,
    seal_keys_env: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: RawDuration,
    response: RawDuration,
    stream_idle: RawDuration,
    sse_keepalive: RawDuration,
    drain: RawDuration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    max_idle_per_backend: Option<usize>,
    idle_timeout: RawDuration,
    retries: Option<usize>,
    ca: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    header_read_timeout: RawDuration,
    handshake_timeout: RawDuration,
    max_header_size: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    max_request_body: Option<u64>,
    http2_max_concurrent_streams: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    interval: RawDuration,
    timeout: RawDuration,
    jitter: RawDuration,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    expect_status: Option<Spanned<String>>,
    max_fails: Option<u32>,
    fail_window: RawDuration,
    ejection: RawDuration,
    fail_open: Option<bool>,
}

fn duration(raw: &RawDuration, default: Duration) -> Result<Duration, Invalid> {
    match raw {
        None => Ok(default),
        Some(text) => parse_duration(text.get_ref()).map_err(|m| invalid(text, m)),
    }
}

/// Like [`duration`], but `"0s"` turns the feature off.
fn optional_duration(raw: &RawDuration, default: Duration) -> Result<Option<Duration>, Invalid> {
    duration(raw, default).map(|d| Some(d).filter(|d| !d.is_zero()))
}

fn socket_addr(text: &Spanned<String>) -> Result<SocketAddr, Invalid> {
    text.get_ref().parse().map_err(|_| {
        invalid(
            text,
            format!("`{}` is not an address like 127.0.0.1:8080", text.get_ref()),
        )
    })
}

impl RawConfig {
    fn validate(self, source: &Path) -> Result<Config, Invalid> {
        let whole_file = |message: &str| Invalid {
            span: None,
            message: message.to_string(),
        };
        if self.listener.is_empty() {
            return Err(whole_file(
                "no [[listener]]: add one, e.g. bind = \"127.0.0.1:8080\"",
            ));
        }
        let listeners = self
            .listener
            .iter()
            .map(|l| validate_listener(l, source))
            .collect::<Result<_, _>>()?;
        let admin = self
            .admin
            .as_ref()
            .map(|a| validate_admin(a, source))
            .transpose()?;
        let log = LogConfig {
            level: match &self.log.level {
                Some(level) => validate_log_level(level)?,
                None => "info".to_string(),
            },
        };
        let pools = self
            .pools
            .iter()
            .map(|(name, pool)| Ok((name.clone(), validate_pool(name, pool)?)))
            .collect::<Result<BTreeMap<_, _>, Invalid>>()?;
        let routing = self
            .routing
            .ok_or_else(|| whole_file("no [routing]: set routing.active to a pool name"))?;
        let active = validate_active(&routing.active, &pools)?;
        let upstream_tls = upstream_tls(self.upstream.ca.as_ref(), &pools, source)?;
        let health = validate_health(self.health.as_ref())?;
        let trusted_proxies = routing
            .trusted_proxies
            .iter()
            .map(|c| c.get_ref().parse::<Cidr>().map_err(|m| invalid(c, m)))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            source: source.to_path_buf(),
            digest: 0,
            listeners,
            admin,
            pools,
            active,
            trusted_proxies,
            sessions: SessionConfig {
                idle_timeout: duration(&self.sessions.idle_timeout, Duration::from_secs(3600))?,
                max_sessions: self.sessions.max_sessions.unwrap_or(1_000_000),
                seal: seal_setting(&self.sessions, source)?,
            },
            timeouts: Timeouts {
                connect: duration(&self.timeouts.connect, Duration::from_secs(3))?,
                response: duration(&self.timeouts.response, Duration::from_secs(120))?,
                stream_idle: optional_duration(
                    &self.timeouts.stream_idle,
                    Duration::from_secs(3600),
                )?,
                sse_keepalive: optional_duration(
                    &self.timeouts.sse_keepalive,
                    Duration::from_secs(15),
                )?,
                drain: duration(&self.timeouts.drain, Duration::from_secs(30))?,
            },
            upstream: UpstreamConfig {
                max_idle_per_backend: self.upstream.max_idle_per_backend.unwrap_or(64),
                idle_timeout: duration(&self.upstream.idle_timeout, Duration::from_secs(60))?,
                retries: self.upstream.retries.unwrap_or(2),
                tls: upstream_tls,
            },
            limits: validate_limits(&self.limits)?,
            watch_interval: optional_duration(&self.reload.watch_interval, Duration::ZERO)?,
            health,
            log,
            discovery: DiscoveryConfig {
                interval: optional_duration(&self.discovery.interval, Duration::from_secs(10))?,
                resolver: self
                    .discovery
                    .resolver
                    .as_ref()
                    .map(nameserver_addr)
                    .transpose()?,
            },
        })
    }
}

/// A path from the config, relative to the config file's directory like nginx's `include`.
fn config_path(text: &Spanned<String>, source: &Path) -> PathBuf {
    let path = Path::new(text.get_ref());
    match source.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

fn validate_listener(raw: &RawListener, source: &Path) -> Result<ListenerConfig, Invalid> {
    let bind = socket_addr(&raw.bind)?;
    let redirect = match (&raw.redirect, &raw.redirect_https) {
        (Some(_), Some(flag)) if *flag.get_ref() => {
            return Err(invalid(
                flag,
                "set either redirect_https or redirect, not both".into(),
            ));
        }
        (Some(url), _) => Some(Redirect::To(redirect_base(url)?)),
        (None, Some(flag)) if *flag.get_ref() => Some(Redirect::SameHost),
        (None, _) => None,
    };
    let tls = match &raw.tls {
        Some(tls) => Some(listener_tls(tls, source)?),
        None => None,
    };
    Ok(ListenerConfig {
        bind,
        tls,
        proxy_protocol: raw.proxy_protocol,
        redirect,
    })
}

fn redirect_base(url: &Spanned<String>) -> Result<String, Invalid> {
    let text = url.get_ref().trim_end_matches('/');
    let parsed: Option<http::Uri> = text.parse().ok();
    let usable = parsed.is_some_and(|uri| {
        uri.scheme_str()
            .is_some_and(|s| s == "https" || s == "http")
            && uri.authority().is_some()
    });
    if !usable {
        return Err(invalid(
            url,
            format!(
                "redirect `{}` is not a URL like https://example.com",
                url.get_ref()
            ),
        ));
    }
    Ok(text.to_string())
}

fn listener_tls(
    raw: &Spanned<RawTls>,
    source: &Path,
) -> Result<Arc<rustls::ServerConfig>, Invalid> {
    let tls = raw.get_ref();
    let mut pairs: Vec<(crate::config::tls::CertPair, std::ops::Range<usize>)> = Vec::new();
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => pairs.push((
            crate::config::tls::CertPair {
                cert: config_path(cert, source),
                key: config_path(key, source),
            },
            cert.span(),
        )),
        (None, None) => {}
        _ => return Err(invalid(raw, "tls needs both cert and key".into())),
    }
    for pair in &tls.certificates {
        pairs.push((
            crate::config::tls::CertPair {
                cert: config_path(&pair.get_ref().cert, source),
                key: config_path(&pair.get_ref().key, source),
            },
            pair.span(),
        ));
    }
    if pairs.is_empty() {
        return Err(invalid(
            raw,
            "tls needs a certificate: tls = { cert = \"…\", key = \"…\" }".into(),
        ));
    }
    // Load each pair on its own first, so an error points at the entry that caused it.
    let provider = crate::config::tls::provider();
    for (pair, span) in &pairs {
        crate::config::tls::load_certified_key(pair, &provider).map_err(|e| Invalid {
            span: Some(span.clone()),
            message: e.to_string(),
        })?;
    }
    let client_ca = tls.client_ca.as_ref().map(|ca| config_path(ca, source));
    let pairs: Vec<_> = pairs.into_iter().map(|(pair, _)| pair).collect();
    crate::config::tls::server_config(&pairs, client_ca.as_deref()).map_err(|e| {
        let span = tls
            .client_ca
            .as_ref()
            .map_or_else(|| raw.span(), Spanned::span);
        Invalid {
            span: Some(span),
            message: e.to_string(),
        }
    })
}

fn upstream_tls(
    ca: Option<&Spanned<String>>,
    pools: &BTreeMap<String, PoolConfig>,
    source: &Path,
) -> Result<Option<Arc<rustls::ClientConfig>>, Invalid> {
    let needed = pools
        .values()
        .flat_map(|p| &p.backends)
        .any(|b| b.address.starts_with("https://"));
    if !needed && ca.is_none() {
        return Ok(None);
    }
    let path = ca.map(|ca| config_path(ca, source));
    crate::config::tls::client_config(path.as_deref())
        .map(Some)
        .map_err(|e| Invalid {
            span: ca.map(Spanned::span),
            message: e.to_string(),
        })
}

fn validate_limits(raw: &RawLimits) -> Result<Limits, Invalid> {
    // hyper refuses a read buffer below 8 KiB.
    let max_header_size =
        raw.max_header_size
            .as_ref()
            .map_or(Ok(65_536), |size| match *size.get_ref() {
                s @ 8192..=16_777_216 => Ok(s),
                _ => Err(invalid(
                    size,
                    "max_header_size must be 8192..=16777216 bytes".into(),
                )),
            })?;
    let max_headers = raw
        .max_headers
        .as_ref()
        .map_or(Ok(100), |count| match *count.get_ref() {
            c @ 1..=10_000 => Ok(c),
            _ => Err(invalid(count, "max_headers must be 1..=10000".into())),
        })?;
    let http2_max_concurrent_streams =
        raw.http2_max_concurrent_streams
            .as_ref()
            .map_or(Ok(100), |count| match *count.get_ref() {
                0 => Err(invalid(
                    count,
                    "http2_max_concurrent_streams must be at least 1".into(),
                )),
                c => Ok(c),
            })?;
    Ok(Limits {
        max_connections: raw.max_connections.unwrap_or(100_000),
        header_read_timeout: duration(&raw.header_read_timeout, Duration::from_secs(10))?,
        handshake_timeout: duration(&raw.handshake_timeout, Duration::from_secs(10))?,
        max_header_size,
        max_headers,
        max_request_body: Some(raw.max_request_body.unwrap_or(10 * 1024 * 1024))
            .filter(|limit| *limit > 0),
        http2_max_concurrent_streams,
    })
}

/// Without a `[health]` table, backends are never probed (a fleet without `/healthz` must not be
/// marked down by surprise), but real traffic still ejects failing ones.
fn validate_health(raw: Option<&RawHealth>) -> Result<HealthConfig, Invalid> {
    let default = RawHealth::default();
    let section = raw.unwrap_or(&default);
    let probes = match raw {
        Some(raw) => validate_probes(raw)?,
        None => None,
    };
    Ok(HealthConfig {
        probes,
        max_fails: section.max_fails.unwrap_or(3),
        fail_window: duration(&section.fail_window, Duration::from_secs(10))?,
        ejection: duration(&section.ejection, Duration::from_secs(10))?,
        fail_open: section.fail_open.unwrap_or(false),
    })
}

fn validate_probes(raw: &RawHealth) -> Result<Option<ProbeConfig>, Invalid> {
    let Some(interval) = optional_duration(&raw.interval, Duration::from_secs(5))? else {
        return Ok(None);
    };
    let timeout = duration(&raw.timeout, Duration::from_secs(2))?;
    if let (Some(text), true) = (&raw.timeout, timeout.is_zero()) {
        return Err(invalid(text, "health.timeout must be above 0".into()));
    }
    let path = match &raw.path {
        None => http::uri::PathAndQuery::from_static("/healthz"),
        Some(text) => text
            .get_ref()
            .parse()
            .ok()
            .filter(|_| text.get_ref().starts_with('/'))
            .ok_or_else(|| {
                invalid(
                    text,
                    format!("`{}` is not a path like /healthz", text.get_ref()),
                )
            })?,
    };
    let threshold = |value: &Option<Spanned<u32>>, name: &str, default: u32| match value {
        None => Ok(default),
        Some(v) if (1..=100).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(invalid(v, format!("health.{name} must be 1..=100"))),
    };
    let expect_status = match &raw.expect_status {
        None => (200, 399),
        Some(text) => parse_status_range(text.get_ref()).map_err(|m| invalid(text, m))?,
    };
    Ok(Some(ProbeConfig {
        path,
        interval,
        timeout,
        jitter: duration(&raw.jitter, interval / 10)?,
        rise: threshold(&raw.rise, "rise", 2)?,
        fall: threshold(&raw.fall, "fall", 3)?,
        expect_status,
    }))
}

/// `"200"` or `"200-399"`: the statuses a probe accepts.
fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|s| (100..=599).contains(s))
    };
    match (status(low), status(high)) {
        (Some(low), Some(high)) if low <= high => Ok((low, high)),
        _ => Err(format!(
            "`{text}` is not a status or range of statuses like \"200-399\""
        )),
    }
}

/// The admin API can reload, drain and list sessions: off loopback it must ask for a token.
fn validate_admin(raw: &RawAdmin, source: &Path) -> Result<AdminConfig, Invalid> {
    let bind = socket_addr(&raw.bind)?;
    let token = raw
        .token_file
        .as_ref()
        .map(|file| read_token(file, source))
        .transpose()?;
    if token.is_none() && !bind.ip().to_canonical().is_loopback() {
        return Err(invalid(
            &raw.bind,
            format!(
                "admin bind `{bind}` is not a loopback address: set [admin] token_file = \"…\" \
                 (a file holding a bearer token) before exposing the admin API"
            ),
        ));
    }
    Ok(AdminConfig { bind, token })
}

/// Reads the token file, relative to the config file's directory unless absolute.
fn read_token(file: &Spanned<String>, source: &Path) -> Result<AdminToken, Invalid> {
    let path = config_path(file, source);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        invalid(
            file,
            format!("cannot read admin token file `{}`: {e}", path.display()),
        )
    })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(invalid(
            file,
            format!(
                "admin token file `{}` must hold a token of at least 16 characters",
                path.display()
            ),
        ));
    }
    Ok(AdminToken(std::sync::Arc::from(token)))
}

fn validate_log_level(level: &Spanned<String>) -> Result<String, Invalid> {
    let text = level.get_ref();
    // A bare word is read by tracing as a target name ("inof" = trace for target `inof`), which
    // would silently log nothing: a bare word must be a level.
    let bare_non_level = text.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && !d.contains(['=', '['])
            && d.parse::<tracing::level_filters::LevelFilter>().is_err()
    });
    let parsed = match bare_non_level {
        Some(word) => Err(format!(
            "`{word}` is not a level (trace, debug, info, warn, error, off)"
        )),
        None => tracing_subscriber::EnvFilter::builder()
            .parse(text)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    parsed.map(|()| text.clone()).map_err(|why| {
        invalid(
            level,
            format!(
                "`{text}` is not a log filter like \"info\" or \"info,switchyard=debug\": {why}"
            ),
        )
    })
}

/// A nameserver: `ip:port`, or a bare IP meaning port 53.
fn nameserver_addr(text: &Spanned<String>) -> Result<SocketAddr, Invalid> {
    let written = text.get_ref();
    written
        .parse::<SocketAddr>()
        .or_else(|_| written.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            invalid(
                text,
                format!("`{written}` is not a nameserver address like 127.0.0.1:53"),
            )
        })
}

/// Sealing is on when a key source is configured, unless `seal = false`; `seal = true` without
/// keys seals with a random per-process key.
fn seal_setting(
    raw: &RawSessions,
    source: &Path,
) -> Result<crate::mcp::seal::SealSetting, Invalid> {
    use crate::mcp::seal::SealSetting;
    let keys = match (&raw.seal_keys_file, &raw.seal_keys_env) {
        (Some(_), Some(env)) => {
            return Err(invalid(
                env,
                "set either sessions.seal_keys_file or sessions.seal_keys_env, not both".into(),
            ));
        }
        (Some(file), None) => Some(keys_from_file(file, source)?),
        (None, Some(env)) => Some(keys_from_env(env)?),
        (None, None) => None,
    };
    Ok(match (raw.seal.as_ref().map(|s| *s.get_ref()), keys) {
        (Some(false), _) => SealSetting::Off,
        (_, Some(keys)) => SealSetting::Keys(keys),
        (Some(true), None) => SealSetting::Ephemeral,
        (None, None) => SealSetting::Off,
    })
}

/// One base64 key per line; blank lines and `#` comments skipped; the first key seals.
fn parse_keys(text: &str) -> Result<Vec<crate::mcp::seal::SealKey>, String> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = crate::mcp::seal::SealKey::parse(line)
            .map_err(|why| format!("line {}: {why}", number + 1))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("holds no key".into());
    }
    Ok(keys)
}

fn keys_from_file(
    file: &Spanned<String>,
    source: &Path,
) -> Result<Vec<crate::mcp::seal::SealKey>, Invalid> {
    // Relative to the config file, so a config and its key file move together.
    let path = source
        .parent()
        .unwrap_or_else(|| Path::new(""))
        .join(file.get_ref());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        invalid(
            file,
            format!("cannot read key file {}: {e}", path.display()),
        )
    })?;
    parse_keys(&text).map_err(|why| invalid(file, format!("key file {}: {why}", path.display())))
}

fn keys_from_env(env: &Spanned<String>) -> Result<Vec<crate::mcp::seal::SealKey>, Invalid> {
    let name = env.get_ref();
    let text = std::env::var(name)
        .map_err(|_| invalid(env, format!("environment variable `{name}` is not set")))?;
    // Several keys in one variable: separated by newlines, commas or spaces.
    let lines = text.replace([',', ' '], "\n");
    parse_keys(&lines).map_err(|why| invalid(env, format!("`{name}`: {why}")))
}

fn validate_pool(name: &str, pool: &RawPool) -> Result<PoolConfig, Invalid> {
    if pool.backends.get_ref().is_empty() {
        return Err(invalid(
            &pool.backends,
            format!("pool `{name}` has no backends"),
        ));
    }
    let mut backends: Vec<BackendConfig> = Vec::new();
    for entry in pool.backends.get_ref() {
        let (address, weight) = match entry.get_ref() {
            RawBackend::Address(address) => (address.clone(), 1),
            RawBackend::Weighted { address, weight } => (address.clone(), *weight),
        };
        if weight == 0 || weight > 1000 {
            return Err(invalid(
                entry,
                format!("weight of `{address}` must be 1..=1000"),
            ));
        }
        if let Err(message) = validate_backend_address(&address) {
            return Err(invalid(entry, message));
        }
        if backends.iter().any(|b| b.address == address) {
            return Err(invalid(
                entry,
                format!("`{address}` is listed twice in pool `{name}`"),
            ));
        }
        backends.push(BackendConfig { address, weight });
    }
    Ok(PoolConfig { backends })
}

fn validate_backend_address(address: &str) -> Result<(), String> {
    let authority: http::uri::Authority = address
        .strip_prefix("https://")
        .unwrap_or(address)
        .parse()
        .map_err(|_| format!("`{address}` is not a backend address like 127.0.0.1:3001"))?;
    if authority.port_u16().is_none() {
        return Err(format!("`{address}` needs a port, e.g. {address}:3001"));
    }
    Ok(())
}

fn validate_active(
    active: &Spanned<RawActive>,
    pools: &BTreeMap<String, PoolConfig>,
) -> Result<Vec<(String, u32)>, Invalid> {
    let split: Vec<(String, u32)> = match active.get_ref() {
        RawActive::One(pool) => vec![(pool.clone(), 1)],
        RawActive::Split(split) => split
            .iter()
            .filter(|(_, weight)| **weight > 0)
            .map(|(pool, weight)| (pool.clone(), *weight))
            .collect(),
    };
    if split.is_empty() {
        return Err(invalid(
            active,
            "routing.active names no pool with a weight above 0".into(),
        ));
    }
    for (pool, _) in &split {
        if !pools.contains_key(pool) {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            return Err(invalid(
                active,
                format!(
                    "routing.active names pool `{pool}`, which is not defined (pools: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(split)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listener]]
bind = "127.0.0.1:8080"

[pools.blue]
backends = ["127.0.0.1:3001", "127.0.0.1:3002", { address = "127.0.0.1:3003", weight = 2 }]

[pools.green]
backends = ["127.0.0.1:3101"]

[routing]
active = "blue"
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_shape_parses_with_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.pools["blue"].backends.len(), 3);
        assert_eq!(config.pools["blue"].backends[2].weight, 2);
        assert_eq!(config.active, vec![("blue".to_string(), 1)]);
        assert_eq!(config.timeouts.sse_keepalive, Some(Duration::from_secs(15)));
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = MINIMAL.replace("active = \"blue\"", "active = \"blue\"\nactiv = 1");
        let err = parse(&text).unwrap_err();
        assert!(err.starts_with("t.toml:13:1: "), "{err}");
        assert!(err.contains("activ"), "{err}");
    }

    #[test]
    fn unknown_active_pool_is_refused_at_its_place() {
        let err = parse(&MINIMAL.replace("active = \"blue\"", "active = \"purple\"")).unwrap_err();
        assert!(err.starts_with("t.toml:12:10: "), "{err}");
        assert!(err.contains("`purple`"), "{err}");
    }

    #[test]
    fn durations_and_bad_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3 s").is_err());
        let text = format!("{MINIMAL}\n[timeouts]\nconnect = \"soon\"\n");
        let err = parse(&text).unwrap_err();
        assert!(err.starts_with("t.toml:15:11: "), "{err}");
    }

    #[test]
    fn zero_keepalive_turns_it_off() {
        let config = parse(&format!("{MINIMAL}\n[timeouts]\nsse_keepalive = \"0s\"\n")).unwrap();
        assert_eq!(config.timeouts.sse_keepalive, None);
    }

    #[test]
    fn canary_split_and_trusted_proxies() {
        let text = MINIMAL.replace(
            "active = \"blue\"",
            "active = { blue = 90, green = 10 }\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]",
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            config.active,
            vec![("blue".into(), 90), ("green".into(), 10)]
        );
        assert!(config.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
        assert!(!config.trusted_proxies[0].contains("11.1.2.3".parse().unwrap()));
        assert!(config.trusted_proxies[1].contains("::1".parse().unwrap()));
    }

    #[test]
    fn bad_backends_are_refused() {
        for (bad, why) in [
            ("\"127.0.0.1\"", "needs a port"),
            ("{ address = \"127.0.0.1:1\", weight = 0 }", "weight"),
            ("\"127.0.0.1:3101\", \"127.0.0.1:3101\"", "twice"),
        ] {
            let text = MINIMAL.replace("[\"127.0.0.1:3101\"]", &format!("[{bad}]"));
            let err = parse(&text).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with("t.toml:9:"), "{err}");
        }
    }

    #[test]
    fn health_defaults_probes_only_with_a_health_table() {
        let config = parse(MINIMAL).unwrap();
        assert!(config.health.probes.is_none());
        assert_eq!(config.health.max_fails, 3);
        assert!(!config.health.fail_open);
        let config = parse(&format!("{MINIMAL}\n[health]\n")).unwrap();
        let probes = config.health.probes.unwrap();
        assert_eq!(probes.path, "/healthz");
        assert_eq!(probes.interval, Duration::from_secs(5));
        assert_eq!(probes.jitter, Duration::from_millis(500));
        assert_eq!((probes.rise, probes.fall), (2, 3));
        assert_eq!(probes.expect_status, (200, 399));
        let off = parse(&format!("{MINIMAL}\n[health]\ninterval = \"0s\"\n")).unwrap();
        assert!(off.health.probes.is_none());
    }

    #[test]
    fn bad_health_settings_are_refused_at_their_place() {
        for (bad, why) in [
            ("expect_status = \"399-200\"", "range of statuses"),
            ("expect_status = \"ok\"", "range of statuses"),
            ("rise = 0", "rise must be"),
            ("path = \"healthz\"", "not a path"),
            ("timeout = \"0s\"", "above 0"),
            ("fail_open = 1", "invalid type"),
        ] {
            let err = parse(&format!("{MINIMAL}\n[health]\n{bad}\n")).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with("t.toml:15:"), "{bad}: {err}");
        }
        assert_eq!(parse_status_range("204"), Ok((204, 204)));
    }

    #[test]
    fn sealing_defaults_off_and_reads_keys() {
        use crate::mcp::seal::{SealKey, SealSetting};
        assert_eq!(parse(MINIMAL).unwrap().sessions.seal, SealSetting::Off);
        let with = |extra: &str| parse(&format!("{MINIMAL}\n[sessions]\n{extra}\n"));
        assert_eq!(
            with("seal = true").unwrap().sessions.seal,
            SealSetting::Ephemeral
        );
        let dir = std::env::temp_dir().join(format!("switchyard-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("seal.keys");
        let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        std::fs::write(&file, format!("# new first\n{key}\n\n{key}\n")).unwrap();
        let config = with(&format!("seal_keys_file = \"{}\"", file.display())).unwrap();
        assert_eq!(
            config.sessions.seal,
            SealSetting::Keys(vec![SealKey([1; 32]), SealKey([1; 32])])
        );
        let off = with(&format!(
            "seal = false\nseal_keys_file = \"{}\"",
            file.display()
        ));
        assert_eq!(off.unwrap().sessions.seal, SealSetting::Off);

        std::fs::write(&file, format!("{key}\nshort\n")).unwrap();
        let err = with(&format!("seal_keys_file = \"{}\"", file.display())).unwrap_err();
        assert!(err.starts_with("t.toml:15:18: "), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = with("seal_keys_file = \"/nonexistent/seal.keys\"").unwrap_err();
        assert!(err.contains("cannot read key file"), "{err}");
        let err = with("seal_keys_env = \"SWITCHYARD_TEST_SURELY_UNSET\"").unwrap_err();
        assert!(err.contains("is not set"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn discovery_settings_and_hostname_entries() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.discovery.interval, Some(Duration::from_secs(10)));
        assert_eq!(config.discovery.resolver, None);
        let text = format!("{MINIMAL}\n[discovery]\ninterval = \"0s\"\nresolver = \"10.0.0.53\"\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.discovery.interval, None);
        assert_eq!(
            config.discovery.resolver,
            Some("10.0.0.53:53".parse().unwrap())
        );
        let err = parse(&format!("{MINIMAL}\n[discovery]\nresolver = \"dns\"\n")).unwrap_err();
        assert!(err.starts_with("t.toml:15:12: "), "{err}");
        let entry = |address: &str| BackendConfig {
            address: address.into(),
            weight: 1,
        };
        assert_eq!(
            entry("fleet.internal:3000").hostname(),
            Some(("fleet.internal", 3000))
        );
        assert_eq!(entry("10.0.0.1:3000").hostname(), None);
        assert_eq!(entry("[::1]:3000").hostname(), None);
        assert_eq!(entry("https://api.example.com:443").hostname(), None);
    }

    #[test]
    fn syntax_error_and_missing_sections() {
        assert!(parse("[[listener]\n").unwrap_err().starts_with("t.toml:1:"));
        assert!(parse("").unwrap_err().contains("no [[listener]]"));
    }

    fn with_admin(admin: &str) -> String {
        format!("{MINIMAL}\n[admin]\n{admin}\n")
    }

    #[test]
    fn admin_off_loopback_needs_a_token_file() {
        assert!(parse(&with_admin("bind = \"127.0.0.1:9901\"")).is_ok());
        assert!(parse(&with_admin("bind = \"[::1]:9901\"")).is_ok());
        let err = parse(&with_admin("bind = \"0.0.0.0:9901\"")).unwrap_err();
        assert!(err.starts_with("t.toml:15:8: "), "{err}");
        assert!(err.contains("token_file"), "{err}");
    }

    #[test]
    fn admin_token_is_read_relative_to_the_config_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("switchyard-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "  s3cret-token-0123456789\n").unwrap();
        std::fs::write(dir.join("short"), "abc\n").unwrap();
        let source = dir.join("switchyard.toml");
        let text = with_admin("bind = \"0.0.0.0:9901\"\ntoken_file = \"token\"");
        let config = Config::parse(&text, &source).unwrap();
        let token = config.admin.as_ref().unwrap().token.as_ref().unwrap();
        assert!(token.matches(b"s3cret-token-0123456789"));
        assert!(!token.matches(b"s3cret-token-012345678"));
        assert!(!token.matches(b"s3cret-token-0123456780"));
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(token.authorization(), "Bearer s3cret-token-0123456789");
        let short = with_admin("bind = \"0.0.0.0:9901\"\ntoken_file = \"short\"");
        let err = Config::parse(&short, &source).unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
        let missing = with_admin("bind = \"127.0.0.1:9901\"\ntoken_file = \"nope\"");
        let err = Config::parse(&missing, &source).unwrap_err().to_string();
        assert!(
            err.contains(":16:14: cannot read admin token file"),
            "{err}"
        );
    }

    #[test]
    fn log_level_is_validated() {
        assert_eq!(parse(MINIMAL).unwrap().log.level, "info");
        let text = format!("{MINIMAL}\n[log]\nlevel = \"warn,switchyard=debug\"\n");
        assert_eq!(parse(&text).unwrap().log.level, "warn,switchyard=debug");
        for bad in ["inof", "info,switchyard=loud", "info,["] {
            let err = parse(&format!("{MINIMAL}\n[log]\nlevel = \"{bad}\"\n")).unwrap_err();
            assert!(err.starts_with("t.toml:15:9: "), "{bad}: {err}");
        }
    }
}
