//! Configuration: strict TOML in, a validated [`Config`] out.
//!
//! Parsing happens in two steps (as in sozu's `command/src/config.rs`): serde reads a raw shape that
//! rejects unknown keys, then validation turns it into types the proxy can use without further
//! checks. Every error names the file, the line and column, and what is wrong, like `nginx -t`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A configuration that passed validation: every pool exists, every address parses.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub pools: BTreeMap<String, PoolConfig>,
    pub active: Vec<(String, u32)>,
    pub trusted_proxies: Vec<Cidr>,
    pub sessions: SessionConfig,
    pub timeouts: Timeouts,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    pub discovery: DiscoveryConfig,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
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
    /// discovery resolves.
    pub fn hostname(&self) -> Option<(&str, u16)> {
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
    pub seal: crate::seal::SealSetting,
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
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
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
        raw.validate(source)
            .map_err(|Invalid { span, message }| place(span, message))
    }

    /// A short human summary, printed by `switchyard check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for listener in &self.listeners {
            out.push_str(&format!("listener  {} (http/1.1, h2c)\n", listener.bind));
        }
        if let Some(admin) = &self.admin {
            out.push_str(&format!("admin     {}\n", admin.bind));
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
            crate::seal::SealSetting::Keys(keys) => {
                format!("sealed ({} key(s), the first seals)", keys.len())
            }
            crate::seal::SealSetting::Ephemeral => {
                "sealed with a random per-process key (single replica only)".to_string()
            }
            crate::seal::SealSetting::Off => "in-memory table (sealing off)".to_string(),
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
fn parse_duration(text: &str) -> Result<Duration, String> {
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
    discovery: RawDiscovery,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Spanned<String>,
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    header_read_timeout: RawDuration,
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
            .map(|l| socket_addr(&l.bind).map(|bind| ListenerConfig { bind }))
            .collect::<Result<_, _>>()?;
        let admin = match &self.admin {
            Some(a) => Some(AdminConfig {
                bind: socket_addr(&a.bind)?,
            }),
            None => None,
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
        let trusted_proxies = routing
            .trusted_proxies
            .iter()
            .map(|c| c.get_ref().parse::<Cidr>().map_err(|m| invalid(c, m)))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            source: source.to_path_buf(),
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
            },
            limits: Limits {
                max_connections: self.limits.max_connections.unwrap_or(100_000),
                header_read_timeout: duration(
                    &self.limits.header_read_timeout,
                    Duration::from_secs(10),
                )?,
            },
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
fn seal_setting(raw: &RawSessions, source: &Path) -> Result<crate::seal::SealSetting, Invalid> {
    use crate::seal::SealSetting;
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
fn parse_keys(text: &str) -> Result<Vec<crate::seal::SealKey>, String> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = crate::seal::SealKey::parse(line)
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
) -> Result<Vec<crate::seal::SealKey>, Invalid> {
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

fn keys_from_env(env: &Spanned<String>) -> Result<Vec<crate::seal::SealKey>, Invalid> {
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
    fn sealing_defaults_off_and_reads_keys() {
        use crate::seal::{SealKey, SealSetting};
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
    }

    #[test]
    fn syntax_error_and_missing_sections() {
        assert!(parse("[[listener]\n").unwrap_err().starts_with("t.toml:1:"));
        assert!(parse("").unwrap_err().contains("no [[listener]]"));
    }
}
