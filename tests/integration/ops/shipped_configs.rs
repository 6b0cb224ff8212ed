//! The configs shipped for deployment pass `switchyard check`: every `docker/conf/*.toml`, and
//! the `switchyard.toml` in the ConfigMap of `docker/kubernetes.yaml`. Neither the repository nor
//! the image carries an admin token: the configs read it from a mounted secret.

use std::path::Path;
use std::process::Command;

use super::TOKEN;
use crate::support::TempDir;

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

/// The value of the first `token_file = "…"` line.
fn token_file(toml: &str) -> &str {
    toml.lines()
        .find_map(|l| l.strip_prefix("token_file = "))
        .expect("the config's admin section names a token_file")
        .trim_matches('"')
}

/// Each docker config, with its token file (an absolute path a volume mounts) pointed at a
/// temporary file holding a token, as the compose volume would.
#[test]
fn docker_configs_pass_check() {
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docker).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let toml = std::fs::read_to_string(&path).unwrap();
            let mounted = token_file(&toml);
            assert!(
                mounted.starts_with("/run/"),
                "{}: the token comes from a mounted secret, not the image: {mounted}",
                path.display()
            );
            let scratch = TempDir::new(&format!("ops-docker-{checked}"));
            let dir = scratch.join("mounted");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("admin-token"), TOKEN).unwrap();
            let local = dir.join("switchyard.toml");
            let token_path = dir.join("admin-token");
            std::fs::write(&local, toml.replace(mounted, token_path.to_str().unwrap())).unwrap();
            let (code, text) = check(&local);
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
    let scratch = TempDir::new("ops-kubernetes");
    let dir = scratch.join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, &toml).unwrap();
    let token_path = path.parent().unwrap().join(token_file(&toml));
    std::fs::create_dir_all(token_path.parent().unwrap()).unwrap();
    std::fs::write(&token_path, TOKEN).unwrap();
    let (code, text) = check(&path);
    assert_eq!(code, 0, "{text}\n---\n{toml}");
}

/// No admin token (or any other secret file) is committed under docker/, the image copies none,
/// and the Kubernetes manifest carries no Secret object.
#[test]
fn no_secret_is_shipped() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(!root.join("docker/conf/admin-token").exists());
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    let copies = dockerfile.lines().filter(|l| l.starts_with("COPY"));
    assert!(
        copies.clone().all(|l| !l.contains("admin-token")),
        "the image copies a token: {:?}",
        copies.collect::<Vec<_>>()
    );
    let manifest = std::fs::read_to_string(root.join("docker/kubernetes.yaml")).unwrap();
    assert!(
        !manifest.contains("kind: Secret"),
        "the manifest carries a Secret"
    );
    assert!(manifest.contains("seccompProfile: { type: RuntimeDefault }"));
    assert!(manifest.contains("kind: PodDisruptionBudget"));
}
