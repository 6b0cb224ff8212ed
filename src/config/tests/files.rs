//! The files a config names: their paths and places, and loading them.

use super::*;

/// Every file-naming setting at once, none of whose files exist.
fn naming_files(dir: &str) -> String {
    let config = MINIMAL.replace(
        "bind = \"127.0.0.1:8080\"",
        &format!(
            "bind = \"127.0.0.1:8080\"\ntls = {{ cert = \"{dir}/a.pem\", key = \"{dir}/a.key\" }}"
        ),
    );
    format!(
        "{config}\n[admin]\nbind = \"127.0.0.1:9901\"\ntoken_file = \"{dir}/token\"\n\
         \n[upstream]\nca = \"{dir}/ca.pem\"\n\n[sessions]\nseal_keys_file = \"{dir}/seal.keys\"\n"
    )
}

#[test]
fn the_same_text_gives_equal_configs() {
    assert_eq!(parse(MINIMAL).unwrap(), parse(MINIMAL).unwrap());
    // Validation reads no file, so a config naming missing ones still validates, and equally.
    let text = naming_files("/nonexistent");
    let config = parse(&text).unwrap();
    assert_eq!(config, parse(&text).unwrap());
    assert_eq!(config.clone(), config);
    let other = parse(&MINIMAL.replace("weight = 2", "weight = 3")).unwrap();
    assert_ne!(parse(MINIMAL).unwrap(), other);
    let elsewhere = Config::parse(MINIMAL, Path::new("other/t.toml")).unwrap();
    assert_ne!(parse(MINIMAL).unwrap(), elsewhere);
}

#[test]
fn file_references_keep_their_path_and_place() {
    let config = Config::parse(&naming_files("certs"), Path::new("conf/t.toml")).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.pairs[0].pair.cert, Path::new("conf/certs/a.pem"));
    assert_eq!(
        tls.pairs[0].at,
        Place {
            line: 4,
            column: 16
        }
    );
    let token = config.admin.as_ref().unwrap().token_file.as_ref().unwrap();
    assert_eq!(token.path, Path::new("conf/certs/token"));
    assert_eq!(
        token.at,
        Place {
            line: 17,
            column: 14
        }
    );
    let ca = config.upstream.tls.as_ref().unwrap().ca.as_ref().unwrap();
    assert_eq!(
        ca.at,
        Place {
            line: 20,
            column: 6
        }
    );
    let SealConfig::KeysFile(keys) = &config.sessions.seal else {
        panic!("{:?}", config.sessions.seal);
    };
    assert_eq!(
        keys.at,
        Place {
            line: 23,
            column: 18
        }
    );
}

#[test]
fn loading_errors_keep_file_line_and_column() {
    let text = naming_files("/nonexistent");
    let err = load(&text).unwrap_err();
    assert!(
        err.starts_with("t.toml:4:16: `/nonexistent/a.pem`: cannot read certificate"),
        "{err}"
    );
    let no_tls = text.replace(
        "tls = { cert = \"/nonexistent/a.pem\", key = \"/nonexistent/a.key\" }",
        "",
    );
    let err = load(&no_tls).unwrap_err();
    assert!(
        err.starts_with("t.toml:17:14: cannot read admin token file `/nonexistent/token`"),
        "{err}"
    );
    let no_token = no_tls.replace("token_file = \"/nonexistent/token\"", "");
    let err = load(&no_token).unwrap_err();
    assert!(
        err.starts_with("t.toml:20:6: `/nonexistent/ca.pem`: cannot read certificate"),
        "{err}"
    );
    let no_ca = no_token.replace("ca = \"/nonexistent/ca.pem\"", "");
    let err = load(&no_ca).unwrap_err();
    assert!(
        err.starts_with("t.toml:23:18: cannot read key file /nonexistent/seal.keys"),
        "{err}"
    );
    let env = no_ca.replace(
        "seal_keys_file = \"/nonexistent/seal.keys\"",
        "seal_keys_env = \"SWITCHYARD_TEST_SURELY_UNSET\"",
    );
    let err = load(&env).unwrap_err();
    assert_eq!(
        err,
        "t.toml:23:17: environment variable `SWITCHYARD_TEST_SURELY_UNSET` is not set"
    );
}

#[test]
fn an_extra_certificate_is_refused_at_its_entry() {
    let text = MINIMAL.replace(
        "bind = \"127.0.0.1:8080\"",
        "bind = \"127.0.0.1:8080\"\n\
         tls = { certificates = [{ cert = \"/nonexistent/b.pem\", key = \"/nonexistent/b.key\" }] }",
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.listeners[0].tls.as_ref().unwrap().pairs.len(), 1);
    let err = load(&text).unwrap_err();
    assert!(
        err.starts_with("t.toml:4:25: `/nonexistent/b.pem`: cannot read certificate"),
        "{err}"
    );
}
