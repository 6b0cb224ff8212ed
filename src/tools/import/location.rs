//! `location` → a route: its path from the location, its pool and prefix stripping from
//! `proxy_pass`, and its Host policy, timeouts, body limit and response headers from what the
//! location sets or inherits.

use super::parse::Directive;
use super::translate::{Inherited, Line, PoolOut, RouteOut, Translation};
use super::upstream::{backend_address, duration, pool_name, size};

pub(super) fn location(
    d: &Directive,
    parent: &Inherited<'_>,
    hosts: &[String],
    hosts_from: Option<&str>,
    out: &mut Translation,
) {
    let block = d.block.as_deref().unwrap_or_default();
    let Some((exact, path)) = location_path(d, out) else {
        return;
    };
    let inherited = parent.level(block, out);
    let mut pass = None;
    for directive in block {
        match directive.name.as_str() {
            "proxy_pass" => pass = Some(directive),
            "location" => out.note(directive, "nested locations are not translated"),
            name if Inherited::takes(name) => {}
            _ => out.note(directive, "no Switchyard equivalent in a location"),
        }
    }
    let Some(pass) = pass else {
        out.note(d, "no proxy_pass: no route made");
        return;
    };
    let Some((pool, strip)) = target(pass, exact, out) else {
        return;
    };
    let key = (
        hosts.to_vec(),
        format!("{}{path}", if exact { "=" } else { "" }),
    );
    if out.routes.iter().any(|r| r.key == key) {
        out.note(
            d,
            "takes the same host and path as an earlier location (Switchyard's routes serve every \
             listener): not translated",
        );
        return;
    }
    let mut route = RouteOut {
        key,
        ..RouteOut::default()
    };
    let name = unique_name(out, hosts.first().map_or("", String::as_str), &path, exact);
    route
        .lines
        .push(Line::new(format!("name = {}", quote(&name)), d));
    if let (false, Some(from)) = (hosts.is_empty(), hosts_from) {
        let list: Vec<String> = hosts.iter().map(|h| quote(h)).collect();
        route.lines.push(Line {
            text: format!("hosts = [{}]", list.join(", ")),
            from: from.to_string(),
        });
    }
    let kind = if exact { "exact" } else { "prefix" };
    route
        .lines
        .push(Line::new(format!("{kind} = {}", quote(&path)), d));
    if strip {
        route
            .lines
            .push(Line::new("strip_prefix = true".into(), pass));
    }
    route
        .lines
        .push(Line::new(format!("active = {}", quote(&pool)), pass));
    route.lines.push(host_policy(inherited.host, out));
    settings(&inherited, &mut route, out);
    out.routes.push(route);
}

/// `(exact, path)` of `location [=|^~] PATH`; regular expressions and named locations are not
/// translated.
fn location_path(d: &Directive, out: &mut Translation) -> Option<(bool, String)> {
    let (exact, path) = match d.args.as_slice() {
        [path] => (false, path),
        [modifier, path] if modifier == "^~" => (false, path),
        [modifier, path] if modifier == "=" => (true, path),
        [modifier, ..] if modifier.starts_with('~') => {
            out.note(d, "regular-expression locations are not translated");
            return None;
        }
        _ => {
            out.note(d, "only prefix and exact (=) locations are translated");
            return None;
        }
    };
    if !path.starts_with('/') {
        out.note(d, "only prefix and exact (=) locations are translated");
        return None;
    }
    Some((exact, path.clone()))
}

/// The pool `proxy_pass` names (an upstream, or a pool made for its address), and whether the
/// location prefix is stripped (a URI after the address: nginx replaces the prefix with it).
fn target(pass: &Directive, exact: bool, out: &mut Translation) -> Option<(String, bool)> {
    let url = pass.arg(0).unwrap_or("");
    let parsed = url
        .strip_prefix("http://")
        .map(|rest| (false, rest))
        .or_else(|| url.strip_prefix("https://").map(|rest| (true, rest)));
    let Some((tls, rest)) = parsed.filter(|_| !url.contains('$')) else {
        out.note(
            pass,
            "only http:// and https:// addresses without variables are translated",
        );
        return None;
    };
    let (authority, uri) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let named = out.upstreams.iter().find(|(name, _)| name == authority);
    let pool = match named {
        Some((_, pool)) if !tls => pool.clone(),
        _ => address_pool(authority, tls, pass, out)?,
    };
    let strip = !uri.is_empty();
    if strip && exact {
        out.note(
            pass,
            "the URI replaces an exact location's path: not translated",
        );
        return Some((pool, false));
    }
    if strip && uri != "/" {
        out.note(
            pass,
            &format!("nginx puts `{uri}` in place of the prefix; Switchyard only strips it"),
        );
    }
    Some((pool, strip))
}

fn address_pool(
    authority: &str,
    tls: bool,
    pass: &Directive,
    out: &mut Translation,
) -> Option<String> {
    let Some(address) = backend_address(authority, tls) else {
        out.note(pass, "not a host:port address");
        return None;
    };
    let name = pool_name(address.trim_start_matches("https://"));
    if !out.pools.iter().any(|p| p.name == name) {
        let mut pool = PoolOut::new(name.clone(), pass.origin());
        pool.backends.push(Line::new(quote(&address), pass));
        out.pools.push(pool);
    }
    Some(name)
}

fn unique_name(out: &Translation, host: &str, path: &str, exact: bool) -> String {
    let base = format!("{host}{}{path}", if exact { "=" } else { "" });
    let taken = |name: &str| {
        out.routes.iter().any(|r| {
            r.lines
                .first()
                .is_some_and(|l| l.text == format!("name = {}", quote(name)))
        })
    };
    let mut name = base.clone();
    let mut n = 2;
    while taken(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// `host = …` from `proxy_set_header Host`; without one nginx sends the upstream's name, the
/// nearest Switchyard policy being the backend's own address.
fn host_policy(host: Option<&Directive>, out: &mut Translation) -> Line {
    let Some(d) = host else {
        return Line {
            text: "host = \"backend\"".into(),
            from: "no proxy_set_header Host: nginx sends the upstream's name".into(),
        };
    };
    let policy = match d.arg(1).unwrap_or("") {
        "$host" | "$http_host" => "client".to_string(),
        "$proxy_host" => "backend".to_string(),
        fixed if !fixed.contains('$') && !fixed.is_empty() => fixed.to_string(),
        _ => {
            out.note(
                d,
                "a Host built from variables is not translated: the client's is sent",
            );
            "client".to_string()
        }
    };
    Line::new(format!("host = {}", quote(&policy)), d)
}

/// Timeouts, body limit and response headers the location sets or inherits.
fn settings(inherited: &Inherited<'_>, route: &mut RouteOut, out: &mut Translation) {
    if let Some(d) = inherited.body_size {
        match d.arg(0).and_then(size) {
            Some(bytes) => route
                .lines
                .push(Line::new(format!("max_request_body = {bytes}"), d)),
            None => out.note(d, "not a size"),
        }
    }
    if let Some(d) = inherited.read_timeout {
        match d.arg(0).and_then(duration) {
            Some(t) => {
                route
                    .timeouts
                    .push(Line::new(format!("response = \"{t}\""), d));
                route
                    .timeouts
                    .push(Line::new(format!("stream_idle = \"{t}\""), d));
            }
            None => out.note(d, "not a time"),
        }
    }
    if let Some(d) = inherited.connect_timeout {
        match d.arg(0).and_then(duration) {
            Some(t) => route
                .timeouts
                .push(Line::new(format!("connect = \"{t}\""), d)),
            None => out.note(d, "not a time"),
        }
    }
    for d in &inherited.add_headers {
        match (d.arg(0), d.arg(1)) {
            (Some(name), Some(value)) if !value.contains('$') => {
                let line = format!("{} = {}", quote(name), quote(value));
                if !route
                    .add_headers
                    .iter()
                    .any(|l| l.text.starts_with(&quote(name)))
                {
                    route.add_headers.push(Line::new(line, d));
                }
            }
            _ => out.note(d, "a header value with variables is not translated"),
        }
    }
    for d in &inherited.hide_headers {
        if let Some(name) = d.arg(0) {
            route.remove_headers.push(Line::new(quote(name), d));
        }
    }
}

/// A TOML string.
pub(super) fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}
