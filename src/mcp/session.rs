//! MCP sessions: where a request names one, and the table of which backend owns each id.
//!
//! Learned from responses (the `Mcp-Session-Id` header, the legacy `endpoint` event), forgotten on
//! `DELETE` or when the owner says it no longer knows the session, and expired when idle. Sharded
//! so that concurrent requests of different sessions rarely touch the same lock.
//!
//! The table is bounded, and a session is only handed out if it can be kept: a request that may
//! open one first reserves a [`SessionSlot`], and is refused when none is left. Evicting the least
//! recently used session instead would let anyone who can initialise break sessions already
//! admitted; a reservation held by a response that turns out to mint nothing is given back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::HeaderName;
use rustc_hash::FxHashMap;

/// A name, not a `&str`: a lookup by text parses the name again every time.
pub static SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");

/// The session a request names: the Streamable HTTP header, else the legacy transport's query
/// parameter (`sessionId` in the TypeScript SDK, `session_id` in the Python SDK).
pub fn session_id<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(value) = headers.get(&SESSION_HEADER) {
        return value.to_str().ok().filter(|v| !v.is_empty());
    }
    query.and_then(legacy_session_id)
}

/// `sessionId` or `session_id` from a query string, as written (ids are not percent-decoded:
/// the same raw form is learned from the `endpoint` event and looked up here).
pub fn legacy_session_id(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (matches!(key, "sessionId" | "session_id") && !value.is_empty()).then_some(value)
    })
}

/// A short, stable tag for logs: never the session id itself.
pub fn session_tag(id: &str) -> String {
    format!("{:08x}", super::hash::stable_hash(id.as_bytes()) as u32)
}

const SHARDS: usize = 32;

type Shard = RwLock<FxHashMap<Box<str>, Entry>>;

#[derive(Debug)]
struct Entry {
    owner: Arc<str>,
    /// Seconds since the table's epoch; atomics so a lookup needs only a read lock.
    last_seen: AtomicU64,
}

#[derive(Debug)]
pub struct SessionTable {
    shards: Box<[Shard]>,
    epoch: Instant,
    /// Sessions plus outstanding reservations: what counts against `max`.
    len: AtomicUsize,
    reserved: AtomicUsize,
    max: usize,
}

/// Room for one session a response may mint, held until it is learned or the response shows it
/// mints none (then dropping it gives the room back).
#[derive(Debug)]
pub struct SessionSlot {
    table: Arc<SessionTable>,
    held: bool,
}

impl SessionSlot {
    /// Learns `id` into the room this slot held; a known id gives the room back.
    pub fn learn(mut self, id: &str, owner: &Arc<str>) -> Learned {
        let learned = self.table.insert(id, owner, true);
        if learned == Learned::New {
            // The reservation became the entry, which `len` already counts.
            self.table.reserved.fetch_sub(1, Ordering::Relaxed);
            self.held = false;
        }
        learned
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if self.held {
            self.table.reserved.fetch_sub(1, Ordering::Relaxed);
            self.table.len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What happened to a learned session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    New,
    Known,
    TableFull,
}

impl SessionTable {
    pub fn new(max: usize) -> SessionTable {
        SessionTable {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(FxHashMap::default()))
                .collect(),
            epoch: Instant::now(),
            len: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            max,
        }
    }

    fn shard(&self, id: &str) -> &Shard {
        let index = super::hash::stable_hash(id.as_bytes()) as usize % SHARDS;
        &self.shards[index]
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The owner's address, refreshing the session's idle clock.
    pub fn owner(&self, id: &str) -> Option<Arc<str>> {
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(id)?;
        entry.last_seen.store(self.now(), Ordering::Relaxed);
        Some(Arc::clone(&entry.owner))
    }

    /// Holds room for one session, or `None` when the table is full.
    pub fn reserve(self: &Arc<Self>) -> Option<SessionSlot> {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| {
                (len < self.max).then_some(len + 1)
            })
            .ok()?;
        self.reserved.fetch_add(1, Ordering::Relaxed);
        Some(SessionSlot {
            table: Arc::clone(self),
            held: true,
        })
    }

    /// Learns a session minted without a reservation: only while there is room.
    pub fn learn(&self, id: &str, owner: &Arc<str>) -> Learned {
        self.insert(id, owner, false)
    }

    fn insert(&self, id: &str, owner: &Arc<str>, reserved: bool) -> Learned {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = shard.get_mut(id) {
            entry.owner = Arc::clone(owner);
            entry.last_seen.store(self.now(), Ordering::Relaxed);
            return Learned::Known;
        }
        let room = reserved
            || self
                .len
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| {
                    (len < self.max).then_some(len + 1)
                })
                .is_ok();
        if !room {
            return Learned::TableFull;
        }
        let entry = Entry {
            owner: Arc::clone(owner),
            last_seen: AtomicU64::new(self.now()),
        };
        shard.insert(id.into(), entry);
        Learned::New
    }

    pub fn forget(&self, id: &str) -> bool {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let removed = shard.remove(id).is_some();
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Drops sessions idle for longer than `idle`; returns how many.
    pub fn expire(&self, idle: Duration) -> usize {
        let cutoff = self.now().saturating_sub(idle.as_secs());
        let mut expired = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            shard.retain(|_, e| e.last_seen.load(Ordering::Relaxed) >= cutoff);
            expired += before - shard.len();
        }
        self.len.fetch_sub(expired, Ordering::Relaxed);
        expired
    }

    /// Sessions in the table (reservations aside).
    pub fn len(&self) -> usize {
        self.len
            .load(Ordering::Relaxed)
            .saturating_sub(self.reserved.load(Ordering::Relaxed))
    }

    /// How many sessions the table holds at most.
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions per owner address, for the admin API.
    pub fn count_by_owner(&self) -> FxHashMap<Arc<str>, usize> {
        let mut counts: FxHashMap<Arc<str>, usize> = FxHashMap::default();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for entry in shard.values() {
                *counts.entry(Arc::clone(&entry.owner)).or_default() += 1;
            }
        }
        counts
    }

    /// Calls `visit(id, owner)` for every session, one shard lock at a time (admin listing).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &Arc<str>)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (id, entry) in shard.iter() {
                visit(id, &entry.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_lookup_forget() {
        let table = SessionTable::new(10);
        let owner: Arc<str> = Arc::from("127.0.0.1:3001");
        assert_eq!(table.learn("abc", &owner), Learned::New);
        assert_eq!(table.learn("abc", &owner), Learned::Known);
        assert_eq!(table.owner("abc").as_deref(), Some("127.0.0.1:3001"));
        assert_eq!(table.len(), 1);
        assert!(table.forget("abc"));
        assert!(table.owner("abc").is_none());
        assert!(table.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let table = SessionTable::new(2);
        let owner: Arc<str> = Arc::from("b:1");
        assert_eq!(table.learn("1", &owner), Learned::New);
        assert_eq!(table.learn("2", &owner), Learned::New);
        assert_eq!(table.learn("3", &owner), Learned::TableFull);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn reservations_count_against_the_bound() {
        let table = Arc::new(SessionTable::new(2));
        let owner: Arc<str> = Arc::from("b:1");
        let first = table.reserve().unwrap();
        let second = table.reserve().unwrap();
        assert!(table.reserve().is_none(), "both places are held");
        assert_eq!(table.learn("unreserved", &owner), Learned::TableFull);
        assert_eq!(first.learn("a", &owner), Learned::New);
        assert_eq!(table.len(), 1);
        // A response that minted nothing gives its place back.
        drop(second);
        assert_eq!(table.len(), 1);
        let third = table.reserve().unwrap();
        // An id already known takes no second place.
        assert_eq!(third.learn("a", &owner), Learned::Known);
        assert_eq!(table.learn("b", &owner), Learned::New);
        assert!(table.reserve().is_none());
        assert!(table.forget("a"));
        assert!(table.reserve().is_some());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn expiry_keeps_fresh_sessions() {
        let table = SessionTable::new(10);
        let owner: Arc<str> = Arc::from("b:1");
        table.learn("fresh", &owner);
        assert_eq!(table.expire(Duration::from_secs(60)), 0);
        assert_eq!(
            table.expire(Duration::ZERO),
            0,
            "last_seen == now is not idle"
        );
        assert_eq!(table.len(), 1);
    }

    /// Resident memory of this process, in bytes (Linux).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// What one tracked session costs, for the README (Linux; not a check, run by hand):
    /// `cargo test --lib session_memory -- --ignored --nocapture` (layout and allocation sizes
    /// are the same in a debug build). Each case runs in a fresh process, so that memory freed by
    /// an earlier case cannot hide what a later one takes.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn session_memory() {
        if let Ok(case) = std::env::var("SESSION_MEMORY_CASE") {
            let (count, id_len) = case.split_once('x').unwrap();
            let (count, id_len): (usize, usize) = (count.parse().unwrap(), id_len.parse().unwrap());
            let owner: Arc<str> = Arc::from("10.0.0.1:3000");
            let ids: Vec<String> = (0..count).map(|i| format!("{i:0>id_len$}")).collect();
            let table = SessionTable::new(usize::MAX);
            let before = resident();
            for id in &ids {
                table.learn(id, &owner);
            }
            let per_session = (resident() - before) as f64 / count as f64;
            println!("{count} sessions, {id_len}-byte ids: {per_session:.0} B each");
            return;
        }
        for count in [10_000, 100_000, 400_000, 1_000_000] {
            for id_len in [16, 36, 128] {
                let run = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--ignored",
                        "--exact",
                        "mcp::session::tests::session_memory",
                    ])
                    .arg("--nocapture")
                    .env("SESSION_MEMORY_CASE", format!("{count}x{id_len}"))
                    .output()
                    .unwrap();
                let out = String::from_utf8_lossy(&run.stdout);
                for line in out.lines().filter(|l| l.contains("B each")) {
                    println!("{line}");
                }
            }
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, http::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn finds_sessions_in_header_then_query() {
        let h = headers(&[("mcp-session-id", "s-1")]);
        assert_eq!(session_id(&h, Some("sessionId=q")), Some("s-1"));
        let none = HeaderMap::new();
        assert_eq!(session_id(&none, Some("a=1&sessionId=abc")), Some("abc"));
        assert_eq!(session_id(&none, Some("session_id=py")), Some("py"));
        assert_eq!(session_id(&none, Some("sessionIdx=1&session_id=")), None);
        assert_eq!(session_id(&none, None), None);
        assert_eq!(session_id(&headers(&[("mcp-session-id", "")]), None), None);
    }
}
