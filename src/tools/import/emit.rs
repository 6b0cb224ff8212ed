//! The translation as `switchyard.toml` text: every line commented with the nginx directive it
//! came from; what Switchyard does by itself and what was not translated listed up front.

use std::fmt::Write as _;

use super::location::quote;
use super::translate::{Line, ListenerOut, PoolOut, RouteOut, Translation};

/// Values start their comment at this column, when they are short enough.
const COMMENT_COLUMN: usize = 48;

pub(super) fn emit(t: &Translation, source: &str) -> String {
    let mut out = String::new();
    header(&mut out, t, source);
    for listener in &t.listeners {
        emit_listener(&mut out, listener);
    }
    for pool in &t.pools {
        emit_pool(&mut out, pool);
    }
    if !t.upstream.is_empty() {
        out.push_str("\n[upstream]\n");
        lines(&mut out, &t.upstream);
    }
    if !t.health.is_empty() {
        out.push_str("\n[health]\n");
        line(
            &mut out,
            &Line {
                text: "interval = \"0s\"".into(),
                from: "no active probes: open-source nginx has none (set a path and interval \
                       to turn them on)"
                    .into(),
            },
        );
        lines(&mut out, &t.health);
    }
    for route in &t.routes {
        emit_route(&mut out, route);
    }
    out
}

fn header(out: &mut String, t: &Translation, source: &str) {
    let _ = writeln!(out, "# Imported from {source} by `switchyard import`.");
    out.push_str(
        "# Each line names the nginx directive it came from (FILE:LINE). Relative certificate \
         paths are\n# relative to this file's directory. Check with `switchyard check --config \
         FILE`.\n",
    );
    if !t.builtins.is_empty() {
        out.push_str("#\n# Built in, nothing to write:\n");
        // One entry per directive and reason, with every place it is written.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (text, why, _) in &t.builtins {
            if seen.contains(&(text.as_str(), why.as_str())) {
                continue;
            }
            seen.push((text, why));
            let places: Vec<&str> = t
                .builtins
                .iter()
                .filter(|(t2, w2, _)| t2 == text && w2 == why)
                .map(|(_, _, at)| at.as_str())
                .collect();
            let _ = writeln!(out, "#   {text} ({}): {why}", places.join(", "));
        }
    }
    let _ = writeln!(out, "#\n# Not translated ({}):", t.notes.len());
    if t.notes.is_empty() {
        out.push_str("#   (none)\n");
    }
    for entry in &t.notes {
        let _ = writeln!(out, "#   {entry}");
    }
}

fn emit_listener(out: &mut String, listener: &ListenerOut) {
    out.push_str("\n[[listener]]\n");
    line(out, &listener.bind);
    if let Some(redirect) = &listener.redirect {
        line(out, redirect);
    } else if let Some(((cert, key, from), more)) = listener.tls.split_first() {
        let mut text = format!("tls = {{ cert = {}, key = {}", quote(cert), quote(key));
        let mut origins = vec![from.as_str()];
        if !more.is_empty() {
            let pairs: Vec<String> = more
                .iter()
                .map(|(c, k, _)| format!("{{ cert = {}, key = {} }}", quote(c), quote(k)))
                .collect();
            let _ = write!(text, ", certificates = [{}]", pairs.join(", "));
            origins.extend(more.iter().map(|(_, _, f)| f.as_str()));
        }
        text.push_str(" }");
        line(
            out,
            &Line {
                text,
                from: origins.join("; "),
            },
        );
    }
    if let Some(proxy_protocol) = &listener.proxy_protocol {
        line(out, proxy_protocol);
    }
}

fn emit_pool(out: &mut String, pool: &PoolOut) {
    out.push('\n');
    if let Some(comment) = &pool.comment {
        let _ = writeln!(out, "# {comment}");
    }
    line(
        out,
        &Line {
            text: format!("[pools.{}]", pool.name),
            from: pool.from.clone(),
        },
    );
    out.push_str("backends = [\n");
    for backend in &pool.backends {
        line(
            out,
            &Line {
                text: format!("    {},", backend.text),
                from: backend.from.clone(),
            },
        );
    }
    out.push_str("]\n");
}

fn emit_route(out: &mut String, route: &RouteOut) {
    out.push_str("\n[[route]]\n");
    lines(out, &route.lines);
    if !route.timeouts.is_empty() {
        out.push_str("[route.timeouts]\n");
        lines(out, &route.timeouts);
    }
    if route.remove_headers.is_empty() && route.add_headers.is_empty() {
        return;
    }
    if !route.remove_headers.is_empty() {
        out.push_str("[route.response_headers]\nremove = [\n");
        for name in &route.remove_headers {
            line(
                out,
                &Line {
                    text: format!("    {},", name.text),
                    from: name.from.clone(),
                },
            );
        }
        out.push_str("]\n");
    }
    if !route.add_headers.is_empty() {
        out.push_str("[route.response_headers.add]\n");
        lines(out, &route.add_headers);
    }
}

fn lines(out: &mut String, lines: &[Line]) {
    for l in lines {
        line(out, l);
    }
}

fn line(out: &mut String, line: &Line) {
    let pad = COMMENT_COLUMN
        .saturating_sub(line.text.chars().count())
        .max(1);
    let _ = writeln!(out, "{}{}# {}", line.text, " ".repeat(pad), line.from);
}
