//! `[policy]`: what Switchyard knows and decides about MCP calls: which method and tool each
//! message is (for metrics and the access log), rate limits, and bearer-token authentication
//! with tool allow-lists. Its raw shape is here too, beside the checks that read it, so that the
//! whole feature reads in one file.

use std::time::Duration;

use http::header::HeaderName;
use serde::Deserialize;
use toml::Spanned;

use super::FileRef;
use super::raw::RawDuration;
use super::validate::{Invalid, invalid};
use super::values::duration;

/// Everything `[policy]` sets; absent, the request path reads no body and counts no call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Bytes of a message body read at most to find its method and tool.
    pub scan_limit: usize,
    /// Distinct tool names given their own metric label; later ones count as `other`.
    pub max_tool_labels: usize,
    pub limits: Vec<LimitConfig>,
    pub auth: Option<AuthConfig>,
}

impl PolicyConfig {
    /// Whether a decision needs the method or tool before the request is forwarded.
    pub fn decides_on_calls(&self) -> bool {
        self.limits
            .iter()
            .any(|l| l.method.is_some() || l.tool.is_some() || l.key == LimitKey::Tool)
            || self.auth.as_ref().is_some_and(|a| !a.allow.is_empty())
    }
}

/// One `[[policy.limit]]`: a token bucket per key, for the calls it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    /// Only calls of this JSON-RPC method; `None`: every request.
    pub method: Option<String>,
    /// Only calls naming this tool, prompt or resource.
    pub tool: Option<String>,
    pub key: LimitKey,
    /// `rate` calls per `per`, sustained.
    pub rate: u32,
    pub per: Duration,
    /// Calls allowed at once after a quiet spell.
    pub burst: u32,
    /// Keys remembered at most; newcomers beyond it share one bucket.
    pub max_keys: usize,
}

/// What a limit counts separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address (after `trusted_proxies`).
    Client,
    /// The `Mcp-Session-Id`; requests without one are not limited.
    Session,
    /// The tool, prompt or resource name.
    Tool,
    /// A claim of the validated token (`claim:sub`); needs `[policy.auth]`.
    Claim(String),
}

/// `[policy.auth]`: bearer JWTs validated against a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audience: Vec<String>,
    pub jwks: JwksSource,
    /// The key set is fetched again this often (and on a token with an unknown `kid`).
    pub jwks_refresh: Duration,
    pub leeway: Duration,
    pub algorithms: Vec<JwtAlgorithm>,
    pub metadata: ResourceMetadata,
    /// The header the backend finds the caller's identity in, and the claim it holds.
    pub identity_header: HeaderName,
    pub identity_claim: String,
    /// Forward the client's `Authorization` header to the backend (default: removed).
    pub pass_token: bool,
    /// Tool allow-lists; empty: every tool for every valid token.
    pub allow: Vec<AllowRule>,
}

/// Where the keys that sign tokens are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(FileRef),
    /// An `https://` URL, fetched with the TLS client of `https://` backends.
    Url(http::Uri),
}

/// The signature algorithms a token may use: asymmetric only, so the public key set can never
/// verify a token someone signed with it (the `HS256` confusion), and never `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Rs256,
    Es256,
    EdDsa,
}

impl JwtAlgorithm {
    fn parse(text: &str) -> Option<JwtAlgorithm> {
        match text {
            "RS256" => Some(JwtAlgorithm::Rs256),
            "ES256" => Some(JwtAlgorithm::Es256),
            "EdDSA" => Some(JwtAlgorithm::EdDsa),
            _ => None,
        }
    }
}

/// The protected-resource metadata (RFC 9728) served for MCP clients to find the
/// authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceMetadata {
    /// The resource's URL, e.g. `https://mcp.example.com/mcp`.
    pub resource: String,
    /// Where the document is served: `/.well-known/oauth-protected-resource` plus the resource's
    /// path (RFC 9728 section 3.1), and what `WWW-Authenticate` points at.
    pub path: String,
    pub url: String,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
}

/// One `[[policy.auth.allow]]`: these tools, for tokens that have this scope or claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Tool names; `*` is every tool.
    pub tools: Vec<String>,
    pub grant: Grant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every valid token.
    Anyone,
    /// The token's `scope` (space-separated) or `scp` (list) holds this scope.
    Scope(String),
    /// Claim `name` equals `value`, or is a list that holds it.
    Claim { name: String, value: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    scan_limit: Option<Spanned<usize>>,
    max_tool_labels: Option<usize>,
    #[serde(default)]
    limit: Vec<Spanned<RawLimit>>,
    auth: Option<Spanned<RawAuth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    method: Option<String>,
    tool: Option<String>,
    key: Spanned<String>,
    rate: Spanned<u32>,
    per: RawDuration,
    burst: Option<Spanned<u32>>,
    max_keys: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    issuer: Spanned<String>,
    audience: Spanned<RawStrings>,
    jwks_file: Option<Spanned<String>>,
    jwks_url: Option<Spanned<String>>,
    jwks_refresh: RawDuration,
    leeway: RawDuration,
    algorithms: Option<Vec<Spanned<String>>>,
    resource: Spanned<String>,
    #[serde(default)]
    authorization_servers: Vec<Spanned<String>>,
    #[serde(default)]
    scopes_supported: Vec<String>,
    identity_header: Option<Spanned<String>>,
    identity_claim: Option<String>,
    #[serde(default)]
    pass_token: bool,
    #[serde(default)]
    allow: Vec<Spanned<RawAllow>>,
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawStrings {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    tools: Vec<String>,
    scope: Option<String>,
    claim: Option<String>,
    value: Option<String>,
}

/// Validates `[policy]`; `file` resolves `jwks_file` against the config's directory.
pub(super) fn validate_policy(
    raw: &RawPolicy,
    file: &dyn Fn(&Spanned<String>) -> FileRef,
) -> Result<PolicyConfig, Invalid> {
    let scan_limit = match &raw.scan_limit {
        None => 65_536,
        Some(n) if (256..=16_777_216).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err(invalid(
                n,
                "policy.scan_limit must be 256..=16777216 bytes (default 65536)".into(),
            ));
        }
    };
    let auth = raw
        .auth
        .as_ref()
        .map(|a| validate_auth(a, file))
        .transpose()?;
    let limits = raw
        .limit
        .iter()
        .map(|l| validate_limit(l, auth.is_some()))
        .collect::<Result<_, _>>()?;
    Ok(PolicyConfig {
        scan_limit,
        max_tool_labels: raw.max_tool_labels.unwrap_or(100),
        limits,
        auth,
    })
}

fn validate_limit(raw: &Spanned<RawLimit>, has_auth: bool) -> Result<LimitConfig, Invalid> {
    let limit = raw.get_ref();
    let key = limit_key(&limit.key, has_auth)?;
    if *limit.rate.get_ref() == 0 {
        return Err(invalid(&limit.rate, "rate must be at least 1".into()));
    }
    let per = duration(&limit.per, Duration::from_secs(1))?;
    if let (Some(text), true) = (&limit.per, per.is_zero()) {
        return Err(invalid(
            text,
            "per must be above 0, e.g. per = \"1s\"".into(),
        ));
    }
    let burst = match &limit.burst {
        None => *limit.rate.get_ref(),
        Some(b) if *b.get_ref() > 0 => *b.get_ref(),
        Some(b) => return Err(invalid(b, "burst must be at least 1".into())),
    };
    let max_keys = match &limit.max_keys {
        None => 100_000,
        Some(n) if (1..=100_000_000).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => return Err(invalid(n, "max_keys must be 1..=100000000".into())),
    };
    let method = limit.method.clone();
    if limit.tool.is_some()
        && method
            .as_deref()
            .and_then(crate::mcp::identity::name_key)
            .is_none()
    {
        return Err(invalid(
            raw,
            "a limit with `tool` needs method = \"tools/call\", \"prompts/get\" or \
             \"resources/read\""
                .into(),
        ));
    }
    Ok(LimitConfig {
        method,
        tool: limit.tool.clone(),
        key,
        rate: *limit.rate.get_ref(),
        per,
        burst,
        max_keys,
    })
}

/// `client`, `session`, `tool` or `claim:NAME` (with `[policy.auth]` only).
fn limit_key(key: &Spanned<String>, has_auth: bool) -> Result<LimitKey, Invalid> {
    Ok(match key.get_ref().as_str() {
        "client" => LimitKey::Client,
        "session" => LimitKey::Session,
        "tool" => LimitKey::Tool,
        other => match other.strip_prefix("claim:") {
            Some(claim) if !claim.is_empty() && has_auth => LimitKey::Claim(claim.to_string()),
            Some(_) if !has_auth => {
                return Err(invalid(
                    key,
                    format!("key = \"{other}\" needs [policy.auth]: claims come from its tokens"),
                ));
            }
            _ => {
                return Err(invalid(
                    key,
                    format!(
                        "`{other}` is not a limit key: write \"client\", \"session\", \"tool\" \
                         or \"claim:NAME\""
                    ),
                ));
            }
        },
    })
}

fn validate_auth(
    raw: &Spanned<RawAuth>,
    file: &dyn Fn(&Spanned<String>) -> FileRef,
) -> Result<AuthConfig, Invalid> {
    let auth = raw.get_ref();
    let jwks = match (&auth.jwks_file, &auth.jwks_url) {
        (Some(path), None) => JwksSource::File(file(path)),
        (None, Some(url)) => JwksSource::Url(https_url(url)?),
        (Some(_), Some(url)) => {
            return Err(invalid(
                url,
                "set either jwks_file or jwks_url, not both".into(),
            ));
        }
        (None, None) => {
            return Err(invalid(
                raw,
                "[policy.auth] needs the token signing keys: jwks_file = \"jwks.json\" or \
                 jwks_url = \"https://…/jwks.json\""
                    .into(),
            ));
        }
    };
    let audience = match auth.audience.get_ref() {
        RawStrings::One(one) => vec![one.clone()],
        RawStrings::Many(many) => many.clone(),
    };
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(invalid(
            &auth.audience,
            "audience must name this resource's audience".into(),
        ));
    }
    if auth.issuer.get_ref().is_empty() {
        return Err(invalid(&auth.issuer, "issuer must not be empty".into()));
    }
    Ok(AuthConfig {
        issuer: auth.issuer.get_ref().clone(),
        audience,
        jwks,
        jwks_refresh: duration(&auth.jwks_refresh, Duration::from_secs(300))?,
        leeway: duration(&auth.leeway, Duration::from_secs(60))?,
        algorithms: algorithms(auth.algorithms.as_deref())?,
        metadata: metadata(auth)?,
        identity_header: identity_header(auth.identity_header.as_ref())?,
        identity_claim: auth.identity_claim.clone().unwrap_or_else(|| "sub".into()),
        pass_token: auth.pass_token,
        allow: auth
            .allow
            .iter()
            .map(allow_rule)
            .collect::<Result<_, _>>()?,
    })
}

fn https_url(text: &Spanned<String>) -> Result<http::Uri, Invalid> {
    text.get_ref()
        .parse::<http::Uri>()
        .ok()
        .filter(|uri| uri.scheme_str() == Some("https") && uri.host().is_some())
        .ok_or_else(|| invalid(text, format!("`{}` is not an https:// URL", text.get_ref())))
}

fn algorithms(raw: Option<&[Spanned<String>]>) -> Result<Vec<JwtAlgorithm>, Invalid> {
    let Some(raw) = raw else {
        return Ok(vec![
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
            JwtAlgorithm::EdDsa,
        ]);
    };
    raw.iter()
        .map(|text| {
            JwtAlgorithm::parse(text.get_ref()).ok_or_else(|| {
                invalid(
                    text,
                    format!(
                        "`{}` is not an accepted algorithm: write \"RS256\", \"ES256\" or \
                         \"EdDSA\" (shared-secret and unsigned tokens are never accepted)",
                        text.get_ref()
                    ),
                )
            })
        })
        .collect()
}

fn metadata(auth: &RawAuth) -> Result<ResourceMetadata, Invalid> {
    let resource = &auth.resource;
    let uri = resource
        .get_ref()
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some())
        .filter(|u| u.query().is_none())
        .ok_or_else(|| {
            invalid(
                resource,
                format!(
                    "resource `{}` is not a URL like https://mcp.example.com/mcp (no query)",
                    resource.get_ref()
                ),
            )
        })?;
    let suffix = uri.path().trim_end_matches('/');
    let path = format!("/.well-known/oauth-protected-resource{suffix}");
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map_or("", |a| a.as_str())
    );
    let servers = auth
        .authorization_servers
        .iter()
        .map(|s| {
            let ok = s
                .get_ref()
                .parse::<http::Uri>()
                .is_ok_and(|u| u.host().is_some());
            if ok {
                Ok(s.get_ref().clone())
            } else {
                Err(invalid(
                    s,
                    format!("`{}` is not an issuer URL", s.get_ref()),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ResourceMetadata {
        resource: resource.get_ref().clone(),
        url: format!("{origin}{path}"),
        path,
        authorization_servers: if servers.is_empty() {
            vec![auth.issuer.get_ref().clone()]
        } else {
            servers
        },
        scopes_supported: auth.scopes_supported.clone(),
    })
}

fn identity_header(raw: Option<&Spanned<String>>) -> Result<HeaderName, Invalid> {
    let Some(text) = raw else {
        return Ok(HeaderName::from_static("x-switchyard-subject"));
    };
    let name = HeaderName::from_bytes(text.get_ref().as_bytes())
        .map_err(|_| invalid(text, format!("`{}` is not a header name", text.get_ref())))?;
    if name == http::header::AUTHORIZATION || name == http::header::HOST {
        return Err(invalid(text, format!("identity_header cannot be `{name}`")));
    }
    Ok(name)
}

fn allow_rule(raw: &Spanned<RawAllow>) -> Result<AllowRule, Invalid> {
    let rule = raw.get_ref();
    if rule.tools.is_empty() {
        return Err(invalid(
            raw,
            "an allow rule needs tools = [\"name\", …] (or [\"*\"])".into(),
        ));
    }
    let grant = match (&rule.scope, &rule.claim, &rule.value) {
        (None, None, None) => Grant::Anyone,
        (Some(scope), None, None) => Grant::Scope(scope.clone()),
        (None, Some(name), Some(value)) => Grant::Claim {
            name: name.clone(),
            value: value.clone(),
        },
        _ => {
            return Err(invalid(
                raw,
                "an allow rule takes scope = \"…\", or claim = \"…\" with value = \"…\", or \
                 neither (every valid token)"
                    .into(),
            ));
        }
    };
    Ok(AllowRule {
        tools: rule.tools.clone(),
        grant,
    })
}
