//! Raw shape → [`Config`]. Pure: nothing here reads a file, so validating the same text twice
//! gives equal configs. Paths are resolved against the config file's directory and kept with
//! the place they were written, for the loading step's errors.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    RawAdmin, RawConfig, RawDiscovery, RawLifecycle, RawListener, RawRouting, RawSessions,
    RawTimeouts, RawTls, RawUpstream,
};
use super::routes::{Defaults, validate_routes};
use super::tls::CertPair;
use super::values::{
    duration, nameserver_addr, optional_duration, redirect_base, socket_addr, validate_health,
    validate_limits, validate_log_level, validate_pool,
};
use super::{
    AdminConfig, CertPairRef, Cidr, Config, ConfigError, DiscoveryConfig, FileRef, LifecycleConfig,
    ListenerConfig, LogConfig, Place, PoolConfig, Redirect, RouteConfig, SealConfig, SessionConfig,
    Timeouts, TlsFiles, UpstreamConfig, UpstreamTls,
};

pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let source = Source { path, text };
    let refuse = |span: Option<Range<usize>>, message: String| {
        ConfigError::at(path, source.place(span), message)
    };
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| refuse(e.span(), e.message().trim().to_string()))?;
    let mut config =
        validate(raw, &source).map_err(|Invalid { span, message }| refuse(span, message))?;
    config.digest = crate::mcp::hash::stable_hash(text.as_bytes());
    Ok(config)
}

/// The text being validated and the file it came from.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    /// Line and column of a byte offset; the whole file (1:1) when no span is known.
    fn place(&self, span: Option<Range<usize>>) -> Place {
        let offset = span.map_or(0, |s| s.start);
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.len(), |nl| before.len() - nl - 1)
            + 1;
        Place { line, column }
    }

    /// A path from the config, relative to the config file's directory like nginx's `include`.
    fn path(&self, text: &Spanned<String>) -> std::path::PathBuf {
        let path = Path::new(text.get_ref());
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn file(&self, text: &Spanned<String>) -> FileRef {
        FileRef {
            path: self.path(text),
            at: self.place(Some(text.span())),
        }
    }
}

pub(super) struct Invalid {
    span: Option<Range<usize>>,
    message: String,
}

pub(super) fn invalid<T>(value: &Spanned<T>, message: String) -> Invalid {
    Invalid {
        span: Some(value.span()),
        message,
    }
}

fn whole_file(message: &str) -> Invalid {
    Invalid {
        span: None,
        message: message.to_string(),
    }
}

/// Checks every section; the order decides which error a config with several is refused for.
fn validate(raw: RawConfig, source: &Source<'_>) -> Result<Config, Invalid> {
    if raw.listener.is_empty() {
        return Err(whole_file(
            "no [[listener]]: add one, e.g. bind = \"127.0.0.1:8080\"",
        ));
    }
    let listeners = raw
        .listener
        .iter()
        .map(|l| validate_listener(l, source))
        .collect::<Result<_, _>>()?;
    let admin = raw
        .admin
        .as_ref()
        .map(|a| validate_admin(a, source))
        .transpose()?;
    unique_addresses(&raw, source)?;
    let log = LogConfig {
        level: match &raw.log.level {
            Some(level) => validate_log_level(level)?,
            None => "info".to_string(),
        },
    };
    let pools = raw
        .pools
        .iter()
        .map(|(name, pool)| Ok((name.clone(), validate_pool(name, pool)?)))
        .collect::<Result<BTreeMap<_, _>, Invalid>>()?;
    let routing = raw.routing.unwrap_or(RawRouting {
        active: None,
        trusted_proxies: Vec::new(),
    });
    if routing.active.is_none() && raw.route.is_empty() {
        return Err(whole_file(
            "no [routing] active: set routing.active to a pool name, or add [[route]] entries",
        ));
    }
    let timeouts = validate_timeouts(&raw.timeouts)?;
    let limits = validate_limits(&raw.limits)?;
    let file = |path: &Spanned<String>| source.file(path);
    let policy = raw
        .policy
        .as_ref()
        .map(|p| super::policy::validate_policy(p, &file))
        .transpose()?;
    let defaults = Defaults {
        pools: &pools,
        timeouts: &timeouts,
        limits: &limits,
        policy: policy.as_ref(),
        file: &file,
    };
    let routes = validate_routes(&raw.route, routing.active.as_ref(), &defaults)?;
    let upstream = validate_upstream(&raw.upstream, &pools, source)?;
    let health = validate_health(raw.health.as_ref())?;
    let upstream = with_jwks_tls(upstream, &routes);
    let trusted_proxies = routing
        .trusted_proxies
        .iter()
        .map(|c| c.get_ref().parse::<Cidr>().map_err(|m| invalid(c, m)))
        .collect::<Result<_, _>>()?;
    Ok(Config {
        source: source.path.to_path_buf(),
        digest: 0,
        listeners,
        admin,
        pools,
        routes,
        trusted_proxies,
        sessions: validate_sessions(&raw.sessions, source)?,
        timeouts,
        upstream,
        limits,
        watch_interval: optional_duration(&raw.reload.watch_interval, Duration::ZERO)?,
        health,
        log,
        discovery: validate_discovery(&raw.discovery)?,
        policy,
        lifecycle: validate_lifecycle(&raw.lifecycle, source)?,
    })
}

/// Without `SO_REUSEPORT` a second bind of an address fails at start; with it, the two sockets
/// would silently split the connections. Either way the config is wrong, so `check` says so,
/// naming both places. Port 0 (a fresh port each time) never collides.
fn unique_addresses(raw: &RawConfig, source: &Source<'_>) -> Result<(), Invalid> {
    let binds = raw
        .listener
        .iter()
        .map(|l| ("[[listener]]", &l.bind))
        .chain(raw.admin.iter().map(|a| ("[admin]", &a.bind)));
    let mut seen: Vec<(std::net::SocketAddr, &str, Place)> = Vec::new();
    for (table, text) in binds {
        let address = socket_addr(text)?;
        let place = source.place(Some(text.span()));
        if let Some((earlier, first_table, first)) =
            seen.iter().find(|(other, ..)| overlaps(*other, address))
        {
            return Err(invalid(
                text,
                format!(
                    "{table} bind `{address}` is already claimed by the {first_table} bind \
                     `{earlier}` at {}:{}:{}: an address can be bound once; give each \
                     [[listener]] and [admin] a port of its own",
                    source.path.display(),
                    first.line,
                    first.column
                ),
            ));
        }
        seen.push((address, table, place));
    }
    Ok(())
}

/// Whether binding both addresses would claim the same port: equal, or one a wildcard covering
/// the other (`[::]` also covers IPv4, as sockets here are dual-stack).
fn overlaps(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    let covers = |wide: std::net::SocketAddr, other: std::net::SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// The longest path a Unix socket address holds (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

fn validate_lifecycle(raw: &RawLifecycle, source: &Source<'_>) -> Result<LifecycleConfig, Invalid> {
    let upgrade_socket = match &raw.upgrade_socket {
        None => None,
        Some(text) if text.get_ref().is_empty() => {
            return Err(invalid(
                text,
                "lifecycle.upgrade_socket is empty: give a path such as \
                 \"/run/switchyard/upgrade.sock\", or leave it out for the default"
                    .into(),
            ));
        }
        Some(text) => {
            let file = source.file(text);
            let length = file.path.as_os_str().len();
            if length > MAX_SOCKET_PATH {
                return Err(invalid(
                    text,
                    format!(
                        "lifecycle.upgrade_socket `{}` is {length} bytes long; a Unix socket path \
                         holds at most {MAX_SOCKET_PATH}: choose a shorter one",
                        file.path.display()
                    ),
                ));
            }
            Some(file)
        }
    };
    Ok(LifecycleConfig {
        upgrade_socket,
        reuse_port: raw.reuse_port,
    })
}

/// A JWKS URL is fetched with the TLS client of `https://` backends: it needs one too.
fn with_jwks_tls(mut upstream: UpstreamConfig, routes: &[RouteConfig]) -> UpstreamConfig {
    let fetches = routes
        .iter()
        .filter_map(|r| r.policy.as_ref()?.auth.as_ref())
        .any(|a| matches!(a.jwks, super::JwksSource::Url(_)));
    if fetches && upstream.tls.is_none() {
        upstream.tls = Some(UpstreamTls { ca: None });
    }
    upstream
}

fn validate_discovery(raw: &RawDiscovery) -> Result<DiscoveryConfig, Invalid> {
    Ok(DiscoveryConfig {
        interval: optional_duration(&raw.interval, Duration::from_secs(10))?,
        resolver: raw.resolver.as_ref().map(nameserver_addr).transpose()?,
    })
}

fn validate_sessions(raw: &RawSessions, source: &Source<'_>) -> Result<SessionConfig, Invalid> {
    Ok(SessionConfig {
        idle_timeout: duration(&raw.idle_timeout, Duration::from_secs(3600))?,
        max_sessions: raw.max_sessions.as_ref().map_or(Ok(1_000_000), |max| {
            match *max.get_ref() {
                0 => Err(invalid(
                    max,
                    "max_sessions must be at least 1 (a full table refuses new sessions)".into(),
                )),
                n => Ok(n),
            }
        })?,
        seal: seal_config(raw, source)?,
    })
}

fn validate_timeouts(raw: &RawTimeouts) -> Result<Timeouts, Invalid> {
    Ok(Timeouts {
        connect: duration(&raw.connect, Duration::from_secs(3))?,
        response: duration(&raw.response, Duration::from_secs(120))?,
        stream_idle: optional_duration(&raw.stream_idle, Duration::from_secs(3600))?,
        sse_keepalive: optional_duration(&raw.sse_keepalive, Duration::from_secs(15))?,
        drain: duration(&raw.drain, Duration::from_secs(30))?,
        client_body: optional_duration(&raw.client_body, Duration::from_secs(60))?,
    })
}

fn validate_upstream(
    raw: &RawUpstream,
    pools: &BTreeMap<String, PoolConfig>,
    source: &Source<'_>,
) -> Result<UpstreamConfig, Invalid> {
    // Client TLS only when something needs it: building it reads the system's CA store.
    let needed = pools
        .values()
        .flat_map(|p| &p.backends)
        .any(|b| b.address.starts_with("https://"));
    let tls = (needed || raw.ca.is_some()).then(|| UpstreamTls {
        ca: raw.ca.as_ref().map(|ca| source.file(ca)),
    });
    Ok(UpstreamConfig {
        max_idle_per_backend: raw.max_idle_per_backend.unwrap_or(64),
        idle_timeout: duration(&raw.idle_timeout, Duration::from_secs(60))?,
        retries: raw.retries.unwrap_or(2),
        tls,
    })
}

fn validate_listener(raw: &RawListener, source: &Source<'_>) -> Result<ListenerConfig, Invalid> {
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

/// The shape of a listener's `tls` value; its files are read by the loading step.
fn listener_tls(raw: &Spanned<RawTls>, source: &Source<'_>) -> Result<TlsFiles, Invalid> {
    let tls = raw.get_ref();
    let pair = |cert: &Spanned<String>, key: &Spanned<String>, span: Range<usize>| CertPairRef {
        pair: CertPair {
            cert: source.path(cert),
            key: source.path(key),
        },
        at: source.place(Some(span)),
    };
    let mut pairs = Vec::new();
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => pairs.push(pair(cert, key, cert.span())),
        (None, None) => {}
        _ => return Err(invalid(raw, "tls needs both cert and key".into())),
    }
    for entry in &tls.certificates {
        pairs.push(pair(
            &entry.get_ref().cert,
            &entry.get_ref().key,
            entry.span(),
        ));
    }
    if pairs.is_empty() {
        return Err(invalid(
            raw,
            "tls needs a certificate: tls = { cert = \"…\", key = \"…\" }".into(),
        ));
    }
    Ok(TlsFiles {
        pairs,
        client_ca: tls.client_ca.as_ref().map(|ca| source.file(ca)),
        at: source.place(Some(raw.span())),
    })
}

/// The admin API can reload, drain and list sessions: off loopback it must ask for a token.
fn validate_admin(raw: &RawAdmin, source: &Source<'_>) -> Result<AdminConfig, Invalid> {
    let bind = socket_addr(&raw.bind)?;
    if raw.token_file.is_none() && !bind.ip().to_canonical().is_loopback() {
        return Err(invalid(
            &raw.bind,
            format!(
                "admin bind `{bind}` is not a loopback address: set [admin] token_file = \"…\" \
                 (a file holding a bearer token) before exposing the admin API"
            ),
        ));
    }
    let max_connections = match &raw.max_connections {
        None => 64,
        Some(count) => match *count.get_ref() {
            c @ 1..=65_536 => c,
            _ => {
                return Err(invalid(
                    count,
                    "admin max_connections must be 1..=65536".into(),
                ));
            }
        },
    };
    Ok(AdminConfig {
        bind,
        token_file: raw.token_file.as_ref().map(|file| source.file(file)),
        max_connections,
    })
}

/// Sealing is on when a key source is configured, unless `seal = false`; `seal = true` without
/// keys seals with a random per-process key.
fn seal_config(raw: &RawSessions, source: &Source<'_>) -> Result<SealConfig, Invalid> {
    let keys = match (&raw.seal_keys_file, &raw.seal_keys_env) {
        (Some(_), Some(env)) => {
            return Err(invalid(
                env,
                "set either sessions.seal_keys_file or sessions.seal_keys_env, not both".into(),
            ));
        }
        (Some(file), None) => Some(SealConfig::KeysFile(source.file(file))),
        (None, Some(env)) => Some(SealConfig::KeysEnv {
            name: env.get_ref().clone(),
            at: source.place(Some(env.span())),
        }),
        (None, None) => None,
    };
    Ok(match (raw.seal.as_ref().map(|s| *s.get_ref()), keys) {
        (Some(false), _) => SealConfig::Off,
        (_, Some(keys)) => keys,
        (Some(true), None) => SealConfig::Ephemeral,
        (None, None) => SealConfig::Off,
    })
}
