//! A framed connection with deadlines: send messages and data, receive frames without ever
//! waiting longer than asked.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use crate::ProtocolError;
use crate::frame::{self, Frame, FrameReader, Stream};
use crate::message::{Hello, Message};

/// A session's connection (a vsock or Unix stream socket, blocking).
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    reader: FrameReader,
}

impl<S: Read + Write + AsFd> Connection<S> {
    /// Wraps a connected, blocking stream.
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            reader: FrameReader::new(),
        }
    }

    /// The underlying stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Sends a message.
    pub fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        frame::write_message(&mut self.stream, message)
    }

    /// Sends stream bytes (chunked; nothing for empty `data`).
    pub fn send_data(&mut self, stream: Stream, data: &[u8]) -> Result<(), ProtocolError> {
        frame::write_data(&mut self.stream, stream, data)
    }

    /// Closes `stream` towards the peer.
    pub fn send_eof(&mut self, stream: Stream) -> Result<(), ProtocolError> {
        frame::write_eof(&mut self.stream, stream)
    }

    /// A frame that is already decoded or decodable from buffered bytes, without reading.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        self.reader.next_frame()
    }

    /// Reads once from the stream (call when poll says it is readable), then returns the next
    /// complete frame if there is one. `Err(Closed)` when the peer closed the connection.
    pub fn read_ready(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(frame) = self.reader.next_frame()? {
            return Ok(Some(frame));
        }
        match self.reader.fill(&mut self.stream) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
        match self.reader.next_frame()? {
            Some(frame) => Ok(Some(frame)),
            None if self.reader.is_eof() => Err(ProtocolError::Closed),
            None => Ok(None),
        }
    }

    /// The next frame, waiting at most `timeout` (None: forever).
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Frame, ProtocolError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                return Ok(frame);
            }
            if self.reader.is_eof() {
                return Err(ProtocolError::Closed);
            }
            let remaining = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ProtocolError::Timeout(timeout.unwrap_or_default()));
                    }
                    Some(left)
                }
                None => None,
            };
            if wait_readable(self.stream.as_fd().as_raw_fd(), remaining)?
                && let Some(frame) = self.read_ready().or_else(|e| match e {
                    ProtocolError::Closed => Ok(None),
                    other => Err(other),
                })?
            {
                return Ok(frame);
            }
        }
    }

    /// The next message, skipping nothing: a data frame here is a protocol error.
    pub fn recv_message(&mut self, timeout: Option<Duration>) -> Result<Message, ProtocolError> {
        match self.recv(timeout)? {
            Frame::Message(message) => Ok(message),
            Frame::Data(stream, _) => Err(ProtocolError::Unexpected {
                expected: "a message".into(),
                got: format!("{stream:?} data"),
            }),
        }
    }

    /// Sends our hello and checks the peer's (which must come within `timeout`).
    pub fn handshake(&mut self, software: &str, timeout: Duration) -> Result<Hello, ProtocolError> {
        self.greet(software)?;
        self.expect_hello(timeout)
    }

    /// Sends our hello without waiting for the peer's: a side that knows its next message
    /// sends it right behind (pipelining saves a round trip), then calls
    /// [`Connection::expect_hello`]. A peer of another version refuses our hello before it
    /// reads further.
    pub fn greet(&mut self, software: &str) -> Result<(), ProtocolError> {
        self.send(&Message::Hello(Hello::ours(software)))
    }

    /// Opens a session from the host's side: our hello with `request` right behind it, then
    /// the peer's hello (within `timeout`). The agent reads the request as soon as it has
    /// checked our hello, so the session costs no round trip before the request.
    pub fn open(
        &mut self,
        software: &str,
        request: &Message,
        timeout: Duration,
    ) -> Result<Hello, ProtocolError> {
        self.greet(software)?;
        self.send(request)?;
        self.expect_hello(timeout)
    }

    /// Checks the peer's hello, which must come within `timeout`.
    pub fn expect_hello(&mut self, timeout: Duration) -> Result<Hello, ProtocolError> {
        match self.recv_message(Some(timeout))? {
            Message::Hello(hello) => {
                hello.check()?;
                Ok(hello)
            }
            other => Err(ProtocolError::Unexpected {
                expected: "hello".into(),
                got: other.name().into(),
            }),
        }
    }
}

/// Waits until `fd` can take more bytes (or is hung up).
pub fn wait_writable(fd: i32) -> std::io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut pollfd, 1, -1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is readable (or hung up); false when `timeout` passed first.
pub fn wait_readable(fd: i32, timeout: Option<Duration>) -> Result<bool, ProtocolError> {
    let millis = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(ProtocolError::Io(error));
    }
    Ok(ready > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ExitStatus;
    use std::os::unix::net::UnixStream;

    #[test]
    fn handshake_and_messages_cross_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut conn = Connection::new(b);
            let hello = conn.handshake("peer", Duration::from_secs(5)).unwrap();
            assert_eq!(hello.software, "host");
            conn.send_data(Stream::Stdout, b"out").unwrap();
            conn.send(&Message::Exit(ExitStatus {
                code: 0,
                signal: None,
            }))
            .unwrap();
        });
        let mut conn = Connection::new(a);
        assert_eq!(
            conn.handshake("host", Duration::from_secs(5))
                .unwrap()
                .software,
            "peer"
        );
        assert_eq!(
            conn.recv(Some(Duration::from_secs(5))).unwrap(),
            Frame::Data(Stream::Stdout, b"out".to_vec())
        );
        assert!(matches!(
            conn.recv_message(Some(Duration::from_secs(5))).unwrap(),
            Message::Exit(_)
        ));
        peer.join().unwrap();
        assert!(matches!(
            conn.recv(Some(Duration::from_secs(5))),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn a_pipelined_greeting_reaches_a_peer_that_handshakes() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(a);
        let peer = std::thread::spawn(move || {
            let mut conn = Connection::new(b);
            let hello = conn.handshake("agent", Duration::from_secs(5)).unwrap();
            let next = conn.recv_message(Some(Duration::from_secs(5))).unwrap();
            (hello.software, next)
        });
        // The host greets and sends its request before hearing from the peer.
        let hello = conn
            .open("host", &Message::Start, Duration::from_secs(5))
            .unwrap();
        assert_eq!(hello.software, "agent");
        assert_eq!(peer.join().unwrap(), ("host".to_string(), Message::Start));
    }

    #[test]
    fn a_silent_peer_times_out_instead_of_hanging() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(a);
        let started = Instant::now();
        let error = conn.recv(Some(Duration::from_millis(100))).unwrap_err();
        assert!(matches!(error, ProtocolError::Timeout(_)), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn a_peer_stuck_mid_frame_times_out_too() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[100, 0, 0, 0, 1, b'{']).unwrap();
        let mut conn = Connection::new(a);
        let error = conn.recv(Some(Duration::from_millis(100))).unwrap_err();
        assert!(matches!(error, ProtocolError::Timeout(_)), "{error}");
        drop(b);
        let error = conn.recv(Some(Duration::from_millis(100))).unwrap_err();
        assert!(matches!(error, ProtocolError::Truncated { .. }), "{error}");
    }

    #[test]
    fn version_mismatch_fails_the_handshake() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut peer = Connection::new(b);
        peer.send(&Message::Hello(Hello {
            protocol: crate::PROTOCOL_VERSION + 1,
            software: "twinbox-agent 2.0".into(),
        }))
        .unwrap();
        let mut conn = Connection::new(a);
        let error = conn.handshake("host", Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(error, ProtocolError::VersionMismatch { .. }),
            "{error}"
        );
    }
}
