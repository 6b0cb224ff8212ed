//! Operating the proxy: Prometheus metrics, JSON access logs, the admin API and its token,
//! drain/undrain by API, and the configs shipped for Docker and Kubernetes.
//!
//! This module holds the area's fixtures: the admin token, config files in a temp directory, a
//! strict parser of the metrics exposition and a scrape of it, a session and a call through the
//! proxy. The tests are in the submodules, one per concern.

use std::collections::BTreeMap;

use crate::support::*;

mod admin;
mod commands;
mod logs;
mod metrics;
mod monitoring;
mod packaging;
mod shipped_configs;
mod stale_series;

const TOKEN: &str = "ops-test-token-0123456789abcdef";

/// `switchyard.toml` in a directory of its own, both removed when the result is dropped.
fn write_config(test: &str, text: &str) -> TempFile {
    TempFile::new(&format!("ops-{test}"), "switchyard.toml", text)
}

/// One sample of the Prometheus/OpenMetrics text format.
#[derive(Debug)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Parses the text exposition format strictly enough to catch a broken encoder: every line is a
/// well-formed comment or sample, every sample belongs to a declared family, and `# EOF` ends it.
pub(crate) fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "exposition must end with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap());
            assert!(valid_name(name), "bad family name in {line:?}");
            match kind {
                "TYPE" => {
                    let metric_type = words.next().unwrap();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "info",
                            "unknown"
                        ]
                        .contains(&metric_type),
                        "bad type in {line:?}"
                    );
                    families.push(name.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap(), line)),
            None => (series, BTreeMap::new()),
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let declared = families.iter().any(|family| {
            name.strip_prefix(family.as_str()).is_some_and(|suffix| {
                [
                    "", "_total", "_bucket", "_sum", "_count", "_created", "_info",
                ]
                .contains(&suffix)
            })
        });
        assert!(declared, "sample of an undeclared family: {line:?}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_labels(mut text: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (name, rest) = text
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label in {line:?}"));
        assert!(valid_name(name), "bad label name in {line:?}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(name.to_string(), value);
        text = &rest[end + 1..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
    labels
}

/// The sum of samples named `name` whose labels include all of `with`.
pub(crate) fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

pub(crate) async fn scrape(proxy: &TestProxy) -> Vec<Sample> {
    let response = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    parse_exposition(&response.text().await.unwrap())
}

async fn initialize(proxy: &TestProxy) -> String {
    new_session(&client(), &proxy.url("/mcp")).await
}

async fn call(proxy: &TestProxy, session: &str) -> (u16, String) {
    let reply = post_in_session(&client(), &proxy.url("/mcp"), session).await;
    (reply.status().as_u16(), reply.text().await.unwrap())
}
