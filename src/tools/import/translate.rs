//! The `http` block onto Switchyard: `upstream` → pools, `server` → listeners (TLS, redirects),
//! `location` → routes (host from `server_name`, prefix from the location, pool and prefix
//! stripping from `proxy_pass`). Settings nginx inherits from `http` to `server` to `location`
//! are inherited the same way, with nginx's rule that a level setting any `proxy_set_header` or
//! `add_header` drops the inherited ones.

use super::parse::Directive;
use super::upstream::upstream;

/// A TOML line and the nginx directive(s) it came from.
#[derive(Debug, Clone)]
pub(super) struct Line {
    pub text: String,
    pub from: String,
}

impl Line {
    pub fn new(text: String, directive: &Directive) -> Line {
        Line {
            text,
            from: directive.origin(),
        }
    }
}

#[derive(Debug)]
pub(super) struct PoolOut {
    pub name: String,
    pub from: String,
    pub backends: Vec<Line>,
    pub comment: Option<String>,
}

impl PoolOut {
    pub fn new(name: String, from: String) -> PoolOut {
        PoolOut {
            name,
            from,
            backends: Vec::new(),
            comment: None,
        }
    }
}

#[derive(Debug)]
pub(super) struct ListenerOut {
    pub bind: Line,
    /// `(cert, key, from)`; the first is the default certificate.
    pub tls: Vec<(String, String, String)>,
    pub redirect: Option<Line>,
    pub proxy_protocol: Option<Line>,
}

#[derive(Debug, Default)]
pub(super) struct RouteOut {
    pub lines: Vec<Line>,
    pub timeouts: Vec<Line>,
    pub remove_headers: Vec<Line>,
    pub add_headers: Vec<Line>,
    /// `(hosts, path)`: two locations that would make the same route.
    pub key: (Vec<String>, String),
}

#[derive(Debug, Default)]
pub(super) struct Translation {
    pub pools: Vec<PoolOut>,
    /// nginx upstream name → pool name.
    pub upstreams: Vec<(String, String)>,
    pub listeners: Vec<ListenerOut>,
    pub routes: Vec<RouteOut>,
    pub upstream: Vec<Line>,
    pub health: Vec<Line>,
    /// `FILE:LINE directive: why` for everything not translated.
    pub notes: Vec<String>,
    /// `(directive, why, FILE:LINE)` for what Switchyard does without being told.
    pub builtins: Vec<(String, String, String)>,
}

impl Translation {
    pub fn note(&mut self, directive: &Directive, why: &str) {
        push_once(&mut self.notes, format!("{}: {why}", directive.origin()));
    }

    pub fn builtin(&mut self, directive: &Directive, why: &str) {
        let entry = (directive.text(), why.to_string(), directive.at.clone());
        if !self.builtins.contains(&entry) {
            self.builtins.push(entry);
        }
    }

    pub fn upstream_setting(&mut self, key: &str, value: String, directive: &Directive) {
        setting(&mut self.upstream, &mut self.notes, key, value, directive);
    }

    pub fn health_setting(&mut self, key: &str, value: String, directive: &Directive) {
        setting(&mut self.health, &mut self.notes, key, value, directive);
    }
}

fn push_once(list: &mut Vec<String>, entry: String) {
    if !list.contains(&entry) {
        list.push(entry);
    }
}

/// A proxy-wide key set once; a later directive asking for another value is listed instead.
fn setting(
    lines: &mut Vec<Line>,
    notes: &mut Vec<String>,
    key: &str,
    value: String,
    d: &Directive,
) {
    let text = format!("{key} = {value}");
    match lines
        .iter()
        .find(|l| l.text.starts_with(&format!("{key} = ")))
    {
        None => lines.push(Line::new(text, d)),
        Some(line) if line.text == text => {}
        Some(line) => {
            let why = format!(
                "Switchyard has one `{key}` for all pools: kept `{}`",
                line.text
            );
            push_once(notes, format!("{}: {why}", d.origin()));
        }
    }
}

pub(super) fn translate(tree: &[Directive]) -> Translation {
    let mut out = Translation::default();
    for directive in tree {
        match directive.name.as_str() {
            "http" => http(directive, &mut out),
            _ => out.note(directive, "outside the http block: not translated"),
        }
    }
    out
}

fn http(block: &Directive, out: &mut Translation) {
    let directives = block.block.as_deref().unwrap_or_default();
    for directive in directives.iter().filter(|d| d.name == "upstream") {
        upstream(directive, out);
        if let Some(name) = directive.arg(0) {
            let pool = super::upstream::pool_name(name);
            if out.pools.iter().any(|p| p.name == pool) {
                out.upstreams.push((name.to_string(), pool));
            }
        }
    }
    let inherited = Inherited::default().level(directives, out);
    for directive in directives {
        match directive.name.as_str() {
            "upstream" => {}
            "server" => server(directive, &inherited, out),
            name if Inherited::takes(name) => {}
            _ => out.note(directive, "no Switchyard equivalent"),
        }
    }
}

/// What a level passes down to the levels inside it.
#[derive(Debug, Clone, Default)]
pub(super) struct Inherited<'a> {
    pub read_timeout: Option<&'a Directive>,
    pub connect_timeout: Option<&'a Directive>,
    pub body_size: Option<&'a Directive>,
    /// `proxy_set_header Host …`, or `None` (nginx then sends the upstream's name).
    pub host: Option<&'a Directive>,
    pub add_headers: Vec<&'a Directive>,
    pub hide_headers: Vec<&'a Directive>,
    cert: Option<&'a Directive>,
    key: Option<&'a Directive>,
}

/// Directives Switchyard's behaviour already covers, and why.
const BUILT_IN: &[(&str, &str)] = &[
    ("proxy_buffering", "bodies always stream, never buffered"),
    ("proxy_request_buffering", "request bodies always stream"),
    ("proxy_cache", "nothing is cached"),
    (
        "proxy_http_version",
        "backends are spoken to in HTTP/1.1 with keep-alive",
    ),
    (
        "chunked_transfer_encoding",
        "bodies pass frame by frame as the backend frames them",
    ),
    (
        "http2",
        "TLS listeners offer h2 and http/1.1; plain ones accept h2c",
    ),
    ("ssl_protocols", "rustls: TLS 1.2 and 1.3 only"),
    ("tcp_nodelay", "always on"),
    ("proxy_redirect", "Location headers pass unchanged"),
];

impl<'a> Inherited<'a> {
    pub fn takes(name: &str) -> bool {
        BUILT_IN.iter().any(|(n, _)| *n == name)
            || matches!(
                name,
                "proxy_read_timeout"
                    | "proxy_send_timeout"
                    | "proxy_connect_timeout"
                    | "client_max_body_size"
                    | "proxy_set_header"
                    | "add_header"
                    | "proxy_hide_header"
                    | "ssl_certificate"
                    | "ssl_certificate_key"
            )
    }

    /// This level's settings over the inherited ones; built-in and untranslatable ones are
    /// recorded in `out` where they are written.
    pub fn level(&self, block: &'a [Directive], out: &mut Translation) -> Inherited<'a> {
        let mut next = self.clone();
        let has = |name: &str| block.iter().any(|d| d.name == name);
        if has("proxy_set_header") {
            next.host = None;
        }
        if has("add_header") {
            next.add_headers.clear();
        }
        if has("proxy_hide_header") {
            next.hide_headers.clear();
        }
        for d in block {
            match d.name.as_str() {
                "proxy_read_timeout" => next.read_timeout = Some(d),
                "proxy_connect_timeout" => next.connect_timeout = Some(d),
                "client_max_body_size" => next.body_size = Some(d),
                "add_header" => next.add_headers.push(d),
                "proxy_hide_header" => next.hide_headers.push(d),
                "ssl_certificate" => next.cert = Some(d),
                "ssl_certificate_key" => next.key = Some(d),
                "proxy_set_header" => set_header(d, &mut next, out),
                "proxy_send_timeout" => out.note(
                    d,
                    "no per-write timeout: streams are bounded by timeouts.stream_idle instead",
                ),
                name => {
                    if let Some((_, why)) = BUILT_IN.iter().find(|(n, _)| *n == name) {
                        if name == "proxy_cache" && d.arg(0) != Some("off") {
                            out.note(d, "Switchyard does not cache");
                        } else {
                            out.builtin(d, why);
                        }
                    }
                }
            }
        }
        next
    }
}

fn set_header<'a>(d: &'a Directive, next: &mut Inherited<'a>, out: &mut Translation) {
    let name = d.arg(0).unwrap_or("").to_ascii_lowercase();
    let value = d.arg(1).unwrap_or("");
    match name.as_str() {
        "host" => next.host = Some(d),
        "connection" if value.is_empty() => out.builtin(
            d,
            "backend connections are kept alive; hop-by-hop headers are never forwarded",
        ),
        "upgrade" | "connection" => out.builtin(d, "WebSocket upgrades pass through"),
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" => out.builtin(
            d,
            "X-Forwarded-For, -Proto and -Host are always set (routing.trusted_proxies decides \
             whose X-Forwarded-For is believed)",
        ),
        _ if value.is_empty() => out.builtin(d, "an empty value only removes the header"),
        _ => out.note(
            d,
            "Switchyard sets no other request headers (the client address is in X-Forwarded-For)",
        ),
    }
}

/// `listen` arguments: the bind address, whether it is TLS, whether PROXY protocol is on.
fn listen(d: &Directive, out: &mut Translation) -> Option<(String, bool, bool)> {
    let written = d.arg(0)?;
    let (host, port) = match written.rsplit_once(':') {
        Some((host, port)) if !written.ends_with(']') => (host, port),
        _ if written.bytes().all(|b| b.is_ascii_digit()) => ("*", written),
        _ => (written, "80"),
    };
    let host = if host == "*" { "0.0.0.0" } else { host };
    let bind = format!("{host}:{port}");
    if bind.parse::<std::net::SocketAddr>().is_err() {
        out.note(d, "Switchyard listens on an IP address and port");
        return None;
    }
    let (mut tls, mut proxy_protocol) = (false, false);
    for parameter in &d.args[1..] {
        match parameter.as_str() {
            "ssl" => tls = true,
            "proxy_protocol" => proxy_protocol = true,
            "http2" | "default_server" | "default" | "reuseport" => {}
            other => out.note(d, &format!("listen parameter `{other}` is not translated")),
        }
    }
    if d.args.iter().any(|a| a == "http2") {
        out.builtin(
            d,
            "TLS listeners offer h2 and http/1.1; plain ones accept h2c",
        );
    }
    Some((bind, tls, proxy_protocol))
}

fn server(block: &Directive, parent: &Inherited<'_>, out: &mut Translation) {
    let directives = block.block.as_deref().unwrap_or_default();
    let inherited = parent.level(directives, out);
    let mut binds = Vec::new();
    let mut names: Option<&Directive> = None;
    let mut redirect: Option<&Directive> = None;
    let mut locations = Vec::new();
    for d in directives {
        match d.name.as_str() {
            "listen" => binds.extend(listen(d, out).map(|l| (l, d))),
            "server_name" => names = Some(d),
            "return" => redirect = Some(d),
            "location" => locations.push(d),
            "ssl_ciphers"
            | "ssl_prefer_server_ciphers"
            | "ssl_session_cache"
            | "ssl_session_timeout"
            | "ssl_session_tickets"
            | "ssl_dhparam" => out.note(
                d,
                "not configurable: rustls chooses its safe cipher suites and sessions",
            ),
            name if Inherited::takes(name) => {}
            _ => out.note(d, "no Switchyard equivalent in a server"),
        }
    }
    if binds.is_empty() {
        binds.push((("0.0.0.0:80".to_string(), false, false), block));
    }
    for ((bind, tls, proxy_protocol), d) in binds {
        let listener = listener_for(out, &bind, d);
        if proxy_protocol && listener.proxy_protocol.is_none() {
            listener.proxy_protocol = Some(Line::new("proxy_protocol = true".into(), d));
        }
        if tls {
            add_certificate(&bind, &inherited, d, out);
        }
        if let Some(ret) = redirect {
            redirect_listener(&bind, ret, names, out);
        }
    }
    let hosts = names.map(|d| server_names(d, out)).unwrap_or_default();
    if let Some(ret) = redirect {
        for location in locations {
            out.note(
                location,
                &format!("never reached: the server returns first ({})", ret.at),
            );
        }
        return;
    }
    if locations.is_empty() {
        out.note(
            block,
            "a server without a location proxies nothing: no route made",
        );
    }
    let hosts_from = names.map(Directive::origin);
    for location in locations {
        super::location::location(location, &inherited, &hosts, hosts_from.as_deref(), out);
    }
}

fn listener_for<'o>(out: &'o mut Translation, bind: &str, d: &Directive) -> &'o mut ListenerOut {
    let index = match out
        .listeners
        .iter()
        .position(|l| l.bind.text.contains(&format!("\"{bind}\"")))
    {
        Some(index) => index,
        None => {
            out.listeners.push(ListenerOut {
                bind: Line::new(format!("bind = \"{bind}\""), d),
                tls: Vec::new(),
                redirect: None,
                proxy_protocol: None,
            });
            out.listeners.len() - 1
        }
    };
    &mut out.listeners[index]
}

fn add_certificate(
    bind: &str,
    inherited: &Inherited<'_>,
    listen: &Directive,
    out: &mut Translation,
) {
    let (Some(cert), Some(key)) = (inherited.cert, inherited.key) else {
        out.note(
            listen,
            "ssl without ssl_certificate and ssl_certificate_key: left plain",
        );
        return;
    };
    let (Some(cert_path), Some(key_path)) = (cert.arg(0), key.arg(0)) else {
        return;
    };
    let from = format!("{}; {}", cert.origin(), key.origin());
    let pair = (cert_path.to_string(), key_path.to_string(), from);
    let listener = listener_for(out, bind, listen);
    if !listener
        .tls
        .iter()
        .any(|(c, k, _)| *c == pair.0 && *k == pair.1)
    {
        listener.tls.push(pair);
    }
}

/// `return 301 https://$host$request_uri` and its kin make a redirect listener.
fn redirect_listener(
    bind: &str,
    ret: &Directive,
    names: Option<&Directive>,
    out: &mut Translation,
) {
    let code = ret.arg(0).unwrap_or("");
    let target = ret.arg(1).unwrap_or("");
    let base = target.strip_suffix("$request_uri");
    let line = match base {
        _ if !matches!(code, "301" | "302" | "307" | "308") => None,
        Some("https://$host") | Some("https://$http_host") => {
            Some("redirect_https = true".to_string())
        }
        Some("https://$server_name") => names
            .and_then(|n| n.arg(0))
            .map(|name| format!("redirect = \"https://{name}\"")),
        Some(url) if !url.contains('$') && url.starts_with("http") => {
            Some(format!("redirect = \"{}\"", url.trim_end_matches('/')))
        }
        _ => None,
    };
    let Some(line) = line else {
        out.note(
            ret,
            "only a redirect to a URL followed by $request_uri is translated",
        );
        return;
    };
    if code != "301" {
        out.note(ret, "Switchyard's redirect answers 301");
    }
    let listener = listener_for(out, bind, ret);
    if listener.redirect.is_none() {
        listener.redirect = Some(Line::new(line, ret));
    }
}

/// `server_name` → route hosts; `.example.com` is both the name and its subdomains.
fn server_names(d: &Directive, out: &mut Translation) -> Vec<String> {
    let mut hosts = Vec::new();
    for name in &d.args {
        match name.as_str() {
            "" | "_" => {}
            regex if regex.starts_with('~') => {
                out.note(d, "regular-expression names are not translated")
            }
            tail if tail.ends_with(".*") => out.note(d, "`name.*` wildcards are not translated"),
            dotted if dotted.starts_with('.') => {
                hosts.push(dotted[1..].to_string());
                hosts.push(format!("*{dotted}"));
            }
            plain => hosts.push(plain.to_ascii_lowercase()),
        }
    }
    hosts
}
