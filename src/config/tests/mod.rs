//! The config's tests, by area: the settings in general (defaults, durations, health,
//! sealing, admin, listeners), the files a config names, routes, and policy.

use super::*;

const MINIMAL: &str = r#"
[[listener]]
bind = "127.0.0.1:8080"

[pools.blue]
backends = ["127.0.0.1:3001", "127.0.0.1:3002", { address = "127.0.0.1:3003", weight = 2 }]

[pools.green]
backends = ["127.0.0.1:3101"]

[routing]
active = "blue"
"#;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())
}

/// Parses, validates and loads the files, as a start or a reload does.
fn load(text: &str) -> Result<LoadedConfig, String> {
    load_at(text, Path::new("t.toml"))
}

fn load_at(text: &str, source: &Path) -> Result<LoadedConfig, String> {
    let config = Config::parse(text, source).map_err(|e| e.to_string())?;
    LoadedConfig::from_config(config).map_err(|e| e.to_string())
}

fn with_admin(admin: &str) -> String {
    format!("{MINIMAL}\n[admin]\n{admin}\n")
}

mod files;
mod policy;
mod routes;
mod settings;
