//! The request as the backend sees it, and the client address behind it: hop-by-hop headers
//! stripped, `X-Forwarded-*` set, origin-form target, HTTP/1.1.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::config::{Cidr, Config};
use crate::mcp::classify::is_websocket_upgrade;
use crate::upstream::body::RequestBody;

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

/// Hop-by-hop headers, `Upgrade` last (kept on an upgrade).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and those the `Connection` header names. For an upgrade, the
/// `Upgrade` and `Connection: upgrade` pair is what the next hop needs, so it stays.
///
/// One pass over the names present finds what must go, so a request without hop-by-hop
/// headers costs no lookups (removing an absent name still hashes it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        remove_connection_named(headers, upgrade);
    }
    let keep = if upgrade {
        HOP_BY_HOP.len() - 1
    } else {
        HOP_BY_HOP.len()
    };
    for (i, name) in HOP_BY_HOP[..keep].iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes the headers the `Connection` header names (the `Connection` header itself stays for
/// the caller). Names are looked up as they are, without building `HeaderName`s.
fn remove_connection_named(headers: &mut HeaderMap, upgrade: bool) {
    let mut values = headers.get_all(header::CONNECTION).iter();
    let first = values.next().cloned();
    // Almost always one value; more are collected only when sent.
    let rest: Vec<HeaderValue> = values.cloned().collect();
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim) {
            let skip = name.eq_ignore_ascii_case("keep-alive")
                || name.eq_ignore_ascii_case("close")
                || (upgrade && name.eq_ignore_ascii_case("upgrade"));
            if !skip {
                // An invalid name finds nothing.
                headers.remove(name);
            }
        }
    }
}

/// The client's request rewritten for the backend, its body counted and cut at `limit`.
pub fn upstream_request(
    request: Request<Incoming>,
    conn: &ConnInfo,
    client_ip: IpAddr,
    config: &Config,
    limit: Option<u64>,
    bytes_in: Counter,
) -> Request<RequestBody> {
    let (mut parts, body) = request.into_parts();
    let upgrade = is_websocket_upgrade(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let host = match parts.headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => {
            // An absolute-form target (or HTTP/2's :authority) names the host instead.
            let host = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(host) = &host {
                parts.headers.insert(header::HOST, host.clone());
            }
            host
        }
    };
    let trusted = &config.trusted_proxies;
    let peer_trusted = trusted.iter().any(|c| c.contains(conn.peer.ip()));
    set_forwarded(
        &mut parts.headers,
        conn,
        client_ip,
        peer_trusted,
        host.as_ref(),
    );
    if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_none() {
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
    }
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, RequestBody::streaming(body, limit, bytes_in))
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
    let existing = headers
        .get(&X_FORWARDED_FOR)
        .filter(|_| peer_trusted)
        .map(HeaderValue::as_bytes);
    if let Some(value) = forwarded_for(existing, conn.peer.ip(), client_ip) {
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

/// The `X-Forwarded-For` value: the trusted peer appended to what it sent, or the client alone.
/// Written straight into the value's bytes.
fn forwarded_for(existing: Option<&[u8]>, peer: IpAddr, client_ip: IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    // The longest IPv6 text is 45 bytes.
    let mut ip = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut ip[..]);
    let address = if existing.is_some() { peer } else { client_ip };
    write!(cursor, "{}", address.to_canonical()).ok()?;
    let written = usize::try_from(cursor.position()).ok()?;
    let ip = &ip[..written];
    match existing {
        Some(existing) => {
            let mut value = Vec::with_capacity(existing.len() + 2 + ip.len());
            value.extend_from_slice(existing);
            value.extend_from_slice(b", ");
            value.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
        }
        None => HeaderValue::from_bytes(ip).ok(),
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
    fn connection_named_headers_go_whatever_their_case_or_number() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("Keep-Alive, X-One"));
        h.append(
            "connection",
            HeaderValue::from_static("x-two, bad name, ,close"),
        );
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn forwarded_for_appends_to_a_trusted_peer_or_names_the_client() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "::ffff:1.2.3.4".parse().unwrap();
        assert_eq!(forwarded_for(None, peer, client).unwrap(), "1.2.3.4");
        let v6: IpAddr = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(
            forwarded_for(Some(b"6.6.6.6"), v6, client).unwrap(),
            "6.6.6.6, 2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert!(forwarded_for(Some(b"bad\x01"), peer, client).is_none());
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
