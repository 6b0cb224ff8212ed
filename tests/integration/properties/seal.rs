//! Sealed session tokens: whatever a client sends opens to nothing or to what was sealed; what
//! was sealed opens to itself, under any of the keys it may have been sealed with.

use proptest::prelude::*;
use switchyard::mcp::seal::{SealKey, Sealer};

use super::cases;

fn sealer(seed: u8) -> Sealer {
    Sealer::new(&[SealKey([seed; 32])]).unwrap()
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn arbitrary_strings_do_not_open(token in any::<String>()) {
        prop_assert!(sealer(1).open(&token).is_none());
    }

    #[test]
    fn base64_shaped_strings_do_not_open(token in "[A-Za-z0-9_-]{0,400}") {
        prop_assert!(sealer(1).open(&token).is_none());
    }

    #[test]
    fn sealed_tokens_open_to_what_was_sealed(owner in any::<String>(), id in any::<String>(), flip in any::<usize>()) {
        let sealer = sealer(2);
        let Some(token) = sealer.seal(&owner, &id) else {
            // Only an owner longer than the length prefix can say is refused.
            prop_assert!(owner.len() > usize::from(u16::MAX));
            return Ok(());
        };
        let opened = sealer.open(&token);
        // Tokens past the length limit are refused before any work, as a client's would be.
        if let Some(opened) = opened {
            prop_assert_eq!(&opened.owner, &owner);
            prop_assert_eq!(&opened.id, &id);
            // Any one changed character breaks it.
            let mut bytes = token.into_bytes();
            let at = flip % bytes.len();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            if let Some(reopened) = sealer.open(&tampered) {
                // Base64's last character may carry unused bits; the message must be unchanged.
                prop_assert_eq!((reopened.owner, reopened.id), (owner.clone(), id.clone()));
            }
        }
        // Another key never opens it.
        prop_assert!(self::sealer(3).open(&sealer.seal(&owner, &id).unwrap()).is_none());
    }

    #[test]
    fn rotated_keys_open_old_tokens(owner in "[0-9.:]{1,21}", id in "[ -~]{0,64}") {
        let old = Sealer::new(&[SealKey([4; 32])]).unwrap();
        let rotated = Sealer::new(&[SealKey([5; 32]), SealKey([4; 32])]).unwrap();
        let token = old.seal(&owner, &id).unwrap();
        let opened = rotated.open(&token).unwrap();
        prop_assert_eq!((opened.owner, opened.id), (owner, id));
    }
}
