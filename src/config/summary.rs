//! The short human summary `switchyard check` prints once a config has validated and loaded.

use crate::mcp::seal::SealSetting;

use super::{Config, LoadedConfig};

impl LoadedConfig {
    /// One line per listener, admin listener and pool, then routing, sessions and discovery.
    pub fn summary(&self) -> String {
        let config = &self.config;
        let mut out = listeners(config);
        if let Some(admin) = &config.admin {
            let auth = if self.loaded.admin_token.is_some() {
                " (bearer token required)"
            } else {
                ""
            };
            out.push_str(&format!("admin     {}{auth}\n", admin.bind));
        }
        for (name, pool) in &config.pools {
            let backends: Vec<String> = pool
                .backends
                .iter()
                .map(|b| format!("{} (weight {})", b.address, b.weight))
                .collect();
            out.push_str(&format!("pool      {name}: {}\n", backends.join(", ")));
        }
        let active: Vec<String> = config
            .active
            .iter()
            .map(|(pool, weight)| format!("{pool} ({weight})"))
            .collect();
        out.push_str(&format!("active    {}\n", active.join(", ")));
        out.push_str(&format!("sessions  {}\n", sessions(&self.loaded.seal)));
        out.push_str(&discovery(config));
        out.push_str(&policy(config));
        out
    }
}

/// The policy line: what is counted, limited and required; nothing without `[policy]`.
fn policy(config: &Config) -> String {
    let Some(policy) = &config.policy else {
        return String::new();
    };
    let mut parts = vec!["MCP calls counted".to_string()];
    if !policy.limits.is_empty() {
        parts.push(format!("{} rate limit(s)", policy.limits.len()));
    }
    if let Some(auth) = &policy.auth {
        parts.push(format!("bearer JWT from {} required", auth.issuer));
        if !auth.allow.is_empty() {
            parts.push(format!("{} tool allow rule(s)", auth.allow.len()));
        }
    }
    format!("policy    {}\n", parts.join(", "))
}

fn listeners(config: &Config) -> String {
    let mut out = String::new();
    for listener in &config.listeners {
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
    out
}

fn sessions(seal: &SealSetting) -> String {
    match seal {
        SealSetting::Keys(keys) => format!("sealed ({} key(s), the first seals)", keys.len()),
        SealSetting::Ephemeral => {
            "sealed with a random per-process key (single replica only)".to_string()
        }
        SealSetting::Off => "in-memory table (sealing off)".to_string(),
    }
}

/// The discovery line, or nothing when no entry is a hostname or discovery is off.
fn discovery(config: &Config) -> String {
    let Some(interval) = config.discovery.interval else {
        return String::new();
    };
    let names = config
        .pools
        .values()
        .flat_map(|p| &p.backends)
        .filter(|b| b.hostname().is_some())
        .count();
    if names == 0 {
        return String::new();
    }
    let via = config
        .discovery
        .resolver
        .map_or_else(|| "the system resolver".to_string(), |r| r.to_string());
    format!("discovery {names} hostname entr(ies) every {interval:?} via {via}\n")
}
