//! `upstream` blocks become pools; their balancing and keep-alive settings become the proxy's;
//! and nginx's times and sizes become Switchyard's.

use super::parse::Directive;
use super::translate::{Line, PoolOut, Translation};

/// `upstream NAME { … }`: a pool `NAME` (and `NAME-backup` for `backup` servers).
pub(super) fn upstream(block: &Directive, out: &mut Translation) {
    let Some(name) = block.arg(0) else {
        out.note(block, "an upstream needs a name");
        return;
    };
    let mut pool = PoolOut::new(pool_name(name), block.origin());
    let mut backup = PoolOut::new(format!("{}-backup", pool_name(name)), block.origin());
    for directive in block.block.iter().flatten() {
        match directive.name.as_str() {
            "server" => server(directive, &mut pool, &mut backup, out),
            "ip_hash" => out.builtin(
                directive,
                "SSE streams and WebSockets are placed by a consistent hash of the full client \
                 address; a session's requests follow its session id",
            ),
            "least_conn" => out.builtin(
                directive,
                "session-less requests go to the backend with the fewest requests and streams",
            ),
            "keepalive" => match directive.arg(0).and_then(|n| n.parse::<usize>().ok()) {
                Some(count) => {
                    out.upstream_setting("max_idle_per_backend", count.to_string(), directive)
                }
                None => out.note(directive, "not a number"),
            },
            "keepalive_timeout" => match directive.arg(0).and_then(duration) {
                Some(d) => out.upstream_setting("idle_timeout", format!("\"{d}\""), directive),
                None => out.note(directive, "not a time"),
            },
            "zone" => out.builtin(
                directive,
                "backends' state is shared by the proxy's threads",
            ),
            _ => out.note(directive, "no Switchyard equivalent in a pool"),
        }
    }
    if pool.backends.is_empty() {
        out.note(block, "the upstream has no usable server: no pool was made");
    } else {
        out.pools.push(pool);
    }
    if !backup.backends.is_empty() {
        backup.comment = Some(
            "nginx's backup servers: Switchyard has no automatic backup, so this pool takes \
             traffic only when a route makes it active"
                .into(),
        );
        out.pools.push(backup);
    }
}

/// `server ADDRESS [weight=N] [max_fails=N] [fail_timeout=T] [backup] …`.
fn server(directive: &Directive, pool: &mut PoolOut, backup: &mut PoolOut, out: &mut Translation) {
    let Some(written) = directive.arg(0) else {
        out.note(directive, "a server needs an address");
        return;
    };
    let Some(address) = backend_address(written, false) else {
        out.note(
            directive,
            "not a host:port address (unix sockets are not supported)",
        );
        return;
    };
    let mut weight = 1;
    let mut into_backup = false;
    for parameter in &directive.args[1..] {
        let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        match key {
            "weight" => match value.parse::<u32>() {
                Ok(w) if (1..=1000).contains(&w) => weight = w,
                _ => out.note(directive, "weight must be 1..=1000"),
            },
            "max_fails" => match value.parse::<u32>() {
                Ok(n) => out.health_setting("max_fails", n.to_string(), directive),
                Err(_) => out.note(directive, "max_fails is not a number"),
            },
            "fail_timeout" => match duration(value) {
                Some(d) => {
                    out.health_setting("fail_window", format!("\"{d}\""), directive);
                    out.health_setting("ejection", format!("\"{d}\""), directive);
                }
                None => out.note(directive, "fail_timeout is not a time"),
            },
            "backup" => into_backup = true,
            "down" => {
                out.note(directive, "marked down: left out of the pool");
                return;
            }
            _ => out.note(
                directive,
                &format!("`{parameter}` has no Switchyard equivalent"),
            ),
        }
    }
    let entry = if weight == 1 {
        format!("\"{address}\"")
    } else {
        format!("{{ address = \"{address}\", weight = {weight} }}")
    };
    let target = if into_backup { backup } else { pool };
    if target
        .backends
        .iter()
        .all(|b| !b.text.contains(&format!("\"{address}\"")))
    {
        target.backends.push(Line::new(entry, directive));
    }
}

/// `host:port` for a backend written `host[:port]` (port 80, or 443 over TLS, when missing);
/// `https://host:port` when `tls`.
pub(super) fn backend_address(written: &str, tls: bool) -> Option<String> {
    if written.starts_with("unix:") || written.contains(['$', '/']) {
        return None;
    }
    let authority: http::uri::Authority = written.parse().ok()?;
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = authority.host();
    let address = format!("{host}:{port}");
    Some(if tls {
        format!("https://{address}")
    } else {
        address
    })
}

/// A TOML bare key from an nginx name.
pub(super) fn pool_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// An nginx time (`60`, `500ms`, `1h30m`, `1d`) as a Switchyard duration (`"60s"`).
pub(super) fn duration(text: &str) -> Option<String> {
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "" | "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ms = total_ms.checked_add(number.checked_mul(unit_ms)?)?;
    }
    Some(match total_ms {
        0 => "0s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    })
}

/// An nginx size (`1024`, `8k`, `10m`, `1g`) in bytes.
pub(super) fn size(text: &str) -> Option<u64> {
    let (number, unit) = match text.char_indices().last()? {
        (at, c) if c.is_ascii_alphabetic() => (&text[..at], c.to_ascii_lowercase()),
        _ => (text, 'b'),
    };
    let scale: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_values() {
        assert_eq!(duration("86400s").as_deref(), Some("24h"));
        assert_eq!(duration("60").as_deref(), Some("1m"));
        assert_eq!(duration("1h30m").as_deref(), Some("90m"));
        assert_eq!(duration("1d").as_deref(), Some("24h"));
        assert_eq!(duration("750ms").as_deref(), Some("750ms"));
        assert_eq!(duration("90s").as_deref(), Some("90s"));
        assert_eq!(duration("5x"), None);
        assert_eq!(size("10m"), Some(10 << 20));
        assert_eq!(size("8K"), Some(8192));
        assert_eq!(size("0"), Some(0));
        assert_eq!(size("1q"), None);
        assert_eq!(backend_address("mcp1", false).as_deref(), Some("mcp1:80"));
        assert_eq!(
            backend_address("10.0.0.1:3001", true).as_deref(),
            Some("https://10.0.0.1:3001")
        );
        assert_eq!(backend_address("unix:/tmp/s", false), None);
        assert_eq!(pool_name("mcp.backend"), "mcp-backend");
    }
}
