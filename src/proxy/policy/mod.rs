//! `[policy]` on the request path: the phase between reading a request and routing it. It
//! serves the protected-resource metadata, authenticates the caller, learns which MCP calls the
//! request makes, applies tool allow-lists and rate limits, and rewrites what the backend sees
//! of the caller. Without `[policy]` none of this runs: no body is read and nothing allocated.

mod auth;
mod limits;
pub mod observe;
mod read;
pub mod refusal;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use hyper::body::Incoming;

use crate::mcp::identity::{Call, Scanner};
use crate::state::policy::PolicyState;
use crate::state::{Snapshot, State};
use crate::upstream::body::RequestBody;

use super::body::ResponseBody;
use observe::{Observed, ScanTap};
use read::Calls;
pub use refusal::Refusal;

/// The protected-resource metadata document of any policy of the snapshot, when this is a
/// request for it; for any other request, `None` after one comparison of the path.
pub fn metadata_document<B>(
    snapshot: &Snapshot,
    request: &Request<B>,
) -> Option<Response<ResponseBody>> {
    if !request
        .uri()
        .path()
        .starts_with("/.well-known/oauth-protected-resource")
    {
        return None;
    }
    crate::state::policy::all(snapshot)
        .iter()
        .filter_map(|policy| policy.config.auth.as_ref())
        .find_map(|auth| auth::metadata_document(auth, request))
}

/// What an admitted request carries on: the body's head read already, a tap to read the rest as
/// it passes, and what the access log and metrics will say of its calls.
#[derive(Default)]
pub struct Admitted {
    head: Vec<Frame<Bytes>>,
    tap: Option<ScanTap>,
    pub observed: Option<Arc<Observed>>,
}

impl Admitted {
    /// Puts the head back in front of the body going to the backend, and the tap on it.
    pub fn attach(self, body: &mut RequestBody) {
        if !self.head.is_empty() {
            body.put_back(self.head);
        }
        if let Some(tap) = self.tap {
            body.tap(Box::new(tap));
        }
    }
}

/// What the access log and metrics will learn of the calls, and the calls known now (with
/// whether some lie past the scan limit).
fn observe(
    calls: Calls,
    config: &crate::config::PolicyConfig,
    subject: Option<String>,
) -> (Admitted, Vec<Call>, bool) {
    let labels = config.max_tool_labels;
    let mut admitted = Admitted::default();
    match calls {
        Calls::None => (admitted, Vec::new(), false),
        Calls::Streaming => {
            let scanner = Scanner::new(config.scan_limit);
            let observed = Arc::new(Observed::scanning(scanner, subject, labels));
            admitted.tap = Some(ScanTap(Arc::clone(&observed)));
            admitted.observed = Some(observed);
            (admitted, Vec::new(), false)
        }
        Calls::Known {
            calls,
            head,
            truncated,
        } => {
            admitted.head = head;
            let observed = Observed::known(calls.clone(), subject, labels);
            admitted.observed = Some(Arc::new(observed));
            (admitted, calls, truncated)
        }
    }
}

/// Decides on one request. `Err` carries the refusal and what was learned of its calls.
pub async fn admit(
    state: &State,
    snapshot: &Snapshot,
    policy: &PolicyState,
    client: IpAddr,
    session: Option<&str>,
    request: &mut Request<Incoming>,
) -> Result<Admitted, (Refusal, Option<Arc<Observed>>)> {
    let config = &policy.config;
    let tls = snapshot.loaded.upstream_tls.as_ref();
    let claims = match (&config.auth, &policy.jwks) {
        (Some(auth), Some(store)) => Some(
            auth::authenticate(auth, store, request.headers(), &state.metrics, tls)
                .await
                .map_err(|refusal| (refusal, None))?,
        ),
        _ => None,
    };
    let subject = config
        .auth
        .as_ref()
        .zip(claims.as_ref())
        .and_then(|(auth, claims)| auth::claim_text(claims, &auth.identity_claim));
    let idle = snapshot.config.timeouts.client_body;
    let calls = read::read(config, request, idle)
        .await
        .map_err(|refusal| (refusal, None))?;
    let (admitted, known, truncated) = observe(calls, config, subject);
    let refused = |refusal| (refusal, admitted.observed.clone());
    if let (Some(auth), Some(claims)) = (&config.auth, &claims) {
        auth::check_tools(auth, claims, &known, truncated).map_err(refused)?;
    }
    let asker = limits::Asker {
        client,
        session,
        claims: claims.as_ref(),
    };
    limits::check(policy, &asker, &known).map_err(refused)?;
    if let (Some(auth), Some(claims)) = (&config.auth, &claims) {
        auth::forward_identity(auth, claims, request.headers_mut());
    }
    Ok(admitted)
}
