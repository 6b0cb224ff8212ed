//! `[policy]`: the commented example, mistakes with what to write, the JWKS file.

use super::*;

/// The `[policy]` block of `config/switchyard.toml`, uncommented, is a valid config.
#[test]
fn the_commented_policy_example_parses() {
    let shipped = include_str!("../../../config/switchyard.toml");
    let block: String = shipped
        .lines()
        .skip_while(|l| *l != "# [policy]")
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.contains("[policy.auth]"), "{block}");
    let config = parse(&format!("{MINIMAL}\n{block}")).unwrap();
    let policy = config.policy.unwrap();
    assert_eq!(policy.scan_limit, 65_536);
    assert_eq!(policy.limits[0].key, LimitKey::Session);
    let auth = policy.auth.unwrap();
    assert_eq!(auth.allow.len(), 3);
    assert_eq!(
        auth.metadata.url,
        "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    );
    assert_eq!(auth.identity_header, "x-switchyard-subject");
}

#[test]
fn policy_mistakes_are_refused_with_what_to_write() {
    let auth =
        "[policy.auth]\nissuer = \"https://i\"\naudience = \"a\"\nresource = \"https://r/mcp\"\n";
    let cases = [
        ("[policy]\nscan_limit = 10\n", "scan_limit must be"),
        (
            "[policy]\n[[policy.limit]]\nkey = \"ip\"\nrate = 1\n",
            "write \"client\", \"session\"",
        ),
        (
            "[policy]\n[[policy.limit]]\nkey = \"claim:sub\"\nrate = 1\n",
            "needs [policy.auth]",
        ),
        (
            "[policy]\n[[policy.limit]]\ntool = \"echo\"\nkey = \"client\"\nrate = 1\n",
            "needs method = \"tools/call\"",
        ),
        (
            "[policy]\n[[policy.limit]]\nkey = \"client\"\nrate = 0\n",
            "rate must be at least 1",
        ),
        (&format!("[policy]\n{auth}"), "jwks_file = \"jwks.json\""),
        (
            &format!("[policy]\n{auth}jwks_file = \"k\"\nalgorithms = [\"HS256\"]\n"),
            "never accepted",
        ),
        (
            &format!("[policy]\n{auth}jwks_url = \"http://insecure/jwks\"\n"),
            "not an https:// URL",
        ),
        (
            &format!("[policy]\n{auth}jwks_file = \"k\"\nidentity_header = \"authorization\"\n"),
            "cannot be",
        ),
        (
            &format!(
                "[policy]\n{auth}jwks_file = \"k\"\n[[policy.auth.allow]]\ntools = [\"x\"]\nclaim = \"c\"\n"
            ),
            "with value",
        ),
        ("[policy]\ncolour = 1\n", "unknown field `colour`"),
    ];
    for (table, expected) in cases {
        let err = parse(&format!("{MINIMAL}\n{table}")).unwrap_err();
        assert!(err.contains(expected), "{table}: {err}");
        assert!(err.starts_with("t.toml:"), "{err}");
    }
}

#[test]
fn a_jwks_file_is_loaded_and_a_missing_one_refused_at_its_place() {
    let dir = std::env::temp_dir().join(format!("switchyard-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "{MINIMAL}\n[policy.auth]\nissuer = \"https://i\"\naudience = \"a\"\n\
         resource = \"https://r/mcp\"\njwks_file = \"jwks.json\"\n"
    );
    let err = load_at(&text, &dir.join("t.toml")).unwrap_err();
    assert!(err.contains(":18:13: cannot read JWKS file"), "{err}");
    std::fs::write(dir.join("jwks.json"), r#"{"keys": []}"#).unwrap();
    let err = load_at(&text, &dir.join("t.toml")).unwrap_err();
    assert!(err.contains("holds no key"), "{err}");
    let shipped = include_str!("../../../config/examples/jwks.json");
    std::fs::write(dir.join("jwks.json"), shipped).unwrap();
    let loaded = load_at(&text, &dir.join("t.toml")).unwrap();
    assert_eq!(
        loaded.loaded.jwks_files[&dir.join("jwks.json")].keys.len(),
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
