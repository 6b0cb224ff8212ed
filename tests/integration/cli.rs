//! The `switchyard` binary's commands, run as a user would run them.

use std::process::Command;

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_example_config_and_summarises_it() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/switchyard.toml");
    let (code, stdout, _) = switchyard(&["check", "--config", example]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("listener  127.0.0.1:8080"), "{stdout}");
    assert!(
        stdout.contains("pool      blue: 127.0.0.1:3001 (weight 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route     default: any host, prefix / → active blue (1)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("configuration is valid"), "{stdout}");
}

#[test]
fn check_reports_file_line_and_column() {
    let path = write_config(
        "broken.toml",
        "[[listener]]\nbind = \"127.0.0.1:8080\"\n\n[pools.blue]\nbackends = [\"127.0.0.1:3001\"]\n\n[routing]\nactive = \"green\"\n",
    );
    let (code, stdout, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stdout.is_empty(), "{stdout}");
    let expected = format!("{}:8:10: routing.active names pool `green`", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
}

#[test]
fn check_reports_syntax_errors_and_unknown_keys() {
    let path = write_config(
        "syntax.toml",
        "[[listener]]\nbind = \"127.0.0.1:8080\nport = 1\n",
    );
    let (code, _, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        stderr.starts_with(&format!("{}:2:", path.display())),
        "{stderr}"
    );

    let path = write_config(
        "unknown.toml",
        "[[listener]]\nbind = \"127.0.0.1:8080\"\nworkers = 4\n",
    );
    let (code, _, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        stderr.starts_with(&format!("{}:3:1: unknown field `workers`", path.display())),
        "{stderr}"
    );
}

#[test]
fn check_and_run_refuse_a_missing_file() {
    let (code, _, stderr) = switchyard(&["check", "--config", "/nonexistent/switchyard.toml"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("/nonexistent/switchyard.toml: cannot read"),
        "{stderr}"
    );
    let (code, _, stderr) = switchyard(&["run", "--config", "/nonexistent/switchyard.toml"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("/nonexistent/switchyard.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_config_with_the_same_message() {
    let path = write_config("invalid-run.toml", "[[listener]]\nbind = \"nowhere\"\n");
    let (check_code, _, check_err) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    let (run_code, _, run_err) = switchyard(&["run", "--config", path.to_str().unwrap()]);
    assert_ne!(check_code, 0);
    assert_ne!(run_code, 0);
    assert_eq!(check_err.lines().last(), run_err.lines().last());
    assert!(
        run_err.contains(":2:8: `nowhere` is not an address"),
        "{run_err}"
    );
}
