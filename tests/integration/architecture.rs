//! The layering that `src/lib.rs` ("Layout") describes, enforced: every `crate::…` path in a
//! source file must name its own layer or one the table lets it use. The table below is the one
//! place the rule is written in code; change it and the Layout section together.

use std::path::{Path, PathBuf};

/// Each layer of the library and the layers it may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("mcp", &[]),
    ("metrics", &[]),
    ("config", &["mcp"]),
    ("upstream", &["mcp", "metrics", "config"]),
    ("state", &["mcp", "metrics", "config", "upstream"]),
    ("proxy", &["mcp", "metrics", "config", "upstream", "state"]),
    (
        "control",
        &["mcp", "metrics", "config", "upstream", "state", "proxy"],
    ),
    (
        "tools",
        &[
            "mcp", "metrics", "config", "upstream", "state", "proxy", "control",
        ],
    ),
];

/// One import that breaks the table: `file` (relative to `src/`) uses layer `uses`.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    uses: String,
}

/// The layer a source file belongs to: its first path component under `src/`.
fn layer_of(file: &str) -> &str {
    let first = file.split('/').next().unwrap_or(file);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Every `crate::NAME` in the code of `text` (comments left out), with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `switchyard_crate::x` or `mycrate::x` are not ours.
            let preceded_by_ident = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name.is_empty() && !preceded_by_ident {
                found.push((index + 1, name));
            }
            rest = after;
        }
    }
    found
}

/// The imports among `files` (path under `src/`, contents) that `layers` does not allow, and
/// the files whose layer the table does not know (a new top-level module must be placed).
fn violations(layers: &[(&str, &[&str])], files: &[(String, String)]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (file, text) in files {
        let own = layer_of(file);
        if matches!(own, "lib" | "main") {
            continue;
        }
        let Some((_, allowed)) = layers.iter().find(|(name, _)| *name == own) else {
            out.push(Violation {
                file: file.clone(),
                line: 0,
                uses: "(a layer missing from the table)".into(),
            });
            continue;
        };
        for (line, used) in crate_paths(text) {
            if used != own && !allowed.contains(&used.as_str()) {
                out.push(Violation {
                    file: file.clone(),
                    line,
                    uses: used,
                });
            }
        }
    }
    out
}

fn source_files(root: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut folders = vec![PathBuf::from(root)];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap();
                let name = relative.to_string_lossy().replace('\\', "/");
                files.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files
}

#[test]
fn every_import_points_down_the_layer_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = source_files(&src);
    assert!(files.len() > 20, "read the source tree: {}", files.len());
    let found = violations(LAYERS, &files);
    assert!(
        found.is_empty(),
        "imports against the layer table (src/lib.rs, Layout):\n{found:#?}"
    );
}

#[test]
fn an_upward_import_is_caught() {
    let table: &[(&str, &[&str])] = &[("low", &[]), ("high", &["low"])];
    let files = vec![
        (
            "high/a.rs".to_string(),
            "use crate::low::thing;\nuse crate::high::other;\n".to_string(),
        ),
        (
            "low/b.rs".to_string(),
            "// crate::high in a comment is fine\nfn f() { crate::high::g(); }\n".to_string(),
        ),
        ("stray.rs".to_string(), String::new()),
        ("lib.rs".to_string(), "pub mod low;".to_string()),
    ];
    assert_eq!(
        violations(table, &files),
        vec![
            Violation {
                file: "low/b.rs".into(),
                line: 2,
                uses: "high".into(),
            },
            Violation {
                file: "stray.rs".into(),
                line: 0,
                uses: "(a layer missing from the table)".into(),
            },
        ]
    );
}

#[test]
fn paths_of_other_crates_are_not_ours() {
    assert_eq!(
        crate_paths("use mycrate::x; let y = crate::mcp::z; // crate::proxy"),
        vec![(1, "mcp".to_string())]
    );
}
