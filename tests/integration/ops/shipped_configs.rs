//! The configs shipped for deployment pass `switchyard check`: every `docker/conf/*.toml`, and
//! the `switchyard.toml` in the ConfigMap of `docker/kubernetes.yaml`.

use std::path::Path;
use std::process::Command;

use super::{TOKEN, write_config};

fn check(path: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn docker_configs_pass_check() {
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docker).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, text) = check(&path);
            assert_eq!(code, 0, "{}: {text}", path.display());
            assert!(text.contains("bearer token required"), "{text}");
            checked += 1;
        }
    }
    assert!(checked > 0, "no docker/conf/*.toml found");
}

/// The ConfigMap in kubernetes.yaml carries a switchyard.toml: it must pass `check` too, with the
/// token Secret mounted where the Deployment mounts it.
#[test]
fn kubernetes_configmap_passes_check() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/kubernetes.yaml"),
    )
    .unwrap();
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "switchyard.toml: |");
    assert!(lines.next().is_some(), "no switchyard.toml in a ConfigMap");
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    let toml: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    let dir = write_config("kubernetes", "").with_file_name("config");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, &toml).unwrap();
    let token_file = toml
        .lines()
        .find_map(|l| l.strip_prefix("token_file = "))
        .expect("the ConfigMap's admin section names a token_file")
        .trim_matches('"');
    let token_path = path.parent().unwrap().join(token_file);
    std::fs::create_dir_all(token_path.parent().unwrap()).unwrap();
    std::fs::write(&token_path, TOKEN).unwrap();
    let (code, text) = check(&path);
    assert_eq!(code, 0, "{text}\n---\n{toml}");
}
