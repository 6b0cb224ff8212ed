//! Checks of single values: durations, addresses, limits, health probes, the log filter, pools
//! and the active split. Each refuses at the place the value was written.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawActive, RawBackend, RawDuration, RawHealth, RawLimits, RawPool};
use super::validate::{Invalid, invalid};
use super::{BackendConfig, HealthConfig, Limits, PoolConfig, ProbeConfig, parse_duration};

pub(super) fn duration(raw: &RawDuration, default: Duration) -> Result<Duration, Invalid> {
    match raw {
        None => Ok(default),
        Some(text) => parse_duration(text.get_ref()).map_err(|m| invalid(text, m)),
    }
}

/// Like [`duration`], for a wait that cannot be switched off: `"0s"` would refuse every client
/// (each connection would time out before its first byte), so it is an error.
pub(super) fn positive_duration(
    raw: &RawDuration,
    default: Duration,
    name: &str,
) -> Result<Duration, Invalid> {
    let value = duration(raw, default)?;
    match raw {
        Some(text) if value.is_zero() => Err(invalid(
            text,
            format!(
                "{name} must be more than 0s (the default is {}s)",
                default.as_secs()
            ),
        )),
        _ => Ok(value),
    }
}

/// Like [`duration`], but `"0s"` turns the feature off.
pub(super) fn optional_duration(
    raw: &RawDuration,
    default: Duration,
) -> Result<Option<Duration>, Invalid> {
    duration(raw, default).map(|d| Some(d).filter(|d| !d.is_zero()))
}

pub(super) fn socket_addr(text: &Spanned<String>) -> Result<SocketAddr, Invalid> {
    text.get_ref().parse().map_err(|_| {
        invalid(
            text,
            format!("`{}` is not an address like 127.0.0.1:8080", text.get_ref()),
        )
    })
}

pub(super) fn redirect_base(url: &Spanned<String>) -> Result<String, Invalid> {
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

pub(super) fn validate_limits(raw: &RawLimits) -> Result<Limits, Invalid> {
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
        header_read_timeout: positive_duration(
            &raw.header_read_timeout,
            Duration::from_secs(10),
            "header_read_timeout",
        )?,
        handshake_timeout: positive_duration(
            &raw.handshake_timeout,
            Duration::from_secs(10),
            "handshake_timeout",
        )?,
        max_header_size,
        max_headers,
        max_request_body: Some(raw.max_request_body.unwrap_or(10 * 1024 * 1024))
            .filter(|limit| *limit > 0),
        http2_max_concurrent_streams,
    })
}

/// Without a `[health]` table, backends are never probed (a fleet without `/healthz` must not be
/// marked down by surprise), but real traffic still ejects failing ones.
pub(super) fn validate_health(raw: Option<&RawHealth>) -> Result<HealthConfig, Invalid> {
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
        Some(text) => parse_path(text)?,
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

/// A probe path (and query), such as `/healthz`.
pub(super) fn parse_path(text: &Spanned<String>) -> Result<http::uri::PathAndQuery, Invalid> {
    text.get_ref()
        .parse()
        .ok()
        .filter(|_| text.get_ref().starts_with('/'))
        .ok_or_else(|| {
            invalid(
                text,
                format!("`{}` is not a path like /healthz", text.get_ref()),
            )
        })
}

/// `"200"` or `"200-399"`: the statuses a probe accepts.
pub(super) fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
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

pub(super) fn validate_log_level(level: &Spanned<String>) -> Result<String, Invalid> {
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
pub(super) fn nameserver_addr(text: &Spanned<String>) -> Result<SocketAddr, Invalid> {
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

pub(super) fn validate_pool(name: &str, pool: &RawPool) -> Result<PoolConfig, Invalid> {
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

/// `active` of `[routing]` or of a route (`what` names it in errors): one pool, or shares.
pub(super) fn validate_active(
    active: &Spanned<RawActive>,
    pools: &BTreeMap<String, PoolConfig>,
    what: &str,
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
            format!("{what} names no pool with a weight above 0"),
        ));
    }
    for (pool, _) in &split {
        if !pools.contains_key(pool) {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            return Err(invalid(
                active,
                format!(
                    "{what} names pool `{pool}`, which is not defined (pools: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(split)
}
