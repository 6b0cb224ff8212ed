//! The config parser and validator: any text, and any mutation of a real config, is either
//! accepted or refused with an error that names a place inside the file.

use std::path::Path;

use proptest::prelude::*;
use switchyard::config::{Config, ConfigError};

use super::cases;

/// Every key with its default: the richest valid config there is to mutate.
const REFERENCE: &str = include_str!("../../../config/switchyard.toml");

const SMALL: &str = "[[listener]]\nbind = \"127.0.0.1:8080\"\n\n[pools.blue]\n\
    backends = [\"127.0.0.1:3001\", { address = \"127.0.0.1:3003\", weight = 2 }]\n\n\
    [pools.green]\nbackends = [\"fleet.internal:3101\"]\n\n[routing]\nactive = \"blue\"\n\n\
    [[route]]\nname = \"api\"\nprefix = \"/api/\"\nactive = { green = 3, blue = 1 }\n";

/// One edit of a TOML text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        Just("\"".to_string()),
        Just("[".to_string()),
        Just("]]".to_string()),
        Just(" = ".to_string()),
        Just("\n".to_string()),
        Just("{ }".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"1e400ms\"".to_string()),
        Just("[pools.x]\n".to_string()),
        Just("active = \"\"\n".to_string()),
        Just("bind = \"[::1]:0\"".to_string()),
        Just("#".to_string()),
        Just("é\u{0}\u{feff}".to_string()),
        any::<String>(),
    ];
    prop_oneof![
        (any::<usize>(), 0usize..64).prop_map(|(at, len)| Edit::Delete(at, len)),
        (any::<usize>(), token).prop_map(|(at, text)| Edit::Insert(at, text)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

/// `text` with `edit` applied, at char boundaries.
fn apply(text: &str, edit: &Edit) -> String {
    let boundary = |at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    match edit {
        Edit::Delete(at, len) => {
            let start = boundary(*at);
            let end = boundary(start.saturating_add(*len).min(text.len()));
            format!("{}{}", &text[..start], &text[end.max(start)..])
        }
        Edit::Insert(at, insert) => {
            let at = boundary(*at);
            format!("{}{insert}{}", &text[..at], &text[at..])
        }
        Edit::DuplicateLine(line) if !lines.is_empty() => {
            let line = line % lines.len();
            lines.insert(line, lines[line]);
            lines.concat()
        }
        Edit::SwapLines(a, b) if !lines.is_empty() => {
            let (a, b) = (a % lines.len(), b % lines.len());
            lines.swap(a, b);
            lines.concat()
        }
        _ => text.to_string(),
    }
}

/// Parses `text`; a refusal must name a place within it (line 1 up to one past the last line,
/// column from 1) and display as `FILE:LINE:COL: message`.
fn check(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(_) => Ok(()),
        Err(ConfigError::Invalid {
            line,
            column,
            message,
            ..
        }) => {
            let lines = text.split('\n').count();
            prop_assert!(
                (1..=lines + 1).contains(&line),
                "line {} of {}: {}",
                line,
                lines,
                message
            );
            prop_assert!(column >= 1, "column {}: {}", column, message);
            prop_assert!(!message.is_empty());
            let shown = Config::parse(text, Path::new("fuzz.toml"))
                .unwrap_err()
                .to_string();
            let place = format!("fuzz.toml:{line}:{column}: ");
            prop_assert!(shown.starts_with(&place), "{}", shown);
            Ok(())
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "an error without a place: {other}"
        ))),
    }
}

#[test]
fn the_seeds_parse() {
    Config::parse(REFERENCE, Path::new("switchyard.toml")).unwrap();
    Config::parse(SMALL, Path::new("small.toml")).unwrap();
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn any_text_is_accepted_or_refused_at_a_place(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn mutated_configs_are_accepted_or_refused_at_a_place(
        seed in prop_oneof![Just(REFERENCE), Just(SMALL)],
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let text = edits.iter().fold(seed.to_string(), |text, edit| apply(&text, edit));
        check(&text)?;
    }
}
