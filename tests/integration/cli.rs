//! The `switchyard` binary's commands, run as a user would run them.

use std::process::Command;

use crate::support::TempFile;

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

/// `name` holding `text`, in a directory of its own removed when the result is dropped.
fn write_config(name: &str, text: &str) -> TempFile {
    TempFile::new("cli", name, text)
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

/// The mistakes serde would describe in its own terms ("did not match any variant of untagged
/// enum", "expected a sequence") are told in the config's terms, with what to write instead.
#[test]
fn config_mistakes_say_what_to_write_instead() {
    let head = "[[listener]]\nbind = \"127.0.0.1:8080\"\n\n[routing]\nactive = \"blue\"\n\n";
    for (name, text, expected) in [
        (
            "addr.toml",
            format!("{head}[pools.blue]\nbackends = [{{ addr = \"127.0.0.1:3001\" }}]\n"),
            ":8:13: unknown key `addr` in a backend: write \"HOST:PORT\" or \
             { address = \"HOST:PORT\", weight = 2 }",
        ),
        (
            "weight.toml",
            format!(
                "{head}[pools.blue]\nbackends = [{{ address = \"127.0.0.1:3001\", weight = \"2\" }}]\n"
            ),
            ":8:13: weight = \"2\" is a string: write the number without quotes, weight = 2",
        ),
        (
            "single-listener.toml",
            "[listener]\nbind = \"127.0.0.1:8080\"\n".to_string(),
            ":1:1: [listener] is one table, but listeners are an array of tables: write \
             [[listener]] (double brackets), once per listener",
        ),
    ] {
        let path = write_config(name, &text);
        let (code, _, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr, format!("{}{expected}\n", path.display()));
    }
}

/// A port someone else holds: one line saying so once, and what to do, for the proxy and for
/// the reference backend alike.
#[test]
fn a_taken_port_is_reported_once_with_what_to_do() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = holder.local_addr().unwrap();
    let expected = format!(
        "switchyard: cannot listen on {address}: another process already listens there \
         (`ss -ltnp 'sport = :{}'` shows which); stop it or choose another port\n",
        address.port()
    );
    let path = write_config(
        "taken.toml",
        &format!(
            "[[listener]]\nbind = \"{address}\"\n[pools.blue]\nbackends = [\"127.0.0.1:9\"]\n\
             [routing]\nactive = \"blue\"\n"
        ),
    );
    let (code, _, stderr) = switchyard(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let upgrade_hint = "; if it is a running Switchyard, take over from it without losing a \
                        connection with `switchyard run --config FILE --upgrade`, or share the \
                        port on purpose with [lifecycle] reuse_port = true\n";
    assert_eq!(
        stderr,
        format!("{}{upgrade_hint}", expected.trim_end_matches('\n'))
    );
    let (code, _, stderr) = switchyard(&["backend", "--listen", &address.to_string()]);
    assert_eq!(code, 1);
    assert_eq!(stderr, expected);
}

/// With `--log-format json`, a refused config is a JSON line like every other log line, with
/// the place as fields; the text form is unchanged.
#[test]
fn a_refused_config_is_a_json_line_with_log_format_json() {
    let path = write_config(
        "json-error.toml",
        "[[listener]]\nbind = \"127.0.0.1:8080\"\n\n[pools.blue]\nbackends = [\"127.0.0.1:3001\"]\n\n[routing]\nactive = \"green\"\n",
    );
    for command in ["check", "run"] {
        let (code, _, stderr) = switchyard(&[
            "--log-format",
            "json",
            command,
            "--config",
            path.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let line: serde_json::Value = serde_json::from_str(&stderr).expect("a JSON line");
        assert_eq!(line["level"], "ERROR", "{line}");
        let message = line["message"].as_str().unwrap();
        let place = format!("{}:8:10: routing.active names pool `green`", path.display());
        assert!(message.starts_with(&place), "{line}");
        assert_eq!(line["file"], path.to_str().unwrap());
        assert_eq!(
            (line["line"].as_u64(), line["column"].as_u64()),
            (Some(8), Some(10))
        );
    }
}

/// Durations take compound values (`1m30s`) and days in the config and on the command line,
/// from the same parser; a bare number is refused with what to write.
#[test]
fn durations_take_compound_values_in_config_and_cli() {
    let path = write_config(
        "durations.toml",
        "[[listener]]\nbind = \"127.0.0.1:8080\"\n[pools.blue]\nbackends = [\"127.0.0.1:3001\"]\n\
         [routing]\nactive = \"blue\"\n[timeouts]\ndrain = \"1m30s\"\nstream_idle = \"1d\"\n\
         [sessions]\nidle_timeout = \"2h 30m\"\n",
    );
    let (code, stdout, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = switchyard(&["backend", "--drain-timeout", "30"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("`30` needs a unit: write \"30s\", \"30ms\" or \"30m\""),
        "{stderr}"
    );
}

#[test]
fn completions_and_man_pages_are_generated() {
    let (code, stdout, _) = switchyard(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("_switchyard()"), "{stdout}");
    assert!(stdout.contains("--pid-file"), "subcommand flags complete");
    for shell in ["zsh", "fish"] {
        let (code, stdout, _) = switchyard(&["completions", shell]);
        assert_eq!(code, 0);
        assert!(stdout.contains("switchyard"), "{shell}: {stdout}");
    }
    let (code, page, _) = switchyard(&["man"]);
    assert_eq!(code, 0);
    assert!(page.contains(".TH switchyard 1"), "{page}");
    let (code, page, _) = switchyard(&["man", "run"]);
    assert_eq!(code, 0);
    assert!(page.contains(".TH switchyard-run 1"), "{page}");
    assert!(page.contains("pid\\-file"), "{page}");
    let (code, _, stderr) = switchyard(&["man", "nope"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no command `nope`: one of run, check"),
        "{stderr}"
    );
}

/// Two binds of one address would split its traffic (or fail at start): `check` refuses the
/// config and names both places.
#[test]
fn check_names_both_places_of_a_duplicate_address() {
    let path = write_config(
        "duplicate.toml",
        "[[listener]]\nbind = \"127.0.0.1:8080\"\n\n[admin]\nbind = \"127.0.0.1:8080\"\n\n\
         [pools.blue]\nbackends = [\"127.0.0.1:3001\"]\n\n[routing]\nactive = \"blue\"\n",
    );
    let (code, _, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let file = path.display();
    assert!(
        stderr.contains(&format!(
            "{file}:5:8: [admin] bind `127.0.0.1:8080` is already claimed by the [[listener]] \
             bind `127.0.0.1:8080` at {file}:2:8"
        )),
        "{stderr}"
    );
}
