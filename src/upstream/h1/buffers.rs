//! Read buffers, lent per read: a connection takes one when bytes are ready and gives it back as
//! soon as nothing is left in it, so an idle connection (a parked one, or an SSE stream between
//! events) holds none. Data leaves as `Bytes` split off the buffer, so the storage behind a
//! returned buffer is reused once those `Bytes` are dropped (`BytesMut::reserve` reclaims it).

use std::sync::{Mutex, PoisonError};

use bytes::BytesMut;

/// What one read asks for.
pub const READ_SIZE: usize = 16 * 1024;
/// Buffers kept for reuse, process-wide; more are freed.
const KEPT: usize = 64;
/// A buffer left with less room than this is not worth keeping.
const MIN_KEPT: usize = 1024;
/// Bytes left over from a read (a partial chunk-size line, say) are moved out of a big buffer
/// into one of their own when there are at most this many, so the big one can go back.
const SMALL_REST: usize = 512;

static SPARE: Mutex<Vec<BytesMut>> = Mutex::new(Vec::new());

/// Makes room for one read in `buf`, from a spare buffer when it has no storage.
pub fn ready_for_read(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        let spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner).pop();
        *buf = spare.unwrap_or_default();
    }
    buf.reserve(READ_SIZE);
}

/// Gives `buf`'s storage back when it holds nothing; moves a small rest out of a big buffer.
pub fn release(buf: &mut BytesMut) {
    if buf.is_empty() {
        let spare = std::mem::take(buf);
        if spare.capacity() >= MIN_KEPT {
            let mut kept = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() < KEPT {
                kept.push(spare);
            }
        }
    } else if buf.len() <= SMALL_REST && buf.capacity() > SMALL_REST * 4 {
        let rest = BytesMut::from(&buf[..]);
        buf.clear();
        release(buf);
        *buf = rest;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn an_emptied_buffer_is_given_back() {
        let mut buf = BytesMut::new();
        ready_for_read(&mut buf);
        assert!(buf.capacity() >= READ_SIZE);
        buf.extend_from_slice(b"abc");
        let data = buf.split_to(2).freeze();
        release(&mut buf);
        assert_eq!(&buf[..], b"c", "a small rest is moved out");
        assert!(buf.capacity() < READ_SIZE);
        buf.clear();
        release(&mut buf);
        assert_eq!(buf.capacity(), 0, "nothing is held once empty");
        assert_eq!(&data[..], b"ab");
    }
}
