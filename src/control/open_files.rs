//! The process's open-file limit. Every client connection, backend connection and listener is a
//! file descriptor, and the soft limit a shell or service manager hands out (often 1024) is far
//! below what `max_connections` asks for; like nginx's `worker_rlimit_nofile`, the proxy raises
//! its soft limit to the hard one at start, which needs no privilege.

/// The open-file limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
pub fn raise() -> std::io::Result<OpenFiles> {
    let mut limit = get()?;
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct, which lives for the whole call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let now = get()?;
    Ok(OpenFiles {
        before: before as u64,
        now: now.rlim_cur as u64,
        hard: now.rlim_max as u64,
    })
}

fn get() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct, which lives for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// Logs the limit in force at start, and warns when it cannot hold `max_connections` client
/// connections with a backend connection each (plus the admin listener's), since accepts then
/// fail with EMFILE before the connection limit is reached.
pub fn raise_and_log(max_connections: usize, admin_connections: usize) {
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(admin_connections as u64);
    match raise() {
        Ok(limit) => {
            tracing::info!(
                open_files = limit.now,
                raised_from = limit.before,
                hard_limit = limit.hard,
                "open-file limit"
            );
            if limit.now < needed {
                tracing::warn!(
                    open_files = limit.now,
                    max_connections,
                    "the open-file limit is below 2 x max_connections: accepts will fail with \
                     EMFILE before the connection limit; raise the hard limit (ulimit -Hn, \
                     LimitNOFILE=, docker --ulimit nofile=) or lower [limits] max_connections"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        // Lowering the soft limit by one is always allowed and leaves room for the other tests.
        let mut limit = get().unwrap();
        limit.rlim_cur -= 1;
        let lowered = limit.rlim_cur;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);

        let raised = raise().unwrap();
        assert_eq!(raised.before, lowered as u64);
        assert_eq!(raised.now, raised.hard);
        assert_eq!(get().unwrap().rlim_cur as u64, raised.hard);
        // Already at the hard limit: nothing to do, nothing fails.
        let again = raise().unwrap();
        assert_eq!((again.before, again.now), (raised.hard, raised.hard));
    }
}
