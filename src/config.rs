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
    pub health: HealthConfig,
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

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    pub max_sessions: usize,
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
    health: Option<RawHealth>,
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
        let health = validate_health(self.health.as_ref())?;
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
            health,
        })
    }
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
    fn syntax_error_and_missing_sections() {
        assert!(parse("[[listener]\n").unwrap_err().starts_with("t.toml:1:"));
        assert!(parse("").unwrap_err().contains("no [[listener]]"));
    }
}
