//! nginx's configuration grammar, which is small: words and quoted strings, `;` ending a
//! directive, `{ … }` holding a block, `#` comments. `include` is expanded as it is read (a `*` in
//! the file name matches like a shell glob), so the translation sees one tree whose every
//! directive knows its file and line.

use std::path::{Path, PathBuf};

use super::ImportError;

/// One directive: `name args…;` or `name args… { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Directive>>,
    /// `FILE:LINE`, the file named relative to the main file's directory.
    pub at: String,
}

impl Directive {
    pub fn arg(&self, index: usize) -> Option<&str> {
        self.args.get(index).map(String::as_str)
    }

    /// `FILE:LINE name args`, for the comment on the TOML line it became.
    pub fn origin(&self) -> String {
        format!("{} {}", self.at, self.text())
    }

    /// `name args` as written (quoted where needed), shortened.
    pub fn text(&self) -> String {
        let mut text = self.name.clone();
        for arg in &self.args {
            text.push(' ');
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || ";{}#".contains(c)) {
                text.push_str(&format!("\"{arg}\""));
            } else {
                text.push_str(arg);
            }
        }
        if text.chars().count() > 80 {
            text = text.chars().take(77).collect::<String>() + "...";
        }
        text
    }
}

/// Includes nested deeper than this are refused (an include loop).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads `path` and every file it includes.
pub fn read(path: &Path) -> Result<Vec<Directive>, ImportError> {
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let reader = Reader { base };
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    reader.file(path, &name, 0)
}

struct Reader {
    /// The main file's directory: nginx reads includes relative to its configuration prefix.
    base: PathBuf,
}

impl Reader {
    fn file(&self, path: &Path, name: &str, depth: usize) -> Result<Vec<Directive>, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let tokens = tokenize(&text, name)?;
        let mut parser = Parser {
            tokens: &tokens,
            next: 0,
            name,
        };
        let directives = parser.block(None)?;
        self.expand(directives, depth)
    }

    fn expand(
        &self,
        directives: Vec<Directive>,
        depth: usize,
    ) -> Result<Vec<Directive>, ImportError> {
        let mut out = Vec::with_capacity(directives.len());
        for mut directive in directives {
            if directive.name == "include" && directive.block.is_none() {
                out.extend(self.include(&directive, depth)?);
                continue;
            }
            if let Some(block) = directive.block.take() {
                directive.block = Some(self.expand(block, depth)?);
            }
            out.push(directive);
        }
        Ok(out)
    }

    fn include(&self, directive: &Directive, depth: usize) -> Result<Vec<Directive>, ImportError> {
        let syntax = |message: String| ImportError::syntax(&directive.at, message);
        let [pattern] = directive.args.as_slice() else {
            return Err(syntax("include takes one file name".into()));
        };
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(syntax(format!(
                "include `{pattern}`: includes nested too deep (a loop?)"
            )));
        }
        let mut out = Vec::new();
        for path in self
            .matching(pattern)
            .map_err(|e| syntax(format!("include `{pattern}`: {e}")))?
        {
            let name = path
                .strip_prefix(&self.base)
                .unwrap_or(&path)
                .display()
                .to_string();
            out.extend(self.file(&path, &name, depth + 1)?);
        }
        Ok(out)
    }

    /// The files `pattern` names, in name order; a pattern without `*` must name a file.
    fn matching(&self, pattern: &str) -> std::io::Result<Vec<PathBuf>> {
        let path = self.base.join(pattern);
        let Some(glob) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(vec![path]);
        };
        if !glob.contains('*') {
            std::fs::metadata(&path)?;
            return Ok(vec![path]);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        // Like nginx, a pattern that matches nothing includes nothing.
        let entries = match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            entries => entries?,
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| wildcard_match(&glob, &e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        Ok(found)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (index, part) in parts.iter().enumerate() {
        if index == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

/// Tokens with their line numbers.
fn tokenize(text: &str, name: &str) -> Result<Vec<(Token, usize)>, ImportError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            ';' => tokens.push((Token::Semicolon, line)),
            '{' => tokens.push((Token::Open, line)),
            '}' => tokens.push((Token::Close, line)),
            '"' | '\'' => {
                let start = line;
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(ImportError::syntax(
                                &format!("{name}:{start}"),
                                format!("unterminated {c}quoted{c} string"),
                            ));
                        }
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some(escaped) if escaped == c || escaped == '\\' => word.push(escaped),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => {}
                        },
                        Some(other) => {
                            if other == '\n' {
                                line += 1;
                            }
                            word.push(other);
                        }
                    }
                }
                tokens.push((Token::Word(word), start));
            }
            first => {
                let mut word = String::from(first);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, ';' | '{' | '}') {
                        // `${name}` keeps its braces inside the word.
                        if next == '{' && word.ends_with('$') {
                            word.extend(chars.by_ref().take_while(|c| *c != '}'));
                            word.push('}');
                            continue;
                        }
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push((Token::Word(word), line));
            }
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [(Token, usize)],
    next: usize,
    name: &'a str,
}

impl Parser<'_> {
    fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.name)
    }

    /// Directives until the `}` closing the block opened at `opened` (or the end of the file).
    fn block(&mut self, opened: Option<usize>) -> Result<Vec<Directive>, ImportError> {
        let mut directives = Vec::new();
        loop {
            let Some((token, line)) = self.tokens.get(self.next) else {
                return match opened {
                    Some(line) => Err(ImportError::syntax(
                        &self.at(line),
                        "unexpected end of file: this block's \"}\" is missing".into(),
                    )),
                    None => Ok(directives),
                };
            };
            self.next += 1;
            match token {
                Token::Close if opened.is_some() => return Ok(directives),
                Token::Word(name) => directives.push(self.directive(name, *line)?),
                other => {
                    let what = match other {
                        Token::Close => "\"}\"",
                        Token::Open => "\"{\"",
                        _ => "\";\"",
                    };
                    return Err(ImportError::syntax(
                        &self.at(*line),
                        format!("unexpected {what}: a directive name was expected"),
                    ));
                }
            }
        }
    }

    fn directive(&mut self, name: &str, line: usize) -> Result<Directive, ImportError> {
        let mut args = Vec::new();
        loop {
            let Some((token, at)) = self.tokens.get(self.next) else {
                return Err(ImportError::syntax(
                    &self.at(line),
                    format!("unexpected end of file: `{name}` needs a \";\" or a block"),
                ));
            };
            self.next += 1;
            match token {
                Token::Word(word) => args.push(word.clone()),
                Token::Semicolon => {
                    return Ok(self.made(name, args, None, line));
                }
                Token::Open => {
                    let block = self.block(Some(*at))?;
                    return Ok(self.made(name, args, Some(block), line));
                }
                Token::Close => {
                    return Err(ImportError::syntax(
                        &self.at(*at),
                        format!("unexpected \"}}\": `{name}` needs a \";\" before it"),
                    ));
                }
            }
        }
    }

    fn made(
        &self,
        name: &str,
        args: Vec<String>,
        block: Option<Vec<Directive>>,
        line: usize,
    ) -> Directive {
        Directive {
            name: name.to_string(),
            args,
            block,
            at: self.at(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Directive>, String> {
        let tokens = tokenize(text, "t.conf").map_err(|e| e.to_string())?;
        let mut parser = Parser {
            tokens: &tokens,
            next: 0,
            name: "t.conf",
        };
        parser.block(None).map_err(|e| e.to_string())
    }

    #[test]
    fn words_quotes_blocks_and_comments() {
        let tree = parse(
            "http { # comment\n  add_header X-A \"a b; c\" always;\n  set $x ${y}z;\n\
             location = /x { return 301 'https://$host$request_uri'; }\n}\n",
        )
        .unwrap();
        let http = &tree[0];
        assert_eq!(http.at, "t.conf:1");
        let block = http.block.as_ref().unwrap();
        assert_eq!(block[0].args, ["X-A", "a b; c", "always"]);
        assert_eq!(block[0].at, "t.conf:2");
        assert_eq!(block[1].args, ["$x", "${y}z"]);
        assert_eq!(block[2].args, ["=", "/x"]);
        let ret = &block[2].block.as_ref().unwrap()[0];
        assert_eq!(ret.args, ["301", "https://$host$request_uri"]);
    }

    #[test]
    fn malformed_input_names_file_and_line() {
        for (text, expected) in [
            ("http {\n  server {\n", "t.conf:2: unexpected end of file"),
            ("http {\n  listen 80\n}\n", "t.conf:3: unexpected \"}\""),
            ("}\n", "t.conf:1: unexpected \"}\""),
            ("a 'open\n\n", "t.conf:1: unterminated"),
            ("a b", "t.conf:1: unexpected end of file"),
            ("\n;", "t.conf:2: unexpected \";\""),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.conf", "mcp.conf"));
        assert!(!wildcard_match("*.conf", "mcp.conf.bak"));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("a*b", "ba"));
        assert!(wildcard_match("exact", "exact"));
    }
}
