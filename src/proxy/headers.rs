//! The request as the backend sees it, and the client address behind it: hop-by-hop headers
//! stripped, `X-Forwarded-*` set, origin-form target, HTTP/1.1.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::config::{Cidr, Config};
use crate::mcp::classify::is_websocket_upgrade;
use crate::upstream::body::{BodyLimits, RequestBody};

use super::request::ConnInfo;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client address: the peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let entries = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for entry in entries.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => break,
        }
    }
    client
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers and those the `Connection` header names. For an upgrade, the
/// `Upgrade` and `Connection: upgrade` pair is what the next hop needs, so it stays.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The client's request rewritten for the backend, its body counted and cut at `limits`.
pub fn upstream_request(
    request: Request<Incoming>,
    conn: &ConnInfo,
    client_ip: IpAddr,
    config: &Config,
    limits: BodyLimits,
    bytes_in: Counter,
) -> Request<RequestBody> {
    let (mut parts, body) = request.into_parts();
    let upgrade = is_websocket_upgrade(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let trusted = &config.trusted_proxies;
    let peer_trusted = trusted.iter().any(|c| c.contains(conn.peer.ip()));
    set_forwarded(
        &mut parts.headers,
        conn,
        client_ip,
        peer_trusted,
        host.as_ref(),
    );
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .cloned()
        .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, RequestBody::streaming(body, limits, bytes_in))
}

/// `X-Forwarded-*`: appended to when the peer is a trusted proxy, replaced otherwise, so an
/// untrusted client cannot forge its address for the backend.
fn set_forwarded(
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    client_ip: IpAddr,
    peer_trusted: bool,
    host: Option<&HeaderValue>,
) {
    let peer = conn.peer.ip().to_canonical().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if peer_trusted => format!("{existing}, {peer}"),
        _ => client_ip.to_canonical().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if conn.tls { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrade_keeps_the_upgrade_pair() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.9"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }
}
