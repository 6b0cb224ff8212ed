//! Rate limits: each `[[policy.limit]]` takes one token per request it applies to (a limit with
//! no `method` or `tool`) or per call it matches (each element of a batch), from the bucket of
//! the request's key. An empty bucket answers `429` with `Retry-After`, before anything reaches
//! a backend, so an SSE response never starts. Buckets live in this process: replicas limit
//! independently.

use std::net::IpAddr;

use http::StatusCode;
use http::header::RETRY_AFTER;

use crate::config::{LimitConfig, LimitKey};
use crate::mcp::identity::Call;
use crate::state::policy::PolicyState;
use crate::state::policy::limiter::{Limiter, Verdict};

use super::auth::{Claims, claim_text};
use super::refusal::{RATE_LIMITED, Refusal};

/// Who is asking, as far as limits care.
pub(super) struct Asker<'a> {
    pub client: IpAddr,
    pub session: Option<&'a str>,
    pub claims: Option<&'a Claims>,
}

pub(super) fn check(
    policy: &PolicyState,
    asker: &Asker<'_>,
    calls: &[Call],
) -> Result<(), Refusal> {
    for (limit, limiter) in policy.config.limits.iter().zip(&policy.limiters) {
        let per_call =
            limit.method.is_some() || limit.tool.is_some() || limit.key == LimitKey::Tool;
        if !per_call {
            take(limit, limiter, asker, None)?;
            continue;
        }
        for call in calls.iter().filter(|call| matches(limit, call)) {
            take(limit, limiter, asker, Some(call))?;
        }
    }
    Ok(())
}

fn matches(limit: &LimitConfig, call: &Call) -> bool {
    let method = limit.method.is_none() || call.method == limit.method;
    let tool = limit.tool.is_none() || call.name == limit.tool;
    method && tool
}

fn take(
    limit: &LimitConfig,
    limiter: &Limiter,
    asker: &Asker<'_>,
    call: Option<&Call>,
) -> Result<(), Refusal> {
    let claim;
    let client;
    let key: &[u8] = match &limit.key {
        LimitKey::Client => {
            client = asker.client.to_canonical().to_string();
            client.as_bytes()
        }
        LimitKey::Session => match asker.session {
            Some(session) => session.as_bytes(),
            None => return Ok(()),
        },
        LimitKey::Tool => match call.and_then(|c| c.name.as_deref()) {
            Some(tool) => tool.as_bytes(),
            None => return Ok(()),
        },
        LimitKey::Claim(name) => {
            claim = asker.claims.and_then(|claims| claim_text(claims, name));
            match &claim {
                Some(value) => value.as_bytes(),
                None => return Ok(()),
            }
        }
    };
    match limiter.check(key) {
        Verdict::Allowed => Ok(()),
        Verdict::Limited(wait) => {
            // Whole seconds, rounded up: a client retrying after `Retry-After` finds a token.
            let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                RATE_LIMITED,
                format!("Rate limit exceeded: retry after {seconds} s"),
            )
            .with_id(call.and_then(|c| c.id.as_deref()))
            .with_header(RETRY_AFTER, seconds.to_string()))
        }
    }
}
