//! Request ids: the client's own `X-Request-Id` when it is a plain token of at most 64 bytes,
//! otherwise a fresh one (16 hex digits from the thread's fast RNG). The backend gets it, the
//! client gets it back, and the access log and error bodies carry it, so one request can be
//! followed through every hop. It lives on the stack: the happy path allocates only the header
//! values.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::upstream::h1::codec::AddedFields;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    bytes: [u8; MAX_LEN],
    len: u8,
    sent: Sent,
}

/// What the client sent as its request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Nothing,
    /// One acceptable id: this one.
    ThisId,
    /// Something this id replaces.
    Other,
}

impl RequestId {
    /// The request's id: the client's if acceptable, else a new one.
    pub fn of(headers: &HeaderMap) -> RequestId {
        let mut sent = headers.get_all(&X_REQUEST_ID).iter();
        match (sent.next(), sent.next()) {
            (None, _) => RequestId::generate(Sent::Nothing),
            (Some(value), None) => RequestId::from_client(value.as_bytes())
                .unwrap_or_else(|| RequestId::generate(Sent::Other)),
            _ => RequestId::generate(Sent::Other),
        }
    }

    /// Gives the backend the id: the client's stays where it is; a new one goes with the
    /// proxy's added fields, in place of whatever else the client sent.
    pub fn stamp(&self, headers: &mut HeaderMap, added: &mut AddedFields) {
        match self.sent {
            Sent::ThisId => return,
            Sent::Other => {
                headers.remove(&X_REQUEST_ID);
            }
            Sent::Nothing => {}
        }
        added.push(&X_REQUEST_ID, self.as_bytes());
    }

    /// Only characters that are safe unquoted in logs, JSON and headers (UUIDs, ULIDs, trace
    /// ids and base64 all qualify).
    fn from_client(bytes: &[u8]) -> Option<RequestId> {
        let plain = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b);
        if bytes.is_empty() || bytes.len() > MAX_LEN || !bytes.iter().all(plain) {
            return None;
        }
        let mut id = RequestId {
            bytes: [0; MAX_LEN],
            len: bytes.len() as u8,
            sent: Sent::ThisId,
        };
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(id)
    }

    fn generate(sent: Sent) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = RequestId {
            bytes: [0; MAX_LEN],
            len: 16,
            sent,
        };
        let random = fastrand::u64(..);
        for (i, byte) in id.bytes[..16].iter_mut().enumerate() {
            *byte = HEX[((random >> (60 - 4 * i)) & 0xf) as usize];
        }
        id
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The id's bytes, for the wire: the request path needs no `str` (whose check would run
    /// again on every use).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id, and every `X-Request-Id` value the backend gets.
    fn assigned(sent: &[&'static str]) -> (RequestId, Vec<String>) {
        let mut headers = HeaderMap::new();
        for value in sent {
            headers.append(&X_REQUEST_ID, HeaderValue::from_static(value));
        }
        let id = RequestId::of(&headers);
        let mut added = AddedFields::default();
        id.stamp(&mut headers, &mut added);
        let mut seen: Vec<String> = headers
            .get_all(&X_REQUEST_ID)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        seen.extend(
            added
                .get("x-request-id")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        );
        (id, seen)
    }

    fn is_generated(id: &RequestId) -> bool {
        id.as_str().len() == 16 && id.as_str().bytes().all(|b| b.is_ascii_hexdigit())
    }

    #[test]
    fn keeps_a_plain_client_id() {
        let (id, seen) = assigned(&["0b7c-41d2.x:y"]);
        assert_eq!(id.as_str(), "0b7c-41d2.x:y");
        assert_eq!(seen, ["0b7c-41d2.x:y"]);
    }

    #[test]
    fn replaces_what_could_confuse_a_log_or_a_header() {
        let long: &'static str = Box::leak("a".repeat(65).into_boxed_str());
        for sent in [
            &[""][..],
            &["two words"],
            &["quo\"te"],
            &[long],
            &["a", "b"],
        ] {
            let (id, seen) = assigned(sent);
            assert!(is_generated(&id), "{sent:?} kept as {id:?}");
            assert_eq!(seen, [id.as_str()], "one id, the new one");
        }
    }

    #[test]
    fn a_request_without_an_id_gets_one() {
        let (id, seen) = assigned(&[]);
        assert!(is_generated(&id));
        assert_eq!(seen, [id.as_str()]);
    }

    #[test]
    fn generated_ids_differ() {
        let (a, _) = assigned(&[]);
        let (b, _) = assigned(&[]);
        assert!(is_generated(&a) && is_generated(&b));
        assert_ne!(a, b);
    }
}
