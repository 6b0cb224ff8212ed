//! Bearer tokens, as MCP's authorization specification asks of a resource server: a JWT in
//! `Authorization: Bearer`, signed by a key of the issuer's JWKS, for this audience, not expired
//! (with leeway); without one, `401` with `WWW-Authenticate` naming the protected-resource
//! metadata (RFC 9728), which is served here too. Tool allow-lists turn a valid token's
//! `tools/call` of a tool it may not use into `403`. The backend gets the caller's identity in a
//! header of the config's choosing, and the token only when told to pass it.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, Grant, JwtAlgorithm};
use crate::mcp::identity::Call;
use crate::metrics::Metrics;
use crate::state::policy::jwks::JwksStore;

use super::super::body::ResponseBody;
use super::refusal::{FORBIDDEN, Refusal, UNAUTHORIZED};

/// A validated token's claims.
pub type Claims = Map<String, Value>;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The protected-resource metadata document, for a `GET` of its path.
pub fn metadata_document<B>(
    auth: &AuthConfig,
    request: &Request<B>,
) -> Option<Response<ResponseBody>> {
    let path = request.uri().path();
    if request.method() != http::Method::GET || (path != auth.metadata.path && path != WELL_KNOWN) {
        return None;
    }
    let metadata = &auth.metadata;
    let mut document = serde_json::json!({
        "resource": metadata.resource,
        "authorization_servers": metadata.authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    if !metadata.scopes_supported.is_empty() {
        document["scopes_supported"] = serde_json::json!(metadata.scopes_supported);
    }
    let mut response = Response::new(ResponseBody::full(document.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Some(response)
}

/// The caller's claims, or the `401` that tells it where to get a token.
pub async fn authenticate(
    auth: &AuthConfig,
    store: &JwksStore,
    headers: &HeaderMap,
    metrics: &Metrics,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Claims, Refusal> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(auth, None, "a bearer token is required"));
    };
    let refuse = |why: &str| unauthorized(auth, Some(why), why);
    let header = jsonwebtoken::decode_header(token).map_err(|_| refuse("malformed token"))?;
    if !auth.algorithms.iter().any(|a| algorithm(*a) == header.alg) {
        return Err(refuse("token algorithm not accepted"));
    }
    let validation = validation(auth, header.alg);
    let mut keys = store.keys();
    let fits = |key: &crate::state::policy::jwks::Key| {
        key.family == header.alg.family()
            && (header.kid.is_none() || key.kid.as_deref() == header.kid.as_deref())
    };
    if header.kid.is_some() && !keys.iter().any(fits) {
        // The issuer may have rotated its keys since they were fetched.
        store.refresh_for_unknown_kid(metrics, tls).await;
        keys = store.keys();
    }
    let mut failure = "no key of the issuer's key set verifies this token";
    for key in keys.iter().filter(|k| fits(k)) {
        match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(error) => failure = describe(error.kind()),
        }
    }
    Err(refuse(failure))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn algorithm(accepted: JwtAlgorithm) -> Algorithm {
    match accepted {
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

fn validation(auth: &AuthConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[&auth.issuer]);
    validation.set_audience(&auth.audience);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = auth.leeway.as_secs();
    validation
}

/// What the client is told about a token that failed: enough to fix it, nothing internal.
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidAudience => "token is for another audience",
        ErrorKind::InvalidIssuer => "token is from another issuer",
        ErrorKind::MissingRequiredClaim(_) => "token lacks exp, iss or aud",
        ErrorKind::InvalidSignature => "token signature does not verify",
        _ => "token is not valid",
    }
}

/// `401` with the challenge MCP clients follow to the metadata document (RFC 9728 section 5.1);
/// `error="invalid_token"` when a token was presented (RFC 6750 section 3.1).
fn unauthorized(auth: &AuthConfig, error: Option<&str>, message: &str) -> Refusal {
    let mut challenge = format!("Bearer resource_metadata=\"{}\"", auth.metadata.url);
    if let Some(description) = error {
        challenge.push_str(&format!(
            ", error=\"invalid_token\", error_description=\"{description}\""
        ));
    }
    Refusal::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        UNAUTHORIZED,
        format!("Unauthorized: {message}"),
    )
    .with_header(header::WWW_AUTHENTICATE, challenge)
}

/// Checks every `tools/call` against the allow-lists; `truncated`: calls past the scan limit
/// could not be read, so they cannot be allowed.
pub fn check_tools(
    auth: &AuthConfig,
    claims: &Claims,
    calls: &[Call],
    truncated: bool,
) -> Result<(), Refusal> {
    if auth.allow.is_empty() {
        return Ok(());
    }
    for call in calls {
        let unread = call.method.is_none() && truncated;
        if call.method.as_deref() != Some("tools/call") && !unread {
            continue;
        }
        let allowed = call.name.as_deref().is_some_and(|tool| {
            auth.allow.iter().any(|rule| {
                rule.tools.iter().any(|t| t == "*" || t == tool) && grants(&rule.grant, claims)
            })
        });
        if !allowed {
            return Err(forbidden(auth, call));
        }
    }
    Ok(())
}

fn forbidden(auth: &AuthConfig, call: &Call) -> Refusal {
    let tool = call.name.as_deref().unwrap_or("(unread)");
    let scopes: Vec<&str> = auth
        .allow
        .iter()
        .filter(|rule| rule.tools.iter().any(|t| t == "*" || t == tool))
        .filter_map(|rule| match &rule.grant {
            Grant::Scope(scope) => Some(scope.as_str()),
            _ => None,
        })
        .collect();
    let mut challenge = format!(
        "Bearer error=\"insufficient_scope\", resource_metadata=\"{}\"",
        auth.metadata.url
    );
    if !scopes.is_empty() {
        challenge.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
    }
    Refusal::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        FORBIDDEN,
        format!("Forbidden: this token may not call tool `{tool}`"),
    )
    .with_id(call.id.as_deref())
    .with_header(header::WWW_AUTHENTICATE, challenge)
}

fn grants(grant: &Grant, claims: &Claims) -> bool {
    match grant {
        Grant::Anyone => true,
        Grant::Scope(scope) => {
            let in_scope = claims
                .get("scope")
                .and_then(Value::as_str)
                .is_some_and(|s| s.split(' ').any(|s| s == scope));
            in_scope || holds(claims.get("scp"), scope)
        }
        Grant::Claim { name, value } => holds(claims.get(name), value),
    }
}

/// A claim equal to `value`, or a list holding it.
fn holds(claim: Option<&Value>, value: &str) -> bool {
    match claim {
        Some(Value::String(s)) => s == value,
        Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(value)),
        Some(Value::Number(n)) => n.to_string() == value,
        Some(Value::Bool(b)) => b.to_string() == value,
        _ => false,
    }
}

/// A claim as text, for the identity header and `claim:` limit keys.
pub fn claim_text(claims: &Claims, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The backend's view: the caller's identity in `identity_header` (whatever the client put
/// there is dropped), and no bearer token unless `pass_token`.
pub fn forward_identity(auth: &AuthConfig, claims: &Claims, headers: &mut HeaderMap) {
    headers.remove(&auth.identity_header);
    let identity =
        claim_text(claims, &auth.identity_claim).and_then(|text| HeaderValue::try_from(text).ok());
    if let Some(value) = identity {
        headers.insert(auth.identity_header.clone(), value);
    }
    if !auth.pass_token {
        headers.remove(header::AUTHORIZATION);
    }
}
