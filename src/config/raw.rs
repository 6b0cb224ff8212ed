//! The raw shape serde reads: every table refuses unknown keys, and values that validation may
//! refuse keep their place in the file (`Spanned`) so the error can point at them.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default, deserialize_with = "listeners")]
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
    pub(super) policy: Option<super::policy::RawPolicy>,
    #[serde(default)]
    pub(super) lifecycle: RawLifecycle,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLifecycle {
    pub(super) upgrade_socket: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) reuse_port: bool,
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
    pub(super) max_connections: Option<Spanned<usize>>,
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

/// A pool entry: `"HOST:PORT"` or `{ address = "HOST:PORT", weight = N }`. Read by hand rather
/// than as an untagged enum, whose only error is "did not match any variant": each mistake gets
/// its own message saying what to write.
pub(super) enum RawBackend {
    Address(String),
    Weighted { address: String, weight: u32 },
}

const BACKEND_SHAPE: &str = "write \"HOST:PORT\" or { address = \"HOST:PORT\", weight = 2 }";

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BackendVisitor)
    }
}

struct BackendVisitor;

impl<'de> Visitor<'de> for BackendVisitor {
    type Value = RawBackend;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a backend: {BACKEND_SHAPE}")
    }

    fn visit_str<E: de::Error>(self, address: &str) -> Result<RawBackend, E> {
        Ok(RawBackend::Address(address.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBackend, A::Error> {
        let (mut address, mut weight) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<toml::Value>()?;
            match (key.as_str(), value) {
                ("address", toml::Value::String(text)) => address = Some(text),
                ("address", other) => {
                    return Err(de::Error::custom(format!(
                        "address = {other} is not a string: write address = \"HOST:PORT\""
                    )));
                }
                ("weight", value) => weight = Some(weight_of(&value).map_err(de::Error::custom)?),
                (other, _) => {
                    return Err(de::Error::custom(format!(
                        "unknown key `{other}` in a backend: {BACKEND_SHAPE}"
                    )));
                }
            }
        }
        let address = address.ok_or_else(|| {
            de::Error::custom(format!("a backend table needs `address`: {BACKEND_SHAPE}"))
        })?;
        Ok(RawBackend::Weighted {
            address,
            weight: weight.unwrap_or(1),
        })
    }
}

/// A weight or a share: a whole number written without quotes.
fn weight_of(value: &toml::Value) -> Result<u32, String> {
    match value {
        toml::Value::Integer(n) => u32::try_from(*n)
            .map_err(|_| format!("weight = {n} is out of range: write a whole number 1..=1000")),
        toml::Value::String(text) if text.trim().parse::<u32>().is_ok() => Err(format!(
            "weight = \"{text}\" is a string: write the number without quotes, weight = {}",
            text.trim()
        )),
        other => Err(format!(
            "weight = {other} is not a whole number: write e.g. weight = 2"
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    /// Required without `[[route]]`; beside routes it is the catch-all route `default`.
    pub(super) active: Option<Spanned<RawActive>>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<Spanned<String>>,
}

/// `active = "blue"` or `active = { blue = 90, green = 10 }`, read by hand for the same reason as
/// [`RawBackend`].
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
    pub(super) policy: Option<super::policy::RawPolicy>,
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

const ACTIVE_SHAPE: &str = "write the pool that takes new work, active = \"blue\", or shares, active = { blue = 90, green = 10 }";

impl<'de> Deserialize<'de> for RawActive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ActiveVisitor)
    }
}

struct ActiveVisitor;

impl<'de> Visitor<'de> for ActiveVisitor {
    type Value = RawActive;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "routing.active: {ACTIVE_SHAPE}")
    }

    fn visit_str<E: de::Error>(self, pool: &str) -> Result<RawActive, E> {
        Ok(RawActive::One(pool.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawActive, A::Error> {
        let mut split = BTreeMap::new();
        while let Some(pool) = map.next_key::<String>()? {
            let share = weight_of(&map.next_value::<toml::Value>()?)
                .map_err(|why| de::Error::custom(why.replacen("weight", &pool, 2)))?;
            split.insert(pool, share);
        }
        Ok(RawActive::Split(split))
    }
}

/// `[[listener]]` tables. A single `[listener]` table is the usual slip; serde's own message for it
/// ("invalid type: map, expected a sequence") does not say what to write.
fn listeners<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RawListener>, D::Error> {
    struct Listeners;
    impl<'de> Visitor<'de> for Listeners {
        type Value = Vec<RawListener>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("listeners as [[listener]] tables (double brackets, one per listener)")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut listeners = Vec::new();
            while let Some(listener) = seq.next_element()? {
                listeners.push(listener);
            }
            Ok(listeners)
        }

        fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(
                "[listener] is one table, but listeners are an array of tables: write \
                 [[listener]] (double brackets), once per listener",
            ))
        }
    }
    deserializer.deserialize_any(Listeners)
}

pub(super) type RawDuration = Option<Spanned<String>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    pub(super) idle_timeout: RawDuration,
    pub(super) max_sessions: Option<Spanned<usize>>,
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
    pub(super) client_body: RawDuration,
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
