//! Settings in general: defaults, durations, backends, health, sealing, discovery, admin, log, listeners and lifecycle.

use super::*;

#[test]
fn minimal_shape_parses_with_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.pools["blue"].backends.len(), 3);
    assert_eq!(config.pools["blue"].backends[2].weight, 2);
    assert_eq!(config.routes[0].active, vec![("blue".to_string(), 1)]);
    assert_eq!(config.timeouts.sse_keepalive, Some(Duration::from_secs(15)));
}

#[test]
fn unknown_key_names_line_and_column() {
    let text = MINIMAL.replace("active = \"blue\"", "active = \"blue\"\nactiv = 1");
    let err = parse(&text).unwrap_err();
    assert!(err.starts_with("t.toml:13:1: "), "{err}");
    assert!(err.contains("activ"), "{err}");
}

#[test]
fn unknown_active_pool_is_refused_at_its_place() {
    let err = parse(&MINIMAL.replace("active = \"blue\"", "active = \"purple\"")).unwrap_err();
    assert!(err.starts_with("t.toml:12:10: "), "{err}");
    assert!(err.contains("`purple`"), "{err}");
}

#[test]
fn an_empty_session_table_is_refused() {
    let err = parse(&format!("{MINIMAL}\n[sessions]\nmax_sessions = 0\n")).unwrap_err();
    assert!(err.starts_with("t.toml:15:16: "), "{err}");
    assert!(err.contains("max_sessions must be at least 1"), "{err}");
}

#[test]
fn durations_and_bad_durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    // Compound values and days.
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("1h 15m"), Ok(Duration::from_secs(4500)));
    assert_eq!(
        parse_duration("30"),
        Err("`30` needs a unit: write \"30s\", \"30ms\" or \"30m\"".to_string())
    );
    assert!(
        parse_duration("soon")
            .unwrap_err()
            .contains("write e.g. \"30s\"")
    );
    assert!(parse_duration("").is_err());
    assert!(parse_duration("-1s").is_err());
    let text = format!("{MINIMAL}\n[timeouts]\nconnect = \"soon\"\n");
    let err = parse(&text).unwrap_err();
    assert!(err.starts_with("t.toml:15:11: "), "{err}");
}

#[test]
fn zero_keepalive_turns_it_off() {
    let config = parse(&format!("{MINIMAL}\n[timeouts]\nsse_keepalive = \"0s\"\n")).unwrap();
    assert_eq!(config.timeouts.sse_keepalive, None);
}

#[test]
fn client_body_timeout_defaults_to_a_minute_and_zero_turns_it_off() {
    let client_body = |line: &str| parse(&format!("{MINIMAL}\n[timeouts]\n{line}\n"));
    assert_eq!(
        parse(MINIMAL).unwrap().timeouts.client_body,
        Some(Duration::from_secs(60))
    );
    let config = client_body("client_body = \"5s\"").unwrap();
    assert_eq!(config.timeouts.client_body, Some(Duration::from_secs(5)));
    assert_eq!(
        client_body("client_body = \"0s\"")
            .unwrap()
            .timeouts
            .client_body,
        None
    );
    let err = client_body("client_body = \"60\"").unwrap_err();
    assert!(err.starts_with("t.toml:15:15: "), "{err}");
}

#[test]
fn canary_split_and_trusted_proxies() {
    let text = MINIMAL.replace(
        "active = \"blue\"",
        "active = { blue = 90, green = 10 }\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]",
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.routes[0].active,
        vec![("blue".into(), 90), ("green".into(), 10)]
    );
    assert!(config.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
    assert!(!config.trusted_proxies[0].contains("11.1.2.3".parse().unwrap()));
    assert!(config.trusted_proxies[1].contains("::1".parse().unwrap()));
}

#[test]
fn bad_backends_are_refused() {
    for (bad, why) in [
        ("\"127.0.0.1\"", "needs a port"),
        ("{ address = \"127.0.0.1:1\", weight = 0 }", "weight"),
        ("\"127.0.0.1:3101\", \"127.0.0.1:3101\"", "twice"),
    ] {
        let text = MINIMAL.replace("[\"127.0.0.1:3101\"]", &format!("[{bad}]"));
        let err = parse(&text).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(err.starts_with("t.toml:9:"), "{err}");
    }
}

#[test]
fn health_defaults_probes_only_with_a_health_table() {
    let config = parse(MINIMAL).unwrap();
    assert!(config.health.probes.is_none());
    assert_eq!(config.health.max_fails, 3);
    assert!(!config.health.fail_open);
    let config = parse(&format!("{MINIMAL}\n[health]\n")).unwrap();
    let probes = config.health.probes.unwrap();
    assert_eq!(probes.path, "/healthz");
    assert_eq!(probes.interval, Duration::from_secs(5));
    assert_eq!(probes.jitter, Duration::from_millis(500));
    assert_eq!((probes.rise, probes.fall), (2, 3));
    assert_eq!(probes.expect_status, (200, 399));
    let off = parse(&format!("{MINIMAL}\n[health]\ninterval = \"0s\"\n")).unwrap();
    assert!(off.health.probes.is_none());
}

#[test]
fn bad_health_settings_are_refused_at_their_place() {
    for (bad, why) in [
        ("expect_status = \"399-200\"", "range of statuses"),
        ("expect_status = \"ok\"", "range of statuses"),
        ("rise = 0", "rise must be"),
        ("path = \"healthz\"", "not a path"),
        ("timeout = \"0s\"", "above 0"),
        ("fail_open = 1", "invalid type"),
    ] {
        let err = parse(&format!("{MINIMAL}\n[health]\n{bad}\n")).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(err.starts_with("t.toml:15:"), "{bad}: {err}");
    }
    assert_eq!(values::parse_status_range("204"), Ok((204, 204)));
}

#[test]
fn sealing_defaults_off_and_reads_keys() {
    use crate::mcp::seal::{SealKey, SealSetting};
    assert_eq!(load(MINIMAL).unwrap().loaded.seal, SealSetting::Off);
    let with = |extra: &str| load(&format!("{MINIMAL}\n[sessions]\n{extra}\n"));
    assert_eq!(
        with("seal = true").unwrap().loaded.seal,
        SealSetting::Ephemeral
    );
    let dir = std::env::temp_dir().join(format!("switchyard-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("seal.keys");
    let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    std::fs::write(&file, format!("# new first\n{key}\n\n{key}\n")).unwrap();
    let config = with(&format!("seal_keys_file = \"{}\"", file.display())).unwrap();
    assert_eq!(
        config.loaded.seal,
        SealSetting::Keys(vec![SealKey([1; 32]), SealKey([1; 32])])
    );
    let off = with(&format!(
        "seal = false\nseal_keys_file = \"{}\"",
        file.display()
    ));
    assert_eq!(off.unwrap().loaded.seal, SealSetting::Off);

    std::fs::write(&file, format!("{key}\nshort\n")).unwrap();
    let err = with(&format!("seal_keys_file = \"{}\"", file.display())).unwrap_err();
    assert!(err.starts_with("t.toml:15:18: "), "{err}");
    assert!(err.contains("line 2"), "{err}");
    let err = with("seal_keys_file = \"/nonexistent/seal.keys\"").unwrap_err();
    assert!(err.contains("cannot read key file"), "{err}");
    let err = with("seal_keys_env = \"SWITCHYARD_TEST_SURELY_UNSET\"").unwrap_err();
    assert!(err.contains("is not set"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn discovery_settings_and_hostname_entries() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.discovery.interval, Some(Duration::from_secs(10)));
    assert_eq!(config.discovery.resolver, None);
    let text = format!("{MINIMAL}\n[discovery]\ninterval = \"0s\"\nresolver = \"10.0.0.53\"\n");
    let config = parse(&text).unwrap();
    assert_eq!(config.discovery.interval, None);
    assert_eq!(
        config.discovery.resolver,
        Some("10.0.0.53:53".parse().unwrap())
    );
    let err = parse(&format!("{MINIMAL}\n[discovery]\nresolver = \"dns\"\n")).unwrap_err();
    assert!(err.starts_with("t.toml:15:12: "), "{err}");
    let entry = |address: &str| BackendConfig {
        address: address.into(),
        weight: 1,
    };
    assert_eq!(
        entry("fleet.internal:3000").hostname(),
        Some(("fleet.internal", 3000))
    );
    assert_eq!(entry("10.0.0.1:3000").hostname(), None);
    assert_eq!(entry("[::1]:3000").hostname(), None);
    assert_eq!(entry("https://api.example.com:443").hostname(), None);
}

#[test]
fn syntax_error_and_missing_sections() {
    assert!(parse("[[listener]\n").unwrap_err().starts_with("t.toml:1:"));
    assert!(parse("").unwrap_err().contains("no [[listener]]"));
}

#[test]
fn admin_off_loopback_needs_a_token_file() {
    assert!(parse(&with_admin("bind = \"127.0.0.1:9901\"")).is_ok());
    assert!(parse(&with_admin("bind = \"[::1]:9901\"")).is_ok());
    let err = parse(&with_admin("bind = \"0.0.0.0:9901\"")).unwrap_err();
    assert!(err.starts_with("t.toml:15:8: "), "{err}");
    assert!(err.contains("token_file"), "{err}");
}

#[test]
fn admin_connection_cap_has_a_small_default_and_a_range() {
    let admin = |text: &str| parse(&with_admin(text));
    let config = admin("bind = \"127.0.0.1:9901\"").unwrap();
    assert_eq!(config.admin.unwrap().max_connections, 64);
    let config = admin("bind = \"127.0.0.1:9901\"\nmax_connections = 8").unwrap();
    assert_eq!(config.admin.unwrap().max_connections, 8);
    let err = admin("bind = \"127.0.0.1:9901\"\nmax_connections = 0").unwrap_err();
    assert!(err.starts_with("t.toml:16:19: "), "{err}");
    assert!(err.contains("1..=65536"), "{err}");
}

#[test]
fn admin_token_is_read_relative_to_the_config_and_never_printed() {
    let dir = std::env::temp_dir().join(format!("switchyard-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "  s3cret-token-0123456789\n").unwrap();
    std::fs::write(dir.join("short"), "abc\n").unwrap();
    let source = dir.join("switchyard.toml");
    let text = with_admin("bind = \"0.0.0.0:9901\"\ntoken_file = \"token\"");
    let config = load_at(&text, &source).unwrap();
    let token = config.loaded.admin_token.as_ref().unwrap();
    assert!(token.matches(b"s3cret-token-0123456789"));
    assert!(!token.matches(b"s3cret-token-012345678"));
    assert!(!token.matches(b"s3cret-token-0123456780"));
    assert!(!token.matches(b"s3cret-token-01234567890"));
    assert!(!token.matches(b""));
    assert!(!format!("{config:?}").contains("s3cret"));
    assert_eq!(token.authorization(), "Bearer s3cret-token-0123456789");
    let short = with_admin("bind = \"0.0.0.0:9901\"\ntoken_file = \"short\"");
    let err = load_at(&short, &source).unwrap_err();
    assert!(err.contains("at least 16"), "{err}");
    let missing = with_admin("bind = \"127.0.0.1:9901\"\ntoken_file = \"nope\"");
    let err = load_at(&missing, &source).unwrap_err();
    assert!(
        err.contains(":16:14: cannot read admin token file"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_level_is_validated() {
    assert_eq!(parse(MINIMAL).unwrap().log.level, "info");
    let text = format!("{MINIMAL}\n[log]\nlevel = \"warn,switchyard=debug\"\n");
    assert_eq!(parse(&text).unwrap().log.level, "warn,switchyard=debug");
    for bad in ["inof", "info,switchyard=loud", "info,["] {
        let err = parse(&format!("{MINIMAL}\n[log]\nlevel = \"{bad}\"\n")).unwrap_err();
        assert!(err.starts_with("t.toml:15:9: "), "{bad}: {err}");
    }
}

#[test]
fn a_duplicate_address_names_both_places() {
    let second = format!("{MINIMAL}\n[[listener]]\nbind = \"127.0.0.1:8080\"\n");
    let err = parse(&second).unwrap_err();
    assert!(err.starts_with("t.toml:15:8: "), "{err}");
    assert!(
        err.contains("[[listener]] bind `127.0.0.1:8080` at t.toml:3:8"),
        "{err}"
    );
    // The admin API on a listener's port, and wildcards covering a listener's address.
    let err = parse(&with_admin("bind = \"127.0.0.1:8080\"")).unwrap_err();
    assert!(err.starts_with("t.toml:15:8: [admin] bind"), "{err}");
    let err = parse(&format!(
        "{MINIMAL}\n[[listener]]\nbind = \"0.0.0.0:8080\"\n"
    ))
    .unwrap_err();
    assert!(err.contains("at t.toml:3:8"), "{err}");
    assert!(parse(&format!("{MINIMAL}\n[[listener]]\nbind = \"[::]:8080\"\n")).is_err());
    // Different ports, another address, or port 0 (a fresh port each) are fine.
    for fine in ["127.0.0.1:8081", "127.0.0.2:8080", "[::1]:8080"] {
        let text = format!("{MINIMAL}\n[[listener]]\nbind = \"{fine}\"\n");
        assert!(parse(&text).is_ok(), "{fine}");
    }
    let zero = MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:0");
    let twice =
        format!("{zero}\n[[listener]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n");
    assert_eq!(parse(&twice).unwrap().listeners.len(), 2);
}

#[test]
fn lifecycle_defaults_and_settings() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.lifecycle.upgrade_socket, None);
    assert!(!config.lifecycle.reuse_port);
    let text =
        format!("{MINIMAL}\n[lifecycle]\nupgrade_socket = \"run/up.sock\"\nreuse_port = true\n");
    let config = Config::parse(&text, Path::new("/etc/switchyard/t.toml")).unwrap();
    let socket = config.lifecycle.upgrade_socket.unwrap();
    assert_eq!(socket.path, Path::new("/etc/switchyard/run/up.sock"));
    assert!(config.lifecycle.reuse_port);
    let long = format!("/{}", "x".repeat(120));
    let err = parse(&format!(
        "{MINIMAL}\n[lifecycle]\nupgrade_socket = \"{long}\"\n"
    ))
    .unwrap_err();
    assert!(err.starts_with("t.toml:15:18: "), "{err}");
    assert!(err.contains("at most 107"), "{err}");
    let err = parse(&format!("{MINIMAL}\n[lifecycle]\nupgrade_socket = \"\"\n")).unwrap_err();
    assert!(err.contains("is empty"), "{err}");
    assert!(parse(&format!("{MINIMAL}\n[lifecycle]\nreuse = true\n")).is_err());
}

#[test]
fn waits_that_cannot_be_switched_off_refuse_zero() {
    for name in ["header_read_timeout", "handshake_timeout"] {
        let err = parse(&format!("{MINIMAL}\n[limits]\n{name} = \"0s\"\n")).unwrap_err();
        assert!(err.starts_with("t.toml:15:"), "{err}");
        assert!(
            err.contains(&format!("{name} must be more than 0s (the default is 10s)")),
            "{err}"
        );
    }
    assert!(
        parse(&format!(
            "{MINIMAL}\n[limits]\nheader_read_timeout = \"1s\"\n"
        ))
        .is_ok()
    );
}
