//! `switchyard import nginx.conf`: an nginx configuration in, the equivalent `switchyard.toml`
//! out, each line commented with the nginx directive it came from, and every directive it could
//! not translate listed, never dropped in silence.
//!
//! Three steps: `parse.rs` reads nginx's grammar (with `include`) into a tree of directives that
//! know their `FILE:LINE`; `translate.rs` maps the `http` block onto listeners (with
//! `upstream.rs` for `upstream` blocks and nginx's values, `location.rs` for routes); `emit.rs` writes the TOML. The
//! result is then validated by [`crate::config`] like any config file.
//!
//! nginx's grammar is a dozen lines of rules, so it is read by a small tokenizer here: the Rust
//! nginx parsers are either unmaintained and refuse directives they do not model
//! (`nginx-config`), which an importer must list rather than fail on, or a linter's parser still
//! changing its API release to release.

mod emit;
mod location;
mod parse;
mod translate;
mod upstream;

use std::path::{Path, PathBuf};

pub use parse::Directive;

/// `switchyard import`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The nginx configuration file (its `include`s are read relative to its directory).
    pub file: PathBuf,
}

/// Why an nginx file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// `FILE:LINE: message`.
    #[error("{at}: {message}")]
    Syntax { at: String, message: String },
    /// The translation does not validate as a Switchyard config (`FILE:LINE:COL` in the output).
    #[error("the imported configuration does not validate: {0}")]
    Invalid(String),
}

impl ImportError {
    fn syntax(at: &str, message: String) -> ImportError {
        ImportError::Syntax {
            at: at.to_string(),
            message,
        }
    }
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The `switchyard.toml` text, untranslated directives listed in its header comment.
    pub toml: String,
    /// `FILE:LINE directive: why`, one per directive that was not translated.
    pub untranslated: Vec<String>,
}

/// Reads `path` (and its includes), translates it, and checks that the result validates.
pub fn import(path: &Path) -> Result<Imported, ImportError> {
    let tree = parse::read(path)?;
    let translation = translate::translate(&tree);
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let toml = emit::emit(&translation, &name);
    crate::config::Config::parse(&toml, &path.with_extension("toml"))
        .map_err(|e| ImportError::Invalid(e.to_string()))?;
    Ok(Imported {
        toml,
        untranslated: translation.notes,
    })
}
