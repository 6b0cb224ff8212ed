//! Which MCP call a message request is: the JSON-RPC `method` and, for `tools/call`,
//! `prompts/get` and `resources/read`, the tool, prompt or resource it names.
//!
//! The 2026-07-28 protocol lets clients say so in the `Mcp-Method` and `Mcp-Name` request
//! headers, so that intermediaries need not read bodies; older clients say it only in the body.
//! [`Scanner`] reads a body incrementally, frame by frame as it passes, keeping no copy: it
//! follows the JSON structure only as far as the top-level keys (`method`, `id`) and the keys of
//! `params` (`name`, `uri`), up to a byte limit. Past the limit, or in a body that is not
//! JSON-RPC, the method is unknown: never an error here. Bytes after the top-level value are not
//! read.
//!
//! A key that appears twice (`"name":"a","name":"b"`) makes the call ambiguous: JSON parsers
//! disagree on which one wins, so nothing may be decided on either.

use http::HeaderMap;

/// The request header naming the JSON-RPC method (2026-07-28 protocol).
pub const METHOD_HEADER: &str = "mcp-method";
/// The request header naming the tool or prompt (`params.name`) or resource (`params.uri`).
pub const NAME_HEADER: &str = "mcp-name";

/// Longest method, name or uri kept, in bytes as written; a longer one is unknown.
const MAX_VALUE: usize = 256;
/// Longest key looked at, in bytes as written: enough for `params` written wholly as `\u0070…`.
const MAX_KEY: usize = 64;
/// Longest `id` kept, as written.
const MAX_ID: usize = 128;

/// The params key that names what a method acts on, if it names anything.
pub fn name_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// One JSON-RPC call as far as it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    pub method: Option<String>,
    /// `params.name` for tools and prompts, `params.uri` for resources.
    pub name: Option<String>,
    /// The request `id` as written (a JSON string or number), for error answers.
    pub id: Option<String>,
    /// `method`, `params.name` or `params.uri` was given twice.
    pub ambiguous: bool,
}

/// What the headers say, when the client sent `Mcp-Method`.
pub fn from_headers(headers: &HeaderMap) -> Option<Call> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= MAX_VALUE)
            .map(str::to_owned)
    };
    let method = text(METHOD_HEADER)?;
    Some(Call {
        name: name_key(&method).and_then(|_| text(NAME_HEADER)),
        method: Some(method),
        id: None,
        ambiguous: false,
    })
}

/// Whether the headers and the body disagree on the method or the name.
pub fn disagree(header: &Call, body: &[Call]) -> bool {
    body.iter().any(|call| {
        let method_differs = call.method.is_some() && call.method != header.method;
        let name_differs =
            header.name.is_some() && call.method.is_some() && call.name != header.name;
        method_differs || name_differs
    })
}

/// How far a body's scan got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More bytes may tell more.
    Reading,
    /// The top-level value ended: every call is known.
    Complete,
    /// The byte limit was reached first: calls after the last complete one are unknown.
    Truncated,
    /// Not a JSON object or array of objects: every call is unknown.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens.
    Between,
    /// In a string; `escaped` after a backslash.
    Str { escaped: bool },
    /// In a number or `true`/`false`/`null`.
    Literal,
}

/// What the string or literal being read is, and so where its bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Skip,
    Key,
    Method,
    Name,
    Uri,
    Id,
}

/// Which key of interest the value about to be read belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    Method,
    Params,
    Id,
    Name,
    Uri,
}

/// An incremental reader of a JSON-RPC body's calls; see the module documentation.
#[derive(Debug)]
pub struct Scanner {
    limit: usize,
    seen: usize,
    progress: Progress,
    /// Open containers; bit `i` set when the container at depth `i + 1` is an array.
    depth: u32,
    arrays: u64,
    /// Depth of a message object: 1, or 2 inside a batch; 0 before the first byte.
    message_depth: u32,
    lex: Lex,
    expect_key: bool,
    pending: Pending,
    in_params: bool,
    slot: Slot,
    /// The string or literal of interest being read, as written.
    token: Vec<u8>,
    token_too_long: bool,
    /// `params.name` and `params.uri` of the current call: which one it names is known only
    /// once its method is, which may come later.
    seen_name: Option<String>,
    seen_uri: Option<String>,
    /// Which keys of interest the current call gave, usable or not, to tell repeats.
    given: Given,
    current: Call,
    calls: Vec<Call>,
}

impl Scanner {
    /// Reads at most `limit` bytes of a body.
    pub fn new(limit: usize) -> Scanner {
        Scanner {
            limit,
            seen: 0,
            progress: Progress::Reading,
            depth: 0,
            arrays: 0,
            message_depth: 0,
            lex: Lex::Between,
            expect_key: false,
            pending: Pending::None,
            in_params: false,
            slot: Slot::Skip,
            token: Vec::new(),
            token_too_long: false,
            seen_name: None,
            seen_uri: None,
            given: Given::default(),
            current: Call::default(),
            calls: Vec::new(),
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// True once more bytes cannot change what is known.
    pub fn is_done(&self) -> bool {
        self.progress != Progress::Reading
    }

    /// The calls read completely so far, in order.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, data: &[u8]) {
        if self.is_done() {
            return;
        }
        let room = self.limit.saturating_sub(self.seen);
        let (now, over) = data.split_at(data.len().min(room));
        self.seen += now.len();
        for &byte in now {
            self.step(byte);
            if self.is_done() {
                return;
            }
        }
        if !over.is_empty() {
            self.progress = Progress::Truncated;
        }
    }

    /// The body ended: a value still open is malformed.
    pub fn finish(&mut self) {
        if self.progress != Progress::Reading {
            return;
        }
        if self.lex == Lex::Literal {
            self.end_literal();
        }
        self.progress = if self.depth == 0 && self.message_depth > 0 {
            Progress::Complete
        } else {
            Progress::Malformed
        };
    }

    fn malformed(&mut self) {
        self.progress = Progress::Malformed;
    }

    fn step(&mut self, byte: u8) {
        match self.lex {
            Lex::Str { escaped } => self.string_byte(byte, escaped),
            Lex::Literal if is_literal_byte(byte) => self.keep(byte),
            Lex::Literal => {
                self.end_literal();
                self.between(byte);
            }
            Lex::Between => self.between(byte),
        }
    }

    fn string_byte(&mut self, byte: u8, escaped: bool) {
        if escaped {
            self.lex = Lex::Str { escaped: false };
            self.keep(byte);
        } else if byte == b'\\' {
            self.lex = Lex::Str { escaped: true };
            self.keep(byte);
        } else if byte == b'"' {
            self.lex = Lex::Between;
            self.end_string();
        } else {
            self.keep(byte);
        }
    }

    fn keep(&mut self, byte: u8) {
        if self.slot == Slot::Skip {
            return;
        }
        let max = match self.slot {
            Slot::Key => MAX_KEY,
            Slot::Id => MAX_ID,
            _ => MAX_VALUE,
        };
        if self.token.len() < max {
            self.token.push(byte);
        } else {
            self.token_too_long = true;
        }
    }

    fn between(&mut self, byte: u8) {
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'{' | b'[' => self.open(byte == b'['),
            b'}' | b']' => self.close(byte == b']'),
            b'"' => self.start_string(),
            b':' => self.expect_key = false,
            b',' => self.expect_key = !self.in_array(),
            _ if is_literal_byte(byte) && self.depth > 0 => self.start_literal(byte),
            _ => self.malformed(),
        }
    }

    fn in_array(&self) -> bool {
        self.depth > 0 && self.depth <= 64 && self.arrays & (1 << (self.depth - 1)) != 0
    }

    fn open(&mut self, array: bool) {
        if self.depth == 0 {
            if self.message_depth != 0 {
                return self.malformed();
            }
            self.message_depth = if array { 2 } else { 1 };
        }
        if self.depth + 1 == self.message_depth {
            if array {
                // An array in a batch: not a call anyone can name.
                self.calls.push(Call::default());
            } else {
                self.current = Call::default();
                self.seen_name = None;
                self.seen_uri = None;
                self.given = Given::default();
            }
        } else if self.depth == self.message_depth && self.pending == Pending::Params && !array {
            self.in_params = true;
        }
        self.pending = Pending::None;
        self.depth += 1;
        if self.depth <= 64 {
            let bit = 1u64 << (self.depth - 1);
            if array {
                self.arrays |= bit;
            } else {
                self.arrays &= !bit;
            }
        }
        self.expect_key = !array;
    }

    fn close(&mut self, array: bool) {
        if self.depth == 0 || self.in_array() != array {
            return self.malformed();
        }
        if self.depth == self.message_depth + 1 {
            self.in_params = false;
        }
        if self.depth == self.message_depth && !array {
            self.end_call();
        }
        self.depth -= 1;
        self.pending = Pending::None;
        self.expect_key = false;
        if self.depth == 0 {
            self.progress = Progress::Complete;
        }
    }

    fn end_call(&mut self) {
        let mut call = std::mem::take(&mut self.current);
        let wanted = call.method.as_deref().and_then(name_key);
        call.name = match wanted {
            Some("name") => self.seen_name.take(),
            Some(_) => self.seen_uri.take(),
            None => None,
        };
        self.calls.push(call);
    }

    /// A string or literal where a batch holds its calls: not a call anyone can name.
    fn note_scalar_in_batch(&mut self) {
        if self.message_depth == 2 && self.depth == 1 {
            self.calls.push(Call::default());
        }
    }

    fn start_string(&mut self) {
        if self.depth == 0 {
            return self.malformed();
        }
        self.note_scalar_in_batch();
        self.lex = Lex::Str { escaped: false };
        self.token.clear();
        self.token_too_long = false;
        self.slot = if self.expect_key {
            Slot::Key
        } else {
            self.value_slot(true)
        };
        if self.slot == Slot::Id {
            self.token.push(b'"');
        }
    }

    fn start_literal(&mut self, byte: u8) {
        self.note_scalar_in_batch();
        self.lex = Lex::Literal;
        self.token.clear();
        self.token_too_long = false;
        self.slot = self.value_slot(false);
        self.keep(byte);
    }

    /// Where the value about to be read goes, given the key it follows.
    fn value_slot(&self, string: bool) -> Slot {
        let at_message = self.depth == self.message_depth;
        let at_params = self.in_params && self.depth == self.message_depth + 1;
        match self.pending {
            Pending::Method if at_message && string => Slot::Method,
            Pending::Id if at_message => Slot::Id,
            Pending::Name if at_params && string => Slot::Name,
            Pending::Uri if at_params && string => Slot::Uri,
            _ => Slot::Skip,
        }
    }

    fn end_literal(&mut self) {
        self.lex = Lex::Between;
        if self.slot == Slot::Id && !self.token_too_long {
            self.current.id = decode(&self.token, true);
        }
        self.slot = Slot::Skip;
        self.pending = Pending::None;
    }

    fn end_string(&mut self) {
        let slot = std::mem::replace(&mut self.slot, Slot::Skip);
        if slot == Slot::Skip {
            self.pending = Pending::None;
            return;
        }
        if slot == Slot::Id {
            self.token.push(b'"');
        }
        let text = (!self.token_too_long)
            .then(|| decode(&self.token, slot == Slot::Id))
            .flatten();
        match slot {
            Slot::Key => self.key(text.as_deref()),
            Slot::Method => self.current.method = text,
            Slot::Id => self.current.id = text,
            Slot::Name => self.seen_name = text,
            Slot::Uri => self.seen_uri = text,
            Slot::Skip => {}
        }
        if slot != Slot::Key {
            self.pending = Pending::None;
        }
    }

    fn key(&mut self, key: Option<&str>) {
        let at_message = self.depth == self.message_depth;
        let at_params = self.in_params && self.depth == self.message_depth + 1;
        let (pending, given) = match key {
            Some("method") if at_message => (Pending::Method, Some(&mut self.given.method)),
            Some("params") if at_message => (Pending::Params, None),
            Some("id") if at_message => (Pending::Id, None),
            Some("name") if at_params => (Pending::Name, Some(&mut self.given.name)),
            Some("uri") if at_params => (Pending::Uri, Some(&mut self.given.uri)),
            _ => (Pending::None, None),
        };
        if let Some(given) = given {
            if *given {
                self.current.ambiguous = true;
            }
            *given = true;
        }
        self.pending = pending;
    }
}

/// Keys of interest one call gave.
#[derive(Debug, Default)]
struct Given {
    method: bool,
    name: bool,
    uri: bool,
}

fn is_literal_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'+' | b'.')
}

/// A string's content as written (escapes and all) decoded; `raw_json` keeps it as JSON text.
fn decode(token: &[u8], raw_json: bool) -> Option<String> {
    if raw_json {
        let text = std::str::from_utf8(token).ok()?;
        return serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .map(|_| text.to_owned());
    }
    if !token.contains(&b'\\') {
        return std::str::from_utf8(token).ok().map(str::to_owned);
    }
    let mut quoted = Vec::with_capacity(token.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(token);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).ok()
}

#[cfg(test)]
mod tests;
