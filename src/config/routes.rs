//! Routes: which requests (by host, then by path) go to which pools, and the settings a route
//! may set for itself. Validation resolves every route setting against the proxy-wide default,
//! so the request path reads one value and never asks where it came from.

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use toml::Spanned;

use super::raw::{RawActive, RawHeaderRules, RawRoute, RawRouteTimeouts};
use super::validate::{Invalid, invalid};
use super::values::{duration, optional_duration, parse_path, validate_active};
use super::{FileRef, Limits, PolicyConfig, PoolConfig, Timeouts};

/// One route, every setting resolved (its own value, else the proxy's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Unique: names the route in `check`, `/status`, metrics and the access log.
    pub name: String,
    /// The hosts it answers for; empty: any host.
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    /// The matched prefix is removed before the request goes to the backend (and put back into
    /// the legacy `endpoint` event's URL on its way to the client).
    pub strip_prefix: bool,
    /// Every pool the route serves from, active or not: their backends probe at `health_path`.
    pub pools: Vec<String>,
    /// The pools that take the route's new work, with their shares.
    pub active: Vec<(String, u32)>,
    pub host: HostPolicy,
    pub timeouts: RouteTimeouts,
    /// `None`: no limit.
    pub max_request_body: Option<u64>,
    /// The probe path of this route's backends instead of `[health] path`.
    pub health_path: Option<PathAndQuery>,
    pub response_headers: HeaderRules,
    /// The route's own `[route.policy]`, else `[policy]`; `None`: requests pass blind.
    pub policy: Option<PolicyConfig>,
}

/// A host a route answers for, lower case, without a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any name ending so, at any depth.
    Suffix(String),
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(host) => f.write_str(host),
            HostMatch::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Which paths a route takes: a prefix (longest wins), or one exact path (before any prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

impl PathMatch {
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Prefix(path) | PathMatch::Exact(path) => path,
        }
    }
}

/// The `Host` header the backend receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// The client's, unchanged.
    Client,
    /// The backend's own `host:port`, like nginx's default `$proxy_host`.
    Backend,
    /// This name.
    Fixed(HeaderValue),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub connect: Duration,
    pub response: Duration,
    pub stream_idle: Option<Duration>,
    pub sse_keepalive: Option<Duration>,
}

/// Edits of the response headers, applied in this order: remove, set (replace), add (append).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// What every route inherits unless it sets its own.
pub(super) struct Defaults<'a> {
    pub(super) pools: &'a BTreeMap<String, PoolConfig>,
    pub(super) timeouts: &'a Timeouts,
    pub(super) limits: &'a Limits,
    /// `[policy]`, for routes without a `[route.policy]` of their own.
    pub(super) policy: Option<&'a PolicyConfig>,
    /// Resolves a file the config names against its directory.
    pub(super) file: &'a dyn Fn(&Spanned<String>) -> FileRef,
}

/// The routes of the file, then `[routing] active` as the catch-all route `default` (the only
/// route when the file has none).
pub(super) fn validate_routes(
    raw: &[Spanned<RawRoute>],
    default_active: Option<&Spanned<RawActive>>,
    defaults: &Defaults<'_>,
) -> Result<Vec<RouteConfig>, Invalid> {
    let mut routes = Vec::with_capacity(raw.len() + 1);
    for entry in raw {
        let route = validate_route(entry, defaults)?;
        refuse_clash(&routes, &route, entry)?;
        routes.push(route);
    }
    if let Some(active) = default_active {
        let route = default_route(active, defaults)?;
        refuse_clash(&routes, &route, active)?;
        routes.push(route);
    }
    Ok(routes)
}

fn default_route(
    active: &Spanned<RawActive>,
    defaults: &Defaults<'_>,
) -> Result<RouteConfig, Invalid> {
    let active = validate_active(active, defaults.pools, "routing.active")?;
    let timeouts = defaults.timeouts;
    Ok(RouteConfig {
        name: "default".into(),
        hosts: Vec::new(),
        path: PathMatch::Prefix("/".into()),
        strip_prefix: false,
        pools: active.iter().map(|(pool, _)| pool.clone()).collect(),
        active,
        host: HostPolicy::Client,
        timeouts: RouteTimeouts {
            connect: timeouts.connect,
            response: timeouts.response,
            stream_idle: timeouts.stream_idle,
            sse_keepalive: timeouts.sse_keepalive,
        },
        max_request_body: defaults.limits.max_request_body,
        health_path: None,
        response_headers: HeaderRules::default(),
        policy: defaults.policy.cloned(),
    })
}

fn validate_route(
    entry: &Spanned<RawRoute>,
    defaults: &Defaults<'_>,
) -> Result<RouteConfig, Invalid> {
    let raw = entry.get_ref();
    let hosts = raw
        .hosts
        .iter()
        .map(host_match)
        .collect::<Result<Vec<_>, _>>()?;
    let path = path_match(raw)?;
    let name = match &raw.name {
        Some(name) if name.get_ref().trim().is_empty() => {
            return Err(invalid(name, "a route name cannot be empty".into()));
        }
        Some(name) => name.get_ref().clone(),
        None => {
            let host = hosts.first().map_or("*".to_string(), ToString::to_string);
            format!("{host}{}", path.as_str())
        }
    };
    if let (true, PathMatch::Exact(_), Some(exact)) = (raw.strip_prefix, &path, &raw.exact) {
        return Err(invalid(
            exact,
            "strip_prefix needs a prefix = \"…\" route, not an exact path".into(),
        ));
    }
    let what = format!("route `{name}` active");
    let active = validate_active(&raw.active, defaults.pools, &what)?;
    let pools = route_pools(raw, &active, defaults.pools, &name)?;
    Ok(RouteConfig {
        hosts,
        path,
        strip_prefix: raw.strip_prefix,
        pools,
        active,
        host: host_policy(raw.host.as_ref())?,
        timeouts: route_timeouts(&raw.timeouts, defaults.timeouts)?,
        max_request_body: match raw.max_request_body {
            None => defaults.limits.max_request_body,
            Some(limit) => Some(limit).filter(|limit| *limit > 0),
        },
        health_path: raw.health_path.as_ref().map(parse_path).transpose()?,
        response_headers: header_rules(&raw.response_headers)?,
        policy: match &raw.policy {
            Some(own) => Some(super::policy::validate_policy(own, defaults.file)?),
            None => defaults.policy.cloned(),
        },
        name,
    })
}

/// Two routes that would take exactly the same requests, or share a name, are a mistake.
fn refuse_clash<T>(
    earlier: &[RouteConfig],
    route: &RouteConfig,
    at: &Spanned<T>,
) -> Result<(), Invalid> {
    let keys = |r: &RouteConfig| -> Vec<Option<HostMatch>> {
        if r.hosts.is_empty() {
            vec![None]
        } else {
            r.hosts.iter().cloned().map(Some).collect()
        }
    };
    for other in earlier {
        if other.name == route.name {
            return Err(invalid(
                at,
                format!(
                    "two routes are named `{}`: give one a different name = \"…\"",
                    route.name
                ),
            ));
        }
        let same_hosts = keys(route).iter().any(|k| keys(other).contains(k));
        if same_hosts && other.path == route.path {
            return Err(invalid(
                at,
                format!(
                    "route `{}` takes the same host and path as route `{}`: change its hosts, \
                     prefix or exact path",
                    route.name, other.name
                ),
            ));
        }
    }
    Ok(())
}

fn route_pools(
    raw: &RawRoute,
    active: &[(String, u32)],
    pools: &BTreeMap<String, PoolConfig>,
    name: &str,
) -> Result<Vec<String>, Invalid> {
    let Some(listed) = &raw.pools else {
        return Ok(active.iter().map(|(pool, _)| pool.clone()).collect());
    };
    for pool in listed {
        if !pools.contains_key(pool.get_ref()) {
            return Err(invalid(
                pool,
                format!(
                    "route `{name}` names pool `{}`, which is not defined",
                    pool.get_ref()
                ),
            ));
        }
    }
    let names: Vec<String> = listed.iter().map(|p| p.get_ref().clone()).collect();
    if let Some((missing, _)) = active.iter().find(|(pool, _)| !names.contains(pool)) {
        return Err(invalid(
            &raw.active,
            format!("route `{name}` activates pool `{missing}`: add it to the route's pools"),
        ));
    }
    Ok(names)
}

fn host_match(text: &Spanned<String>) -> Result<HostMatch, Invalid> {
    let written = text.get_ref();
    let host = written.trim_end_matches('.').to_ascii_lowercase();
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let plain = !name.is_empty()
        && !name.contains(['*', ':', '/'])
        && name.parse::<http::uri::Authority>().is_ok();
    if !plain {
        return Err(invalid(
            text,
            format!(
                "`{written}` is not a host name like mcp.example.com or *.example.com \
                 (no scheme, port or path)"
            ),
        ));
    }
    Ok(if wildcard {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn path_match(raw: &RawRoute) -> Result<PathMatch, Invalid> {
    let check = |text: &Spanned<String>| {
        let path = text.get_ref();
        if path.starts_with('/') && !path.contains(['?', '#', ' ']) {
            Ok(path.clone())
        } else {
            Err(invalid(
                text,
                format!("`{path}` is not a path like /github/ (no query)"),
            ))
        }
    };
    match (&raw.prefix, &raw.exact) {
        (Some(_), Some(exact)) => Err(invalid(
            exact,
            "set either prefix or exact on a route, not both".into(),
        )),
        (Some(prefix), None) => Ok(PathMatch::Prefix(check(prefix)?)),
        (None, Some(exact)) => Ok(PathMatch::Exact(check(exact)?)),
        (None, None) => Ok(PathMatch::Prefix("/".into())),
    }
}

fn host_policy(raw: Option<&Spanned<String>>) -> Result<HostPolicy, Invalid> {
    let Some(text) = raw else {
        return Ok(HostPolicy::Client);
    };
    match text.get_ref().as_str() {
        "client" => Ok(HostPolicy::Client),
        "backend" => Ok(HostPolicy::Backend),
        name => name
            .parse::<http::uri::Authority>()
            .ok()
            .filter(|a| a.as_str() == name)
            .and_then(|_| HeaderValue::from_str(name).ok())
            .map(HostPolicy::Fixed)
            .ok_or_else(|| {
                invalid(
                    text,
                    format!(
                        "host = `{name}`: write \"client\", \"backend\" or a host name like \
                         \"mcp.internal\""
                    ),
                )
            }),
    }
}

fn route_timeouts(raw: &RawRouteTimeouts, proxy: &Timeouts) -> Result<RouteTimeouts, Invalid> {
    // A route's "0s" turns the feature off for it; no value keeps the proxy's.
    let optional = |value: &super::raw::RawDuration, default: Option<Duration>| match value {
        None => Ok(default),
        Some(_) => optional_duration(value, Duration::ZERO),
    };
    Ok(RouteTimeouts {
        connect: duration(&raw.connect, proxy.connect)?,
        response: duration(&raw.response, proxy.response)?,
        stream_idle: optional(&raw.stream_idle, proxy.stream_idle)?,
        sse_keepalive: optional(&raw.sse_keepalive, proxy.sse_keepalive)?,
    })
}

fn header_rules(raw: &RawHeaderRules) -> Result<HeaderRules, Invalid> {
    let name = |text: &str, at: &dyn Fn(String) -> Invalid| {
        HeaderName::from_bytes(text.as_bytes())
            .map_err(|_| at(format!("`{text}` is not a header name")))
    };
    let pairs = |table: &Option<Spanned<BTreeMap<String, String>>>| {
        let Some(table) = table else {
            return Ok(Vec::new());
        };
        let at = |message| invalid(table, message);
        table
            .get_ref()
            .iter()
            .map(|(key, value)| {
                let value = HeaderValue::from_str(value)
                    .map_err(|_| at(format!("the value of `{key}` is not a header value")))?;
                Ok((name(key, &at)?, value))
            })
            .collect::<Result<Vec<_>, Invalid>>()
    };
    let remove = raw
        .remove
        .iter()
        .map(|text| name(text.get_ref(), &|message| invalid(text, message)))
        .collect::<Result<_, _>>()?;
    Ok(HeaderRules {
        remove,
        set: pairs(&raw.set)?,
        add: pairs(&raw.add)?,
    })
}
