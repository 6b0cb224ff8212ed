//! Routes as a snapshot holds them: each route's active pools as indexes with their weights, and
//! one table of host and path matchers, built once when the snapshot is built. Matching a request
//! reads that table and allocates nothing.
//!
//! Matching is nginx's: the host picks a group of routes (an exact name, else the longest
//! `*.suffix`, else the routes for any host), then the path picks within the group (an exact path,
//! else the longest prefix). A host whose group has no route for the path gets no route, even if
//! a route for any host would take the path: a service's own paths never fall through to another.

use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::config::{HostMatch, PathMatch, RouteConfig};
use crate::metrics::RouteMetrics;
use crate::upstream::backend::Backend;
use crate::upstream::balance::{self, Target};

use super::snapshot::Pool;

/// One route of the snapshot.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name, shared by its log lines and metric labels.
    pub name: Arc<str>,
    pub settings: RouteConfig,
    /// Indexes into the snapshot's pools with their share of new work.
    pub active: Vec<(usize, u32)>,
    active_weight: u32,
    /// Every pool the route serves from, active or not.
    pub pools: Vec<usize>,
    /// The route's `[policy]` state (see `state::policy::attach`); `None`: requests pass blind.
    pub policy: Option<Arc<super::policy::PolicyState>>,
    /// The route's metric handles.
    pub metrics: Arc<RouteMetrics>,
}

impl Route {
    /// Pools are found by name; validation made sure each exists.
    pub fn build(settings: &RouteConfig, pools: &[Pool]) -> Route {
        let index = |name: &str| pools.iter().position(|p| &*p.name == name);
        let active: Vec<(usize, u32)> = settings
            .active
            .iter()
            .filter_map(|(name, weight)| Some((index(name)?, *weight)))
            .collect();
        let name: Arc<str> = Arc::from(settings.name.as_str());
        Route {
            metrics: Arc::new(RouteMetrics::new(Arc::clone(&name))),
            name,
            active_weight: active.iter().map(|(_, w)| *w).sum(),
            active,
            pools: settings.pools.iter().filter_map(|p| index(p)).collect(),
            settings: settings.clone(),
            policy: None,
        }
    }

    /// What `strip_prefix` removes from the path (and puts back into a legacy `endpoint` URL):
    /// the prefix without its trailing `/`, so `/github/mcp` becomes `/mcp`.
    pub fn stripped_prefix(&self) -> Option<&str> {
        match &self.settings.path {
            PathMatch::Prefix(prefix) if self.settings.strip_prefix => {
                Some(prefix.trim_end_matches('/')).filter(|p| !p.is_empty())
            }
            _ => None,
        }
    }

    pub fn is_active_pool(&self, pool: usize) -> bool {
        self.active.iter().any(|(i, _)| *i == pool)
    }

    /// The active pool that takes this piece of new work: by client hash for streams (so a client
    /// keeps landing in the same pool of a canary split), at random by weight otherwise.
    pub fn choose_active_pool(&self, client: Option<u64>) -> Option<usize> {
        if self.active.len() == 1 {
            return Some(self.active[0].0);
        }
        let total = self.active_weight.max(1);
        let mut ticket = match client {
            Some(hash) => (hash % u64::from(total)) as u32,
            None => fastrand::u32(..total),
        };
        for (index, weight) in &self.active {
            if ticket < *weight {
                return Some(*index);
            }
            ticket -= weight;
        }
        self.active.first().map(|(i, _)| *i)
    }

    /// True when some backend of the route's active pools takes new work.
    pub fn has_usable_backend(&self, pools: &[Pool]) -> bool {
        self.active
            .iter()
            .any(|(i, _)| pools[*i].members.iter().any(|m| m.backend.takes_new_work()))
    }

    /// Picks among the active pools' backends that `usable` accepts: by client hash when a
    /// client address is given (streams), least-connections otherwise.
    pub fn pick_among(
        &self,
        pools: &[Pool],
        client_ip: Option<IpAddr>,
        usable: impl Fn(&Backend) -> bool,
    ) -> Option<Arc<Target>> {
        let client = client_ip.map(balance::client_hash);
        let first = self.choose_active_pool(client)?;
        // The chosen pool first; other active pools only if it has no usable backend.
        let order = std::iter::once(first)
            .chain(self.active.iter().map(|(i, _)| *i).filter(|i| *i != first));
        for index in order {
            let members = &pools[index].members;
            let picked = match client {
                Some(hash) => balance::pick_by_hash(members, hash, &usable),
                None => balance::pick_least_loaded(members, &usable),
            };
            if let Some(member) = picked {
                return Some(Arc::clone(&member.target));
            }
        }
        None
    }
}

/// Host and path matchers over the routes of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact_hosts: FxHashMap<Box<str>, usize>,
    /// `.example.com` suffixes, longest first.
    wildcard_hosts: Vec<(Box<str>, usize)>,
    any_host: Option<usize>,
    groups: Vec<PathGroup>,
}

/// The routes of one host matcher, by path.
#[derive(Debug, Clone, Default)]
struct PathGroup {
    exact: Vec<(Box<str>, usize)>,
    /// Longest first, so the first that matches is the longest.
    prefixes: Vec<(Box<str>, usize)>,
}

/// Longer than any DNS name: such a host matches only routes for any host.
const MAX_HOST: usize = 256;

impl RouteTable {
    pub fn build(routes: &[RouteConfig]) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, route) in routes.iter().enumerate() {
            let keys: Vec<Option<&HostMatch>> = if route.hosts.is_empty() {
                vec![None]
            } else {
                route.hosts.iter().map(Some).collect()
            };
            for key in keys {
                let group = table.group_for(key);
                let group = &mut table.groups[group];
                match &route.path {
                    PathMatch::Exact(path) => group.exact.push((path.as_str().into(), index)),
                    PathMatch::Prefix(path) => group.prefixes.push((path.as_str().into(), index)),
                }
            }
        }
        for group in &mut table.groups {
            group
                .prefixes
                .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        }
        table
            .wildcard_hosts
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        table
    }

    fn group_for(&mut self, key: Option<&HostMatch>) -> usize {
        let next = self.groups.len();
        let slot = match key {
            None => *self.any_host.get_or_insert(next),
            Some(HostMatch::Exact(host)) => {
                *self.exact_hosts.entry(host.as_str().into()).or_insert(next)
            }
            Some(HostMatch::Suffix(suffix)) => {
                match self.wildcard_hosts.iter().find(|(s, _)| **s == **suffix) {
                    Some((_, group)) => *group,
                    None => {
                        self.wildcard_hosts.push((suffix.as_str().into(), next));
                        next
                    }
                }
            }
        };
        if slot == next {
            self.groups.push(PathGroup::default());
        }
        slot
    }

    /// The index of the route for a request to `host` (as sent: any case, maybe a port; `None`
    /// when the request named none) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let mut buffer = [0u8; MAX_HOST];
        let host = host.and_then(|h| normalized(h, &mut buffer));
        let group = host.and_then(|h| self.host_group(h)).or(self.any_host)?;
        let group = &self.groups[group];
        group
            .exact
            .iter()
            .find(|(p, _)| **p == *path)
            .or_else(|| group.prefixes.iter().find(|(p, _)| path.starts_with(&**p)))
            .map(|(_, route)| *route)
    }

    fn host_group(&self, host: &str) -> Option<usize> {
        if let Some(group) = self.exact_hosts.get(host) {
            return Some(*group);
        }
        self.wildcard_hosts
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
            .map(|(_, group)| *group)
    }
}

/// `host` without its port and trailing dot, lower-cased into `buffer`; `None` if too long.
fn normalized<'a>(host: &str, buffer: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let host = match host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets, loses its port.
        Some(rest) => rest.find(']').map_or(host, |end| &host[..end + 2]),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let out = buffer.get_mut(..host.len())?;
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::path::Path;

    /// Counts this thread's allocations, to show that matching a route makes none.
    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            // SAFETY: the caller's contract for `alloc` is passed on unchanged.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as for `alloc`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn table(routes: &str) -> (RouteTable, Vec<String>) {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n{routes}"
        );
        let config = crate::config::Config::parse(&text, Path::new("t.toml")).unwrap();
        let names = config.routes.iter().map(|r| r.name.clone()).collect();
        (RouteTable::build(&config.routes), names)
    }

    fn find<'a>(
        t: &'a (RouteTable, Vec<String>),
        host: Option<&str>,
        path: &str,
    ) -> Option<&'a str> {
        t.0.find(host, path).map(|i| t.1[i].as_str())
    }

    #[test]
    fn host_then_longest_prefix_then_exact() {
        let t = table(
            r#"
[[route]]
name = "gh"
hosts = ["GitHub.example.com"]
active = "p"
[[route]]
name = "gh-api"
hosts = ["github.example.com"]
prefix = "/api/"
active = "p"
[[route]]
name = "wild"
hosts = ["*.example.com"]
active = "p"
[[route]]
name = "deep"
hosts = ["*.eu.example.com"]
active = "p"
[[route]]
name = "jira"
prefix = "/jira/"
active = "p"
[[route]]
name = "ping"
exact = "/jira/ping"
active = "p"
"#,
        );
        assert_eq!(find(&t, Some("github.example.com"), "/mcp"), Some("gh"));
        assert_eq!(
            find(&t, Some("GITHUB.example.com:8443"), "/api/x"),
            Some("gh-api")
        );
        assert_eq!(find(&t, Some("github.example.com."), "/api"), Some("gh"));
        assert_eq!(find(&t, Some("a.example.com"), "/"), Some("wild"));
        assert_eq!(find(&t, Some("a.eu.example.com"), "/"), Some("deep"));
        assert_eq!(find(&t, Some("example.com"), "/jira/x"), Some("jira"));
        assert_eq!(find(&t, Some("other.org"), "/jira/ping"), Some("ping"));
        assert_eq!(find(&t, None, "/jira/pingx"), Some("jira"));
        assert_eq!(find(&t, Some("[::1]:8080"), "/jira/"), Some("jira"));
        // A host with its own routes never falls through to the routes for any host.
        assert_eq!(find(&t, Some("a.example.com"), "/jira/x"), Some("wild"));
        assert_eq!(find(&t, Some("other.org"), "/"), None);
        let long = "a".repeat(300);
        assert_eq!(find(&t, Some(&long), "/jira/"), Some("jira"));

        let sanity = ALLOCATIONS.with(Cell::get);
        drop(std::hint::black_box(vec![1u8]));
        assert!(ALLOCATIONS.with(Cell::get) > sanity, "the counter counts");
        let before = ALLOCATIONS.with(Cell::get);
        for (host, path) in [
            (Some("GitHub.Example.com:443"), "/api/x"),
            (Some("a.eu.example.com"), "/"),
            (None, "/jira/ping"),
            (Some("other.org"), "/"),
        ] {
            std::hint::black_box(t.0.find(std::hint::black_box(host), path));
        }
        assert_eq!(
            ALLOCATIONS.with(Cell::get),
            before,
            "route matching allocated"
        );
    }
}
