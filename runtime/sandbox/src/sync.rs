//! The message channel between the runtime and the container process it is setting up: a
//! SOCK_SEQPACKET socketpair, one message per step.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

/// One step of the setup handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Runtime -> child: ids are mapped and the process is in its cgroup; go on.
    Go,
    /// Child -> runtime: the mounts are ready; run the prestart and createRuntime hooks.
    RuntimeHooks,
    /// Runtime -> child: hooks done; the state JSON for the container's own hooks.
    HooksDone(String),
    /// Child -> runtime: set up and about to block on the exec fifo (or exec).
    Ready,
    /// Child -> runtime: setup failed.
    Error(Failure, String),
}

/// Why the child's setup failed, for callers that map it to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Anything else.
    Setup,
    /// The program was not found (exit code 127 by convention).
    NotFound,
    /// The program cannot be executed (exit code 126 by convention).
    NotExecutable,
}

const MAX_MESSAGE: usize = 64 * 1024;

impl Message {
    fn encode(&self) -> Vec<u8> {
        let (tag, payload) = match self {
            Message::Go => (b'g', ""),
            Message::RuntimeHooks => (b'h', ""),
            Message::HooksDone(state) => (b'd', state.as_str()),
            Message::Ready => (b'r', ""),
            Message::Error(Failure::Setup, text) => (b'e', text.as_str()),
            Message::Error(Failure::NotFound, text) => (b'n', text.as_str()),
            Message::Error(Failure::NotExecutable, text) => (b'x', text.as_str()),
        };
        let mut bytes = Vec::with_capacity(1 + payload.len());
        bytes.push(tag);
        bytes.extend_from_slice(&payload.as_bytes()[..payload.len().min(MAX_MESSAGE - 1)]);
        bytes
    }

    fn decode(bytes: &[u8]) -> io::Result<Self> {
        let payload = || String::from_utf8_lossy(&bytes[1..]).into_owned();
        Ok(match bytes.first() {
            Some(b'g') => Message::Go,
            Some(b'h') => Message::RuntimeHooks,
            Some(b'd') => Message::HooksDone(payload()),
            Some(b'r') => Message::Ready,
            Some(b'e') => Message::Error(Failure::Setup, payload()),
            Some(b'n') => Message::Error(Failure::NotFound, payload()),
            Some(b'x') => Message::Error(Failure::NotExecutable, payload()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected message on the setup channel",
                ));
            }
        })
    }
}

/// One end of the setup channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair (runtime end, child end). Both are close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Sends one message.
    pub fn send(&self, message: &Message) -> io::Result<()> {
        let bytes = message.encode();
        // SAFETY: bytes is a valid buffer for its length.
        let ret = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one message; `Ok(None)` when the other end is closed (its process died).
    pub fn recv(&self) -> io::Result<Option<Message>> {
        let mut buffer = vec![0u8; MAX_MESSAGE];
        loop {
            // SAFETY: buffer is valid for writes of its length.
            let ret = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if ret == 0 {
                return Ok(None);
            }
            return Message::decode(&buffer[..ret as usize]).map(Some);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof_is_none() {
        let (a, b) = Channel::pair().unwrap();
        for m in [
            Message::Go,
            Message::RuntimeHooks,
            Message::HooksDone("{\"id\":\"x\"}".into()),
            Message::Ready,
            Message::Error(Failure::Setup, "boom".into()),
            Message::Error(Failure::NotFound, "exec: \"x\": not found".into()),
        ] {
            a.send(&m).unwrap();
            assert_eq!(b.recv().unwrap(), Some(m));
        }
        drop(a);
        assert_eq!(b.recv().unwrap(), None);
    }
}
