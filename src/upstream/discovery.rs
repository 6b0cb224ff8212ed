//! DNS discovery: pool entries written as hostnames follow what the name resolves to.
//!
//! A pool entry `fleet.internal:3000` stands for every address the name resolves to, re-resolved
//! every `discovery.interval` (a Kubernetes headless Service answers with one A record per ready
//! pod). Each address becomes a backend of its own, keyed by `ip:port`, so replicas that resolve
//! the same answer agree on backend identities (and on sealed session owners). Addresses that
//! stay keep their backend (counters, health, pooled connections); new ones join; vanished ones
//! drain through the snapshot's usual drain path. A failed lookup keeps the last good answer:
//! a DNS outage must not empty the pool.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::{BackendConfig, Config, DiscoveryConfig};

/// How long one round of lookups may take before it is abandoned (the last answers stay).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Hostname pool entry as written (`fleet.internal:3000`) → the addresses it resolved to.
pub type Resolved = BTreeMap<String, Vec<SocketAddr>>;

/// The backend addresses one pool entry stands for: itself, unless it is a hostname under
/// discovery; then whatever it last resolved to (nothing before the first answer).
pub fn expand(
    entry: &BackendConfig,
    discovery: &DiscoveryConfig,
    resolved: &Resolved,
) -> Vec<String> {
    if discovery.interval.is_none() || entry.hostname().is_none() {
        return vec![entry.address.clone()];
    }
    resolved
        .get(&entry.address)
        .map(|addresses| addresses.iter().map(SocketAddr::to_string).collect())
        .unwrap_or_default()
}

/// Hostname entries of every pool, deduplicated.
pub fn hostnames(config: &Config) -> BTreeSet<String> {
    config
        .pools
        .values()
        .flat_map(|p| &p.backends)
        .filter(|b| b.hostname().is_some())
        .map(|b| b.address.clone())
        .collect()
}

/// How names are resolved: the system resolver, or one configured nameserver.
pub enum Lookup {
    System,
    Nameserver(SocketAddr, Box<TokioResolver>),
}

impl Lookup {
    pub fn new(nameserver: Option<SocketAddr>) -> Result<Lookup, String> {
        let Some(address) = nameserver else {
            return Ok(Lookup::System);
        };
        let mut server = NameServerConfig::udp_and_tcp(address.ip());
        for connection in &mut server.connections {
            connection.port = address.port();
        }
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![server]),
            TokioRuntimeProvider::default(),
        );
        // Discovery decides how often to ask; a cache would only delay changes.
        builder.options_mut().cache_size = 0;
        let resolver = builder.build().map_err(|e| e.to_string())?;
        Ok(Lookup::Nameserver(address, Box::new(resolver)))
    }

    pub fn serves(&self, nameserver: Option<SocketAddr>) -> bool {
        match (self, nameserver) {
            (Lookup::System, None) => true,
            (Lookup::Nameserver(current, _), Some(wanted)) => *current == wanted,
            _ => false,
        }
    }

    /// Every address `host:port` resolves to, sorted.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let mut addresses: Vec<SocketAddr> = match self {
            // The system resolver honours /etc/hosts and nsswitch, as operators expect.
            Lookup::System => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| e.to_string())?
                .collect(),
            Lookup::Nameserver(_, resolver) => resolver
                .lookup_ip(host)
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        };
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: &str) -> BackendConfig {
        BackendConfig {
            address: address.into(),
            weight: 1,
        }
    }

    #[test]
    fn only_hostnames_under_discovery_expand() {
        let on = DiscoveryConfig {
            interval: Some(Duration::from_secs(10)),
            resolver: None,
        };
        let off = DiscoveryConfig {
            interval: None,
            resolver: None,
        };
        let mut resolved = Resolved::new();
        resolved.insert(
            "fleet.internal:3000".into(),
            vec![
                "10.0.0.1:3000".parse().unwrap(),
                "10.0.0.2:3000".parse().unwrap(),
            ],
        );
        assert_eq!(
            expand(&entry("fleet.internal:3000"), &on, &resolved),
            ["10.0.0.1:3000", "10.0.0.2:3000"]
        );
        assert!(expand(&entry("other.internal:3000"), &on, &resolved).is_empty());
        assert_eq!(
            expand(&entry("fleet.internal:3000"), &off, &resolved),
            ["fleet.internal:3000"]
        );
        assert_eq!(expand(&entry("10.0.0.9:1"), &on, &resolved), ["10.0.0.9:1"]);
        assert_eq!(expand(&entry("[::1]:1"), &on, &resolved), ["[::1]:1"]);
    }
}
