//! `[policy]`: MCP calls identified from headers and bodies, rate limits, bearer-token
//! authentication with allow-lists, and the shipped example. Fixtures here: token signers
//! (the example's test-only RSA key, and EC and Ed25519 keys made per test), key sets written to
//! a temporary directory, metric reads, and raw JSON-RPC posts.

mod auth;
mod example;
mod identity;
mod limits;

use std::path::PathBuf;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::ops::{scrape, total};
use crate::support::*;

pub const ISSUER: &str = "https://auth.example.test";
pub const AUDIENCE: &str = "switchyard-demo";

/// A key that signs tokens, and its public half as a JWK.
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    pub kid: String,
    jwk: Jwk,
}

impl Signer {
    /// The example's test-only RSA key (`config/examples/jwt-test-key.pem`) and its public half
    /// from the shipped `jwks.json`, kid `demo-1`.
    pub fn example() -> Signer {
        let pem = std::fs::read(example_dir().join("jwt-test-key.pem")).unwrap();
        let shipped = std::fs::read_to_string(example_dir().join("jwks.json")).unwrap();
        let set: JwkSet = serde_json::from_str(&shipped).unwrap();
        let key = EncodingKey::from_rsa_pem(&pem).unwrap();
        Signer::new(key, Algorithm::RS256, "demo-1", set.keys[0].clone())
    }

    pub fn ec(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        // The uncompressed point: 0x04, x, y.
        let point = pair.public_key_raw();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid,
                         "x": base64_url(&point[1..33]), "y": base64_url(&point[33..])});
        Signer::new(
            key,
            Algorithm::ES256,
            kid,
            serde_json::from_value(jwk).unwrap(),
        )
    }

    pub fn ed(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let key = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                         "x": base64_url(pair.public_key_raw())});
        Signer::new(
            key,
            Algorithm::EdDSA,
            kid,
            serde_json::from_value(jwk).unwrap(),
        )
    }

    fn new(key: EncodingKey, alg: Algorithm, kid: &str, jwk: Jwk) -> Signer {
        Signer {
            key,
            alg,
            kid: kid.to_string(),
            jwk,
        }
    }

    /// A token with these claims, signed, naming this key's id.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signed by this key but naming key id `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

pub fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/examples")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims a proxy configured with [`ISSUER`] and [`AUDIENCE`] accepts, for `sub`.
pub fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 600})
}

/// The same claims with `changes` applied (`Value::Null` removes a claim).
pub fn claims_with(sub: &str, changes: &[(&str, Value)]) -> Value {
    let mut claims = claims(sub);
    for (name, value) in changes {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(*name),
            value => claims
                .as_object_mut()
                .unwrap()
                .insert(name.to_string(), value.clone()),
        };
    }
    claims
}

pub fn seconds_from_now(offset: i64) -> Value {
    json!(now() + offset)
}

/// A temporary directory for one test's key files.
pub fn temp_dir(test: &str) -> TempDir {
    TempDir::new(&format!("policy-{test}"))
}

/// Writes the public keys of `signers` as `jwks.json` in `dir`; returns its path.
pub fn write_jwks(dir: &std::path::Path, signers: &[&Signer]) -> PathBuf {
    let set = JwkSet {
        keys: signers.iter().map(|s| s.jwk.clone()).collect(),
    };
    let path = dir.join("jwks.json");
    std::fs::write(&path, serde_json::to_string_pretty(&set).unwrap()).unwrap();
    path
}

/// The `[policy.auth]` table for a key set at `jwks` (and `extra` lines, e.g. allow rules).
pub fn auth_table(jwks: &std::path::Path, extra: &str) -> String {
    format!(
        "[policy.auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"{}\"\n\
         resource = \"http://127.0.0.1:8080/mcp\"\nscopes_supported = [\"mcp:tools\"]\n{extra}\n",
        jwks.display()
    )
}

/// The value of the samples of `name` whose labels include `with`.
pub async fn metric(proxy: &TestProxy, name: &str, with: &[(&str, &str)]) -> f64 {
    total(&scrape(proxy).await, name, with)
}

/// A JSON-RPC `tools/call` of `tool` with request id `id`.
pub fn tool_call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {"message": "hi"}}})
}

/// POSTs `body` to `url` with extra headers.
pub async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}
