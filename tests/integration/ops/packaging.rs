//! What is shipped beside the binary: the systemd units say what the README promises of them,
//! and the licence file is the one `Cargo.toml` names.

use std::path::Path;

fn shipped(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The `key=value` lines of a unit file, comments left out.
fn directives(unit: &str) -> Vec<&str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect()
}

#[test]
fn the_service_unit_is_hardened_notify_and_reloads_through_the_admin_api() {
    let service = shipped("docker/systemd/switchyard.service");
    let lines = directives(&service);
    for expected in [
        "Type=notify",
        // The new process of a hand-over sends MAINPID= as a process other than the main one.
        "NotifyAccess=all",
        "ExecReload=/usr/local/bin/switchyard reload --config /etc/switchyard/switchyard.toml",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        // Sockets come from the socket unit: not even CAP_NET_BIND_SERVICE is needed.
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "Requires=switchyard.socket",
    ] {
        assert!(lines.contains(&expected), "{expected} missing:\n{service}");
    }
    let socket = shipped("docker/systemd/switchyard.socket");
    assert!(directives(&socket).contains(&"PartOf=switchyard.service"));
}

#[test]
fn the_licence_file_is_the_one_cargo_toml_names() {
    let manifest = shipped("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""), "{manifest}");
    let licence = shipped("LICENSE");
    assert!(licence.contains("Apache License"));
    assert!(licence.contains("Version 2.0, January 2004"));
}
