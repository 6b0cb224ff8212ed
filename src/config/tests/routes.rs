//! `[[route]]`: settings resolved against the proxy's, and route mistakes at their place.

use super::*;

const TWO_SERVICES: &str = r#"
[[listener]]
bind = "127.0.0.1:8080"

[pools.gh-blue]
backends = ["127.0.0.1:3001"]
[pools.gh-green]
backends = ["127.0.0.1:3002"]

[timeouts]
response = "30s"

[[route]]
name = "gh"
prefix = "/github/"
strip_prefix = true
pools = ["gh-blue", "gh-green"]
active = { gh-blue = 90, gh-green = 10 }
host = "backend"
max_request_body = 0
timeouts = { stream_idle = "0s", connect = "1s" }
"#;

#[test]
fn routes_resolve_their_settings_against_the_proxys() {
    let config = parse(TWO_SERVICES).unwrap();
    assert_eq!(config.routes.len(), 1, "no [routing]: no default route");
    let route = &config.routes[0];
    assert_eq!(route.path, PathMatch::Prefix("/github/".into()));
    assert_eq!(route.active.len(), 2);
    assert_eq!(route.host, HostPolicy::Backend);
    assert_eq!(route.max_request_body, None, "0 = unlimited");
    assert_eq!(route.timeouts.stream_idle, None, "\"0s\" turns it off");
    assert_eq!(route.timeouts.connect, Duration::from_secs(1));
    assert_eq!(
        route.timeouts.response,
        Duration::from_secs(30),
        "the proxy's"
    );
    assert_eq!(
        route.timeouts.sse_keepalive,
        Some(Duration::from_secs(15)),
        "the proxy's default"
    );
    let with_default = format!("{TWO_SERVICES}\n[routing]\nactive = \"gh-green\"\n");
    let config = parse(&with_default).unwrap();
    assert_eq!(config.routes[1].name, "default");
    assert_eq!(config.routes[1].path, PathMatch::Prefix("/".into()));
}

#[test]
fn route_mistakes_are_refused_at_their_place() {
    let cases = [
        (
            "pools = [\"gh-blue\", \"gh-green\"]",
            "pools = [\"gh-blue\"]",
            "add it to the route's pools",
        ),
        (
            "pools = [\"gh-blue\", \"gh-green\"]",
            "pools = [\"gh-blue\", \"nope\"]",
            "`nope`, which is not defined",
        ),
        (
            "prefix = \"/github/\"",
            "prefix = \"github\"",
            "is not a path",
        ),
        (
            "prefix = \"/github/\"",
            "exact = \"/github\"",
            "strip_prefix needs a prefix",
        ),
        (
            "host = \"backend\"",
            "host = \"not a host\"",
            "write \"client\", \"backend\"",
        ),
        (
            "name = \"gh\"",
            "name = \"gh\"\nhosts = [\"a.example.com:443\"]",
            "no scheme, port or path",
        ),
        (
            "name = \"gh\"",
            "name = \"gh\"\nhosts = [\"*\"]",
            "not a host name",
        ),
    ];
    for (from, to, expected) in cases {
        let err = parse(&TWO_SERVICES.replace(from, to)).unwrap_err();
        assert!(err.contains(expected), "{to}: {err}");
        assert!(
            !err.starts_with("t.toml:1:1:"),
            "{to}: points somewhere: {err}"
        );
    }
    let clash = format!("{TWO_SERVICES}\n[[route]]\nprefix = \"/github/\"\nactive = \"gh-blue\"\n");
    let err = parse(&clash).unwrap_err();
    assert!(
        err.contains("takes the same host and path as route `gh`"),
        "{err}"
    );
    let renamed = format!("{TWO_SERVICES}\n[[route]]\nname = \"gh\"\nactive = \"gh-blue\"\n");
    assert!(
        parse(&renamed)
            .unwrap_err()
            .contains("two routes are named `gh`")
    );
    let nothing = "[[listener]]\nbind = \"127.0.0.1:1\"\n[pools.p]\nbackends = [\"127.0.0.1:2\"]\n";
    assert!(
        parse(nothing)
            .unwrap_err()
            .contains("set routing.active to a pool name")
    );
    let bad_header = TWO_SERVICES.replace(
        "host = \"backend\"",
        "host = \"backend\"\nresponse_headers = { set = { \"Bad Name\" = \"x\" } }",
    );
    assert!(
        parse(&bad_header)
            .unwrap_err()
            .contains("is not a header name")
    );
}
