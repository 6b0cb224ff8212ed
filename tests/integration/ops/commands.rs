//! The proxy driven as an operator drives it: `switchyard reload --admin ADDR --token-file F`
//! against a token-protected admin listener, and `run --pid-file` for `kill -HUP $(cat F)`.

use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard::control::server::Proxy;
use tokio_util::sync::CancellationToken;

use super::{TOKEN, write_config};
use crate::support::*;

fn reload_command(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("reload")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reaches_a_token_protected_admin_with_a_token_file() {
    let a = TestBackend::start("b1").await;
    let path = write_config("reload-token", "");
    let token_file = path.with_file_name("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let text = config_for(&[("blue", &[&a])], "\"blue\"", "").replace(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin-token\"\n",
    );
    std::fs::write(&path, &text).unwrap();
    let shutdown = CancellationToken::new();
    let config = switchyard::config::Config::load(&path).unwrap();
    let proxy = Proxy::start(config, shutdown.clone()).await.unwrap();
    let admin = proxy.admin().unwrap().to_string();

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            reload_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    // Without the token: the admin's 401, exit 1.
    let (code, stdout, _) = run(vec!["--admin".into(), admin.clone()]).await.unwrap();
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("missing or wrong bearer token"), "{stdout}");
    // With it: the reload takes.
    let with_token = vec![
        "--admin".into(),
        admin.clone(),
        "--token-file".into(),
        token_file.display().to_string(),
    ];
    let (code, stdout, stderr) = run(with_token).await.unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["reloaded"], true, "{answer}");
    assert_eq!(proxy.state().snapshot().generation, 2);
    // A file that holds no usable token is refused before any call, naming the file.
    let short = path.with_file_name("short-token");
    std::fs::write(&short, "short\n").unwrap();
    let short_args = vec![
        "--admin".into(),
        admin,
        "--token-file".into(),
        short.display().to_string(),
    ];
    let (code, _, stderr) = run(short_args).await.unwrap();
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("must hold a token of at least 16 characters"),
        "{stderr}"
    );
    assert!(stderr.contains(&short.display().to_string()), "{stderr}");
    // --token-file belongs to --admin (with --config the config names its token file).
    let (code, _, stderr) = reload_command(&["--config", "x.toml", "--token-file", "t"]);
    assert_eq!(code, Some(2), "{stderr}");
    shutdown.cancel();
}

/// `run --pid-file F` writes the pid once serving and removes the file on a clean exit; SIGHUP
/// sent to that pid reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_file_is_written_while_running_and_removed_on_exit() {
    let a = TestBackend::start("b1").await;
    let path = write_config("pid-file", &config_for(&[("blue", &[&a])], "\"blue\"", ""));
    let pid_file = path.with_file_name("switchyard.pid");
    let _ = std::fs::remove_file(&pid_file);
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config", path.to_str().unwrap()])
        .args(["--pid-file", pid_file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let pid = child.0.as_ref().unwrap().id();
    let written = eventually("the pid file", Duration::from_secs(10), async || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|t| t.ends_with('\n'))
    })
    .await;
    assert_eq!(written, format!("{pid}\n"));
    let signal = |name: &str| {
        let sent = Command::new("kill")
            .args([name, written.trim()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-HUP");
    signal("-TERM");
    let mut process = child.0.take().unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || process.wait().unwrap()),
    )
    .await
    .expect("exits after its drain")
    .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!pid_file.exists(), "the pid file outlived the process");
}
