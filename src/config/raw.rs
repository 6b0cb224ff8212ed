//! The raw shape serde reads: every table refuses unknown keys, and values that validation may
//! refuse keep their place in the file (`Spanned`) so the error can point at them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listener: Vec<RawListener>,
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) pools: BTreeMap<String, RawPool>,
    pub(super) routing: Option<RawRouting>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub(super) sessions: RawSessions,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) reload: RawReload,
    pub(super) health: Option<RawHealth>,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) discovery: RawDiscovery,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    pub(super) watch_interval: RawDuration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub(super) interval: RawDuration,
    pub(super) resolver: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) bind: Spanned<String>,
    pub(super) tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
    #[serde(default)]
    pub(super) redirect_https: Option<Spanned<bool>>,
    pub(super) redirect: Option<Spanned<String>>,
}

/// `tls = { cert = "…", key = "…" }`, optionally with more pairs chosen by SNI in
/// `certificates = [{ cert = "…", key = "…" }, …]` and client certificates checked against
/// `client_ca`. The first pair is the default for clients that match no certificate.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) certificates: Vec<Spanned<RawCertPair>>,
    pub(super) client_ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertPair {
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) bind: Spanned<String>,
    pub(super) token_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) backends: Spanned<Vec<Spanned<RawBackend>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawBackend {
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
pub(super) struct RawRouting {
    /// Required without `[[route]]`; beside routes it is the catch-all route `default`.
    pub(super) active: Option<Spanned<RawActive>>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawActive {
    One(String),
    Split(BTreeMap<String, u32>),
}

/// One `[[route]]`: which requests (host, path) go to which pools, and how.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) hosts: Vec<Spanned<String>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) exact: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    pub(super) pools: Option<Vec<Spanned<String>>>,
    pub(super) active: Spanned<RawActive>,
    pub(super) host: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeouts: RawRouteTimeouts,
    pub(super) max_request_body: Option<u64>,
    pub(super) health_path: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) response_headers: RawHeaderRules,
}

/// The timeouts a route may set for itself; the others are the proxy's.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteTimeouts {
    pub(super) connect: RawDuration,
    pub(super) response: RawDuration,
    pub(super) stream_idle: RawDuration,
    pub(super) sse_keepalive: RawDuration,
}

/// Response header edits: `set` replaces, `add` appends, `remove` deletes.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderRules {
    pub(super) set: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) add: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    pub(super) remove: Vec<Spanned<String>>,
}

pub(super) type RawDuration = Option<Spanned<String>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    pub(super) idle_timeout: RawDuration,
    pub(super) max_sessions: Option<usize>,
    pub(super) seal: Option<Spanned<bool>>,
    pub(super) seal_keys_file: Option<Spanned<String>>,
    pub(super) seal_keys_env: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) connect: RawDuration,
    pub(super) response: RawDuration,
    pub(super) stream_idle: RawDuration,
    pub(super) sse_keepalive: RawDuration,
    pub(super) drain: RawDuration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) max_idle_per_backend: Option<usize>,
    pub(super) idle_timeout: RawDuration,
    pub(super) retries: Option<usize>,
    pub(super) ca: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<usize>,
    pub(super) header_read_timeout: RawDuration,
    pub(super) handshake_timeout: RawDuration,
    pub(super) max_header_size: Option<Spanned<usize>>,
    pub(super) max_headers: Option<Spanned<usize>>,
    pub(super) max_request_body: Option<u64>,
    pub(super) http2_max_concurrent_streams: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) path: Option<Spanned<String>>,
    pub(super) interval: RawDuration,
    pub(super) timeout: RawDuration,
    pub(super) jitter: RawDuration,
    pub(super) rise: Option<Spanned<u32>>,
    pub(super) fall: Option<Spanned<u32>>,
    pub(super) expect_status: Option<Spanned<String>>,
    pub(super) max_fails: Option<u32>,
    pub(super) fail_window: RawDuration,
    pub(super) ejection: RawDuration,
    pub(super) fail_open: Option<bool>,
}
