//! The hand-over's messages on the upgrade socket: one JSON line each, the listening sockets
//! travelling as `SCM_RIGHTS` ancillary data with the line that describes them.
//!
//! The exchange, old process (O) and new process (N):
//!
//! 1. N connects; each side checks the other runs as the same user (`SO_PEERCRED`);
//! 2. O sends [`Message::Offer`] with a duplicate of every listening socket. O keeps accepting;
//! 3. N starts serving on them and sends [`Message::Ready`]: it is accepting;
//! 4. O answers [`Message::SteppingDown`], stops accepting and drains.
//!
//! Whichever side goes away before step 4, O keeps serving: N's copies of the sockets close with
//! N, and the sockets themselves stay open in O.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The most descriptors one message carries (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_SOCKETS: usize = 250;
/// A message longer than this is not one of ours.
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum Message {
    /// O → N: these sockets, in this order, come with this message.
    Offer { pid: u32, sockets: Vec<SocketInfo> },
    /// O → N: no hand-over now (one is already under way, or the sockets cannot be sent).
    Refused { reason: String },
    /// N → O: N accepts on every socket it took.
    Ready { pid: u32 },
    /// O → N: O has stopped accepting and drains.
    SteppingDown,
}

/// What the receiver needs to match a socket against its own config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub configured: SocketAddr,
    pub local: SocketAddr,
    pub admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the other process closed the upgrade socket")]
    Closed,
    #[error("unreadable message on the upgrade socket: {0}")]
    Garbled(String),
}

/// Sends `message` with `fds` attached to its first byte.
pub async fn send(
    stream: &UnixStream,
    message: &Message,
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(message).map_err(|e| WireError::Garbled(e.to_string()))?;
    line.push(b'\n');
    let mut sent = 0;
    while sent < line.len() {
        // The descriptors ride on the first write only; a stream socket may take the line in
        // several.
        let attach = if sent == 0 { fds } else { &[] };
        let written = stream
            .async_io(Interest::WRITABLE, || {
                send_once(stream, &line[sent..], attach)
            })
            .await?;
        sent += written;
    }
    Ok(())
}

fn send_once(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many sockets for one message"));
    }
    Ok(rustix::net::sendmsg(
        stream,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Receives one message and the descriptors that came with it (close-on-exec, owned here).
pub async fn receive(stream: &UnixStream) -> Result<(Message, Vec<OwnedFd>), WireError> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let read = stream
            .async_io(Interest::READABLE, || {
                receive_once(stream, &mut chunk, &mut fds)
            })
            .await?;
        if read == 0 {
            return Err(WireError::Closed);
        }
        line.extend_from_slice(&chunk[..read]);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            if end + 1 != line.len() {
                return Err(WireError::Garbled("bytes after the message".into()));
            }
            let message = serde_json::from_slice(&line[..end])
                .map_err(|e| WireError::Garbled(e.to_string()))?;
            return Ok((message, fds));
        }
        if line.len() > MAX_MESSAGE {
            return Err(WireError::Garbled("message too long".into()));
        }
    }
}

fn receive_once(
    stream: &UnixStream,
    chunk: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(chunk)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        // The kernel closed the descriptors that did not fit: the set is incomplete.
        return Err(std::io::Error::other(format!(
            "more than {MAX_SOCKETS} sockets offered"
        )));
    }
    Ok(received.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn a_listening_socket_crosses_and_still_accepts() {
        let (old, new) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let offer = Message::Offer {
            pid: 1,
            sockets: vec![SocketInfo {
                configured: "127.0.0.1:0".parse().unwrap(),
                local,
                admin: false,
            }],
        };
        send(&old, &offer, &[listener.as_fd()]).await.unwrap();
        let (message, fds) = receive(&new).await.unwrap();
        assert_eq!(message, offer);
        assert_eq!(fds.len(), 1);
        // A connection queued before the hand-over is accepted through the received copy.
        let client = std::net::TcpStream::connect(local).unwrap();
        drop(listener);
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), local);
        let (_, peer) = received.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn garbage_and_a_closed_peer_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        a.try_write(b"{\"message\":\"nonsense\"}\n").unwrap();
        assert!(matches!(receive(&b).await, Err(WireError::Garbled(_))));
        drop(a);
        assert!(matches!(receive(&b).await, Err(WireError::Closed)));
    }
}
