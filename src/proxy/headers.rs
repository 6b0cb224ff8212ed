//! The request as the backend sees it, and the client address behind it: hop-by-hop headers
//! stripped, client-address headers only as the proxy vouches for them (`X-Forwarded-*` and
//! `Forwarded` set, others dropped unless a trusted proxy sent them), the host the target's
//! authority names, origin-form target, HTTP/1.1.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::config::{Cidr, Config};
use crate::mcp::classify::is_websocket_upgrade;
use crate::upstream::body::{BodyLimits, RequestBody};
use crate::upstream::h1::Outbound;
use crate::upstream::h1::codec::AddedFields;

use super::request::ConnInfo;
use super::request_id::RequestId;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers through which a client could claim an address, scheme, host or port that
/// frameworks believe: kept only from trusted proxies. The first four the proxy writes itself
/// (appending to a trusted proxy's `Forwarded` and `X-Forwarded-For`).
static CLIENT_CLAIMS: [HeaderName; 14] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-original-forwarded-for"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
];

/// The place of `name` in [`CLIENT_CLAIMS`]. A `match` on the text looks at lengths first, so a
/// name that is no claim costs a comparison or two, not fourteen (the request path asks it for
/// every field of every request).
fn claim_index(name: &str) -> Option<usize> {
    Some(match name {
        "forwarded" => 0,
        "x-forwarded-for" => 1,
        "x-forwarded-proto" => 2,
        "x-forwarded-host" => 3,
        "x-real-ip" => 4,
        "true-client-ip" => 5,
        "cf-connecting-ip" => 6,
        "x-client-ip" => 7,
        "x-cluster-client-ip" => 8,
        "fastly-client-ip" => 9,
        "x-original-forwarded-for" => 10,
        "x-forwarded-port" => 11,
        "x-forwarded-ssl" => 12,
        "x-forwarded-scheme" => 13,
        _ => return None,
    })
}

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

/// The place of `name` in [`HOP_BY_HOP`], found as [`claim_index`] finds a claim's.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

fn has_underscore(name: &HeaderName) -> bool {
    name.as_str().bytes().any(|b| b == b'_')
}

/// Removes hop-by-hop headers and those the `Connection` header names. For an upgrade, the
/// `Upgrade` and `Connection: upgrade` pair is what the next hop needs, so it stays.
///
/// One pass over the names present finds what must go, so a request without hop-by-hop
/// headers costs no lookups (removing an absent name still hashes it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
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

/// The client's request rewritten for the backend, its body counted and cut at `limits`, with
/// the proxy's own fields (`Forwarded`, `X-Forwarded-*`, the request id) beside it. Boxed: it
/// passes through every phase of the send (and back on a retry), each of which would otherwise
/// hold and move a copy of it.
pub fn upstream_request(
    request: Request<Incoming>,
    conn: &ConnInfo,
    (client_ip, request_id): (IpAddr, &RequestId),
    config: &Config,
    limits: BodyLimits,
    bytes_in: Counter,
) -> Box<Outbound> {
    let (mut parts, body) = request.into_parts();
    let upgrade = is_websocket_upgrade(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let host = target_host(&parts.uri, &parts.headers);
    let trusted = &config.trusted_proxies;
    let peer_trusted = trusted.iter().any(|c| c.contains(conn.peer.ip()));
    strip_claims(&mut parts.headers, peer_trusted);
    let mut added = AddedFields::with_capacity(ADDED_ROOM);
    add_forwarded(
        &mut parts.headers,
        &mut added,
        conn,
        (client_ip, peer_trusted),
        host.as_ref(),
    );
    request_id.stamp(&mut parts.headers, &mut added);
    // A Host header the client sent is already in place; the target's authority replaces it.
    if parts.uri.authority().is_some()
        && let Some(host) = host
    {
        parts.headers.insert(header::HOST, host);
    }
    if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_none() {
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
    }
    parts.version = Version::HTTP_11;
    Box::new(Outbound {
        request: Request::from_parts(
            parts,
            RequestBody::streaming(body, limits, bytes_in, &conn.body_read),
        ),
        added,
    })
}

/// Room for the added fields of a typical request, allocated once: `Forwarded` with a host,
/// three `X-Forwarded-*` and a request id come to about 150 bytes.
const ADDED_ROOM: usize = 224;

/// The host the request is for: the target's authority when it has one (an absolute-form
/// HTTP/1 target, RFC 9112 section 3.2.2; HTTP/2's `:authority`, RFC 9113 section 8.3.1), which
/// wins over a `Host` header; else the `Host` header.
fn target_host(uri: &http::Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    let authority = uri.authority().map(|a| {
        // User info is no part of a host.
        let text = a.as_str();
        text.rsplit_once('@').map_or(text, |(_, host)| host)
    });
    match authority.and_then(|a| HeaderValue::from_str(a).ok()) {
        Some(host) => Some(host),
        None => headers.get(header::HOST).cloned(),
    }
}

/// Drops header names with underscores, whoever sent them (CGI-style frameworks read
/// `X_Forwarded_For` as `X-Forwarded-For`; nginx ignores such names by default), and, from
/// peers that are not trusted proxies, every other client-address claim.
///
/// One pass over the names present finds what must go: a request that claims nothing costs no
/// removals (removing an absent name still hashes it, ten times per request).
fn strip_claims(headers: &mut HeaderMap, peer_trusted: bool) {
    let mut claims = 0u16;
    let mut underscores = false;
    for name in headers.keys() {
        underscores |= has_underscore(name);
        if !peer_trusted && let Some(i) = claim_index(name.as_str()) {
            claims |= 1 << i;
        }
    }
    if underscores {
        while let Some(name) = headers.keys().find(|n| has_underscore(n)).cloned() {
            headers.remove(&name);
        }
    }
    for (i, name) in CLIENT_CLAIMS.iter().enumerate() {
        if claims & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// `Forwarded` (RFC 7239) for this hop, written into `value`: who connected (`for`, the TCP
/// peer or the PROXY header's client), over what (`proto`) and for which host. A trusted
/// proxy's elements are kept before it, as `X-Forwarded-For` keeps its list; anything else is
/// replaced.
fn write_forwarded(
    value: &mut Vec<u8>,
    headers: &HeaderMap,
    conn: &ConnInfo,
    peer_trusted: bool,
    host: Option<&HeaderValue>,
) {
    if peer_trusted {
        for earlier in headers.get_all(header::FORWARDED).iter() {
            if earlier.to_str().is_ok() {
                value.extend_from_slice(earlier.as_bytes());
                value.extend_from_slice(b", ");
            }
        }
    }
    let ip = conn.peer_text.as_bytes();
    if ip.contains(&b':') {
        value.extend_from_slice(b"for=\"[");
        value.extend_from_slice(ip);
        value.extend_from_slice(b"]\"");
    } else {
        value.extend_from_slice(b"for=");
        value.extend_from_slice(ip);
    }
    value.extend_from_slice(if conn.tls {
        b";proto=https"
    } else {
        b";proto=http"
    });
    // A host is a quoted string: it may hold a colon, which a token may not.
    if let Some(host) = host.and_then(|h| h.to_str().ok())
        && !host.contains(['"', '\\'])
    {
        value.extend_from_slice(b";host=\"");
        value.extend_from_slice(host.as_bytes());
        value.push(b'"');
    }
}

/// `X-Forwarded-*` and `Forwarded`: appended to when the peer is a trusted proxy, replaced
/// otherwise, so an untrusted client cannot forge its address for the backend. An untrusted
/// peer's own are gone already (`strip_claims`); a trusted one's lists are taken out of the map
/// into the proxy's values, and its `-Proto` and `-Host` stay as they are.
fn add_forwarded(
    headers: &mut HeaderMap,
    added: &mut AddedFields,
    conn: &ConnInfo,
    (client_ip, peer_trusted): (IpAddr, bool),
    host: Option<&HeaderValue>,
) {
    added.push_with(&header::FORWARDED, |value| {
        write_forwarded(value, headers, conn, peer_trusted, host);
    });
    // A value that is not text is replaced, as an untrusted peer's is.
    let existing = if peer_trusted {
        headers
            .get(&X_FORWARDED_FOR)
            .filter(|v| v.to_str().is_ok())
            .cloned()
    } else {
        None
    };
    let value = match &existing {
        None if client_ip.to_canonical() == conn.peer.ip().to_canonical() => {
            Some(conn.peer_text.clone())
        }
        _ => forwarded_for(
            existing.as_ref().map(HeaderValue::as_bytes),
            conn.peer.ip(),
            client_ip,
        ),
    };
    if peer_trusted {
        headers.remove(header::FORWARDED);
        headers.remove(&X_FORWARDED_FOR);
    }
    if let Some(value) = value {
        added.push_value(&X_FORWARDED_FOR, &value);
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = HeaderValue::from_static(if conn.tls { "https" } else { "http" });
        added.push_value(&X_FORWARDED_PROTO, &proto);
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST))
        && let Some(host) = host
    {
        added.push_value(&X_FORWARDED_HOST, host);
    }
}

/// `ip` as header text, in canonical form (an IPv4-mapped IPv6 address as IPv4), written
/// straight into the value's bytes.
pub fn ip_text(ip: IpAddr) -> HeaderValue {
    use std::io::Write;
    // The longest IPv6 text is 45 bytes.
    let mut text = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    let written = write!(cursor, "{}", ip.to_canonical())
        .ok()
        .and_then(|()| usize::try_from(cursor.position()).ok())
        .unwrap_or(0);
    HeaderValue::from_bytes(&text[..written]).unwrap_or(HeaderValue::from_static(""))
}

/// The `X-Forwarded-For` value: the trusted peer appended to what it sent, or the client alone.
fn forwarded_for(existing: Option<&[u8]>, peer: IpAddr, client_ip: IpAddr) -> Option<HeaderValue> {
    let Some(existing) = existing else {
        return Some(ip_text(client_ip));
    };
    let peer = ip_text(peer);
    let mut value = Vec::with_capacity(existing.len() + 2 + peer.len());
    value.extend_from_slice(existing);
    value.extend_from_slice(b", ");
    value.extend_from_slice(peer.as_bytes());
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
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
    fn the_name_matches_find_each_listed_name_and_nothing_else() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        for (i, name) in CLIENT_CLAIMS.iter().enumerate() {
            assert_eq!(claim_index(name.as_str()), Some(i), "{name}");
        }
        for other in [
            "host",
            "content-length",
            "x-forwarded",
            "connections",
            "tee",
            "",
        ] {
            assert_eq!(hop_by_hop_index(other), None, "{other}");
            assert_eq!(claim_index(other), None, "{other}");
        }
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

    fn conn(peer: &str, tls: bool) -> ConnInfo {
        ConnInfo::new(peer.parse().unwrap(), tls, None).0
    }

    fn forwarded_value(
        headers: &HeaderMap,
        conn: &ConnInfo,
        peer_trusted: bool,
        host: Option<&HeaderValue>,
    ) -> Vec<u8> {
        let mut value = Vec::new();
        write_forwarded(&mut value, headers, conn, peer_trusted, host);
        value
    }

    #[test]
    fn forwarded_describes_this_hop() {
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let host = HeaderValue::from_static("app.example:8443");
        let v4 = conn("10.0.0.1:5000", true);
        assert_eq!(
            forwarded_value(&h, &v4, false, Some(&host)),
            b"for=10.0.0.1;proto=https;host=\"app.example:8443\""
        );
        assert_eq!(
            forwarded_value(&h, &v4, true, None),
            b"for=6.6.6.6, for=10.0.0.1;proto=https"
        );
        let v6 = conn("[2001:db8::1]:5000", false);
        assert_eq!(
            forwarded_value(&HeaderMap::new(), &v6, false, None),
            b"for=\"[2001:db8::1]\";proto=http"
        );
    }

    #[test]
    fn claims_are_dropped_unless_a_trusted_proxy_made_them() {
        let claims = || {
            let mut h = HeaderMap::new();
            h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
            h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
            h.insert("x_custom_thing", HeaderValue::from_static("1"));
            h.insert("accept", HeaderValue::from_static("*/*"));
            h
        };
        let mut untrusted = claims();
        strip_claims(&mut untrusted, false);
        assert_eq!(untrusted.keys().collect::<Vec<_>>(), ["accept"]);
        let mut trusted = claims();
        strip_claims(&mut trusted, true);
        let mut kept: Vec<&str> = trusted.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["accept", "x-real-ip"]);
    }

    #[test]
    fn the_target_authority_is_the_host() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("wrong.example"));
        let absolute: http::Uri = "http://user@right.example:81/x".parse().unwrap();
        assert_eq!(target_host(&absolute, &h).unwrap(), "right.example:81");
        let origin: http::Uri = "/x".parse().unwrap();
        assert_eq!(target_host(&origin, &h).unwrap(), "wrong.example");
        assert!(target_host(&origin, &HeaderMap::new()).is_none());
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
