//! Sealed session ids: affinity that lives in the client's hands, not in one proxy's memory.
//!
//! When a backend mints a session id, the client receives instead a token that carries the owner
//! backend's address and the original id, encrypted and authenticated with XChaCha20-Poly1305
//! under a key every replica shares. Any replica (or a restarted one) opens the token, routes to
//! the owner and restores the original id, so backends never see the difference. A token that
//! does not open under any configured key is refused: it is never routed anywhere.
//!
//! Token layout, base64url without padding: `version (1) ‖ nonce (24) ‖ ciphertext`, where the
//! plaintext is `owner length (2, big-endian) ‖ owner address ‖ original id`. The random 192-bit
//! nonce makes collisions negligible without any counter shared between replicas.

use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use http::{HeaderValue, Request, Uri};

use crate::mcp::session::{self, SESSION_HEADER};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Binds ciphertexts to their purpose, so a key reused elsewhere cannot be fed our tokens.
const CONTEXT: &[u8] = b"switchyard session v1";
/// Tokens longer than this are refused before any decoding (ids are short; this is generous).
const MAX_TOKEN_LEN: usize = 4096;

/// A 32-byte sealing key. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey(pub [u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Reads one key as written in a key file or variable: base64 (standard or URL-safe alphabet,
    /// padded or not) of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<SealKey, String> {
        use base64::engine::DecodePaddingMode;
        use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
        let lenient =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        let text = text.trim();
        let bytes = GeneralPurpose::new(&base64::alphabet::STANDARD, lenient)
            .decode(text)
            .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient).decode(text))
            .map_err(|_| "not base64 (generate one with `openssl rand -base64 32`)".to_string())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("decodes to {} bytes; a key is 32", b.len()))?;
        Ok(SealKey(key))
    }

    /// One random key for this process, shared by every reload: used when sealing is on but no
    /// key is configured. Tokens then survive reloads but not restarts, and other replicas
    /// cannot open them.
    pub fn ephemeral() -> SealKey {
        static KEY: OnceLock<SealKey> = OnceLock::new();
        KEY.get_or_init(|| {
            tracing::warn!(
                "sessions.seal is on without a key: using a random per-process key; \
                 sessions will not survive a restart or move between replicas \
                 (set sessions.seal_keys_file or sessions.seal_keys_env)"
            );
            SealKey(XChaCha20Poly1305::generate_key(&mut OsRng).into())
        })
        .clone()
    }
}

/// Whether and with which keys session ids are sealed (`[sessions]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealSetting {
    Off,
    /// The first key seals; every key opens (rotation).
    Keys(Vec<SealKey>),
    Ephemeral,
}

/// What a sealed token holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The owner backend's address: its identity in every replica's snapshot.
    pub owner: String,
    /// The session id the backend minted.
    pub id: String,
}

/// Seals with the first key, opens with any.
pub struct Sealer {
    ciphers: Vec<XChaCha20Poly1305>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.ciphers.len())
            .finish()
    }
}

impl Sealer {
    pub fn from_setting(setting: &SealSetting) -> Option<Sealer> {
        match setting {
            SealSetting::Off => None,
            SealSetting::Keys(keys) => Sealer::new(keys),
            SealSetting::Ephemeral => Sealer::new(&[SealKey::ephemeral()]),
        }
    }

    pub fn new(keys: &[SealKey]) -> Option<Sealer> {
        if keys.is_empty() {
            return None;
        }
        let ciphers = keys
            .iter()
            .map(|k| XChaCha20Poly1305::new(&k.0.into()))
            .collect();
        Some(Sealer { ciphers })
    }

    /// A token for session `id` owned by the backend at `owner`.
    pub fn seal(&self, owner: &str, id: &str) -> Option<String> {
        let cipher = self.ciphers.first()?;
        let owner_len = u16::try_from(owner.len()).ok()?;
        let mut plain = Vec::with_capacity(2 + owner.len() + id.len());
        plain.extend_from_slice(&owner_len.to_be_bytes());
        plain.extend_from_slice(owner.as_bytes());
        plain.extend_from_slice(id.as_bytes());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: CONTEXT,
                },
            )
            .ok()?;
        let mut token = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        token.push(VERSION);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(token))
    }

    /// The owner and original id, if `token` was sealed by one of our keys and is intact.
    pub fn open(&self, token: &str) -> Option<Opened> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::from_slice(nonce);
        let plain = self.ciphers.iter().find_map(|cipher| {
            cipher
                .decrypt(
                    nonce,
                    Payload {
                        msg: sealed,
                        aad: CONTEXT,
                    },
                )
                .ok()
        })?;
        let (len, rest) = plain.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return None;
        }
        let (owner, id) = rest.split_at(len);
        Some(Opened {
            owner: String::from_utf8(owner.to_vec()).ok()?,
            id: String::from_utf8(id.to_vec()).ok()?,
        })
    }
}

/// What an inbound request's session turned out to be.
#[derive(Debug)]
pub enum Unsealed {
    /// No session named, or sealing is off: route as the request is.
    Plain,
    /// A valid token: the request now carries the original id.
    Opened { token: String, opened: Opened },
    /// A session was named but the token does not open: answer 404, never route.
    Invalid,
}

/// Opens the session token a request names (`Mcp-Session-Id`, else the legacy query parameter)
/// and puts the original id back in its place.
pub fn unseal_request<B>(sealer: Option<&Sealer>, request: &mut Request<B>) -> Unsealed {
    let Some(sealer) = sealer else {
        return Unsealed::Plain;
    };
    let Some(token) =
        session::session_id(request.headers(), request.uri().query()).map(str::to_owned)
    else {
        // A header that is not even text cannot be a token: refuse rather than route it.
        let unreadable = request
            .headers()
            .get(&SESSION_HEADER)
            .is_some_and(|v| v.to_str().is_err());
        return if unreadable {
            Unsealed::Invalid
        } else {
            Unsealed::Plain
        };
    };
    let Some(opened) = sealer.open(&token) else {
        return Unsealed::Invalid;
    };
    let restored = if request.headers().contains_key(&SESSION_HEADER) {
        HeaderValue::from_str(&opened.id)
            .ok()
            .map(|value| request.headers_mut().insert(&SESSION_HEADER, value))
            .is_some()
    } else {
        restore_query(request.uri_mut(), &opened.id)
    };
    if !restored {
        return Unsealed::Invalid;
    }
    Unsealed::Opened { token, opened }
}

fn restore_query(uri: &mut Uri, id: &str) -> bool {
    let Some(path_and_query) = uri.path_and_query().map(|p| p.as_str().to_owned()) else {
        return false;
    };
    let Some(rewritten) = with_session_id(&path_and_query, id) else {
        return false;
    };
    let mut parts = uri.clone().into_parts();
    match rewritten.parse() {
        Ok(path_and_query) => {
            parts.path_and_query = Some(path_and_query);
            match Uri::from_parts(parts) {
                Ok(new) => {
                    *uri = new;
                    true
                }
                Err(_) => false,
            }
        }
        Err(_) => false,
    }
}

/// `url` (a path with query, or a full URL) with the value of its first non-empty `sessionId` /
/// `session_id` query parameter replaced by `id`; `None` if it has none.
pub fn with_session_id(url: &str, id: &str) -> Option<String> {
    let (base, rest) = url.split_once('?')?;
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (rest, None),
    };
    let mut replaced = false;
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value))
                if !replaced && matches!(key, "sessionId" | "session_id") && !value.is_empty() =>
            {
                replaced = true;
                format!("{key}={id}")
            }
            _ => pair.to_string(),
        })
        .collect();
    if !replaced {
        return None;
    }
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealKey {
        SealKey([byte; 32])
    }

    #[test]
    fn round_trip_hides_the_owner() {
        let sealer = Sealer::new(&[key(1)]).unwrap();
        let token = sealer.seal("10.1.2.3:3000", "abc-123").unwrap();
        assert!(!token.contains("10.1.2.3") && !token.contains("abc"));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let opened = sealer.open(&token).unwrap();
        assert_eq!(opened.owner, "10.1.2.3:3000");
        assert_eq!(opened.id, "abc-123");
        // Random nonces: the same session sealed twice gives different tokens.
        assert_ne!(token, sealer.seal("10.1.2.3:3000", "abc-123").unwrap());
    }

    #[test]
    fn tampered_forged_and_foreign_tokens_do_not_open() {
        let sealer = Sealer::new(&[key(1)]).unwrap();
        let token = sealer.seal("10.1.2.3:3000", "abc").unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in [0, 1, 30, bytes.len() - 1] {
            bytes[i] ^= 1;
            assert!(
                sealer.open(&URL_SAFE_NO_PAD.encode(&bytes)).is_none(),
                "{i}"
            );
            bytes[i] ^= 1;
        }
        for junk in ["", "abc", "b1-3", "!!!!", &"A".repeat(5000)] {
            assert!(sealer.open(junk).is_none(), "{junk}");
        }
        let other = Sealer::new(&[key(2)]).unwrap();
        assert!(other.open(&token).is_none());
    }

    #[test]
    fn rotation_opens_with_any_key_and_seals_with_the_first() {
        let old = Sealer::new(&[key(1)]).unwrap();
        let rotated = Sealer::new(&[key(2), key(1)]).unwrap();
        let old_token = old.seal("a:1", "s").unwrap();
        assert_eq!(rotated.open(&old_token).unwrap().id, "s");
        let new_token = rotated.seal("a:1", "t").unwrap();
        assert!(old.open(&new_token).is_none());
        assert!(Sealer::new(&[key(2)]).unwrap().open(&new_token).is_some());
    }

    #[test]
    fn keys_parse_in_either_alphabet() {
        let standard = base64::engine::general_purpose::STANDARD.encode([0xfb; 32]);
        assert_eq!(SealKey::parse(&standard).unwrap(), SealKey([0xfb; 32]));
        let url = URL_SAFE_NO_PAD.encode([0xfb; 32]);
        assert_eq!(
            SealKey::parse(&format!(" {url}\n")).unwrap(),
            SealKey([0xfb; 32])
        );
        assert!(SealKey::parse("c2hvcnQ=").unwrap_err().contains("32"));
        assert!(SealKey::parse("not base64!").is_err());
    }

    #[test]
    fn requests_get_their_original_ids_back() {
        let sealer = Sealer::new(&[key(1)]).unwrap();
        let token = sealer.seal("b:1", "raw-id").unwrap();
        let mut request = Request::builder()
            .uri(format!("/messages?x=1&sessionId={token}"))
            .body(())
            .unwrap();
        let Unsealed::Opened { opened, .. } = unseal_request(Some(&sealer), &mut request) else {
            panic!("token should open");
        };
        assert_eq!(opened.owner, "b:1");
        assert_eq!(request.uri().to_string(), "/messages?x=1&sessionId=raw-id");

        let mut request = Request::builder()
            .uri("/mcp")
            .header(&SESSION_HEADER, &token)
            .body(())
            .unwrap();
        assert!(matches!(
            unseal_request(Some(&sealer), &mut request),
            Unsealed::Opened { .. }
        ));
        assert_eq!(request.headers()[&SESSION_HEADER], "raw-id");

        let mut forged = Request::builder()
            .uri("/mcp")
            .header(&SESSION_HEADER, "raw-id")
            .body(())
            .unwrap();
        assert!(matches!(
            unseal_request(Some(&sealer), &mut forged),
            Unsealed::Invalid
        ));
        assert!(matches!(unseal_request(None, &mut forged), Unsealed::Plain));
        let mut binary = Request::builder()
            .uri("/mcp")
            .header(
                &SESSION_HEADER,
                HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            )
            .body(())
            .unwrap();
        assert!(matches!(
            unseal_request(Some(&sealer), &mut binary),
            Unsealed::Invalid
        ));
        let mut none = Request::builder().uri("/mcp").body(()).unwrap();
        assert!(matches!(
            unseal_request(Some(&sealer), &mut none),
            Unsealed::Plain
        ));
    }

    #[test]
    fn session_id_replacement_in_urls() {
        assert_eq!(
            with_session_id("/messages?sessionId=abc", "T").as_deref(),
            Some("/messages?sessionId=T")
        );
        assert_eq!(
            with_session_id("http://h/messages/?a=b&session_id=x#f", "T").as_deref(),
            Some("http://h/messages/?a=b&session_id=T#f")
        );
        assert_eq!(with_session_id("/messages?other=1", "T"), None);
        assert_eq!(with_session_id("/messages", "T"), None);
    }
}
