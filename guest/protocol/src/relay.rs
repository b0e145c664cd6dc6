//! Relaying a process's byte streams over a session: both ends use it (the agent between the
//! workload's pipes or terminal and the connection, the host between its own stdio and the
//! connection).
//!
//! *Sources* are descriptors whose bytes go to the peer as one [`Stream`]; *sinks* receive a
//! stream's bytes from the peer. One [`Relay::poll`] round waits for the connection, the
//! sources, sinks that have bytes pending, and any extra descriptors of the caller (a
//! signalfd, say), moves the bytes, and returns the control messages and extra descriptors
//! that need the caller's attention.
//!
//! Flow control is per stream and by credit: a sender may have at most [`WINDOW`] bytes of a
//! stream unacknowledged; the receiver grants more ([`Message::Credit`]) as it writes them
//! to their destination. So neither side ever buffers more than a window per stream, and
//! neither ever stops reading the connection: a process that does not read its stdin, or a
//! host consumer that does not read the output, cannot hold up signals, resizes or the exit
//! status.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::ProtocolError;
use crate::connection::Connection;
use crate::frame::{Frame, MAX_DATA, Stream};
use crate::message::Message;

/// Bytes of one stream a sender may have in flight before the receiver grants more.
pub const WINDOW: usize = 256 << 10;
/// A receiver grants credit once it wrote this many bytes.
const GRANT_STEP: usize = WINDOW / 4;

/// What a poll round produced for the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A control message from the peer.
    Message(Message),
    /// The caller's extra descriptor with this index is readable.
    Extra(usize),
}

struct Source {
    fd: OwnedFd,
    stream: Stream,
    /// Bytes we may still send.
    credit: usize,
}

struct Sink {
    stream: Stream,
    fd: Option<OwnedFd>,
    pending: VecDeque<u8>,
    /// The peer closed the stream: close the descriptor once `pending` is written.
    eof: bool,
    /// Whether the peer's end of stream closes the descriptor (not for a terminal, whose
    /// master must stay open for the output).
    close_on_eof: bool,
    /// Write everything at once with blocking writes (a descriptor shared with other
    /// processes whose flags must not change).
    blocking: bool,
    /// Bytes written (or dropped) since the last credit grant.
    ungranted: usize,
}

/// The streams of one process.
#[derive(Default)]
pub struct Relay {
    sources: Vec<Source>,
    sinks: Vec<Sink>,
    /// Bytes of streams nobody takes, dropped but still to be granted back.
    dropped: Vec<(Stream, usize)>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("sources", &self.sources.len())
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn read_fd(fd: RawFd, buffer: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a valid, writable buffer of the given length.
    let got = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    if got < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(got as usize)
    }
}

fn write_fd(fd: RawFd, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: writing from a valid buffer of the given length.
    let wrote = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if wrote < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(wrote as usize)
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

impl Relay {
    /// A relay without streams.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forwards what `fd` yields to the peer as `stream` (end of file included). The
    /// descriptor may stay blocking: it is only read when poll says it is readable.
    pub fn source(&mut self, fd: OwnedFd, stream: Stream) {
        self.sources.push(Source {
            fd,
            stream,
            credit: WINDOW,
        });
    }

    /// Writes the peer's `stream` to `fd`, made non-blocking. With `close_on_eof`, the
    /// peer's end of stream closes `fd` (a pipe's reader then sees end of file).
    pub fn sink(&mut self, stream: Stream, fd: OwnedFd, close_on_eof: bool) -> std::io::Result<()> {
        set_nonblocking(fd.as_raw_fd())?;
        self.add_sink(stream, fd, close_on_eof, false);
        Ok(())
    }

    /// Writes the peer's `stream` to `fd` with blocking writes, leaving the descriptor's
    /// flags alone (for descriptors shared with other processes whose flags must not change).
    /// The peer's end of stream closes our copy of `fd`.
    pub fn blocking_sink(&mut self, stream: Stream, fd: OwnedFd) {
        self.add_sink(stream, fd, true, true);
    }

    fn add_sink(&mut self, stream: Stream, fd: OwnedFd, close_on_eof: bool, blocking: bool) {
        self.sinks.push(Sink {
            stream,
            fd: Some(fd),
            pending: VecDeque::new(),
            eof: false,
            close_on_eof,
            blocking,
            ungranted: 0,
        });
    }

    /// Whether any source is still open.
    pub fn sources_open(&self) -> bool {
        !self.sources.is_empty()
    }

    /// One round: waits up to `timeout` (None: until something happens) and returns what the
    /// caller must handle. `Err(Closed)` when the peer closed the connection.
    pub fn poll<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Connection<S>,
        extra: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<Vec<Event>, ProtocolError> {
        let mut events = Vec::new();
        // Frames decoded earlier but not handed out yet come first.
        if self.dispatch_buffered(conn, &mut events)? {
            self.grant(conn)?;
            return Ok(events);
        }
        let mut fds = Vec::with_capacity(1 + extra.len() + self.sources.len() + self.sinks.len());
        fds.push(pollfd(conn.stream().as_fd().as_raw_fd(), libc::POLLIN));
        fds.extend(extra.iter().map(|fd| pollfd(fd.as_raw_fd(), libc::POLLIN)));
        fds.extend(self.sources.iter().map(|source| {
            // Without credit the peer cannot take more: leave the bytes where they are.
            let fd = if source.credit > 0 {
                source.fd.as_raw_fd()
            } else {
                -1
            };
            pollfd(fd, libc::POLLIN)
        }));
        fds.extend(self.sinks.iter().map(|sink| {
            let fd = match &sink.fd {
                Some(fd) if !sink.pending.is_empty() => fd.as_raw_fd(),
                _ => -1,
            };
            pollfd(fd, libc::POLLOUT)
        }));
        let millis = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                return Ok(events);
            }
            return Err(ProtocolError::Io(error));
        }
        let sources_at = 1 + extra.len();
        let sinks_at = sources_at + self.sources.len();
        for (index, sink) in self.sinks.iter_mut().enumerate() {
            if fds[sinks_at + index].revents != 0 {
                sink.flush();
            }
        }
        for (index, pollfd) in fds[1..sources_at].iter().enumerate() {
            if pollfd.revents != 0 {
                events.push(Event::Extra(index));
            }
        }
        let ready_sources: Vec<usize> = (0..self.sources.len())
            .filter(|i| fds[sources_at + i].revents != 0)
            .collect();
        self.pump_sources(conn, &ready_sources)?;
        if fds[0].revents != 0 {
            let stopped = match conn.read_ready()? {
                Some(frame) => self.dispatch(frame, &mut events)?,
                None => false,
            };
            if !stopped {
                self.dispatch_buffered(conn, &mut events)?;
            }
        }
        self.grant(conn)?;
        Ok(events)
    }

    /// Reads once from each of the given sources (within their credit) and forwards the
    /// bytes, or their end.
    fn pump_sources<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Connection<S>,
        ready: &[usize],
    ) -> Result<(), ProtocolError> {
        let mut buffer = vec![0u8; MAX_DATA];
        let mut closed = Vec::new();
        for &index in ready {
            let source = &mut self.sources[index];
            let room = source.credit.min(MAX_DATA);
            if room == 0 {
                continue;
            }
            match read_fd(source.fd.as_raw_fd(), &mut buffer[..room]) {
                Ok(0) => closed.push(index),
                Ok(got) => {
                    source.credit -= got;
                    conn.send_data(source.stream, &buffer[..got])?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) => {}
                // EIO: a terminal whose other side is closed. Anything else ends it too.
                Err(_) => closed.push(index),
            }
        }
        for index in closed.into_iter().rev() {
            let source = self.sources.remove(index);
            conn.send_eof(source.stream)?;
        }
        Ok(())
    }

    /// Dispatches buffered frames up to and including the first control message (what
    /// follows a message may be for the caller to read itself, e.g. an archive); true when
    /// it stopped at one.
    fn dispatch_buffered<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Connection<S>,
        events: &mut Vec<Event>,
    ) -> Result<bool, ProtocolError> {
        while let Some(frame) = conn.buffered_frame()? {
            if self.dispatch(frame, events)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Handles one frame; true when it was a message for the caller.
    fn dispatch(&mut self, frame: Frame, events: &mut Vec<Event>) -> Result<bool, ProtocolError> {
        match frame {
            Frame::Message(Message::Credit { stream, bytes }) => {
                if let Some(source) = self.sources.iter_mut().find(|s| s.stream == stream) {
                    source.credit = source.credit.saturating_add(bytes as usize).min(WINDOW);
                }
            }
            Frame::Message(message) => {
                events.push(Event::Message(message));
                return Ok(true);
            }
            Frame::Data(stream, bytes) => {
                let Some(sink) = self.sinks.iter_mut().find(|s| s.stream == stream) else {
                    // Nobody takes this stream (stdin of a process without one): drop it,
                    // but let the peer go on.
                    self.dropped.push((stream, bytes.len()));
                    return Ok(false);
                };
                if bytes.is_empty() {
                    sink.eof = true;
                } else if sink.fd.is_none() {
                    sink.ungranted += bytes.len();
                } else {
                    if sink.pending.len() + bytes.len() > WINDOW {
                        return Err(ProtocolError::Unexpected {
                            expected: format!("at most {WINDOW} bytes of {stream:?} in flight"),
                            got: format!("{} bytes", sink.pending.len() + bytes.len()),
                        });
                    }
                    sink.pending.extend(bytes);
                }
                sink.flush();
            }
        }
        Ok(false)
    }

    /// Tells the peer about the bytes written since the last grant.
    fn grant<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Result<(), ProtocolError> {
        for sink in &mut self.sinks {
            if sink.ungranted >= GRANT_STEP {
                conn.send(&Message::Credit {
                    stream: sink.stream,
                    bytes: sink.ungranted as u32,
                })?;
                sink.ungranted = 0;
            }
        }
        for (stream, bytes) in std::mem::take(&mut self.dropped) {
            if bytes > 0 {
                conn.send(&Message::Credit {
                    stream,
                    bytes: bytes as u32,
                })?;
            }
        }
        Ok(())
    }

    /// After the process ended: forwards what its sources still hold until each reaches end
    /// of file or `limit` passes (a leftover background process may keep a pipe open), then
    /// closes them towards the peer. Messages arriving meanwhile are returned.
    pub fn drain<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Connection<S>,
        limit: Duration,
    ) -> Result<Vec<Message>, ProtocolError> {
        let deadline = Instant::now() + limit;
        let mut messages = Vec::new();
        while !self.sources.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            for event in self.poll(conn, &[], Some(left))? {
                if let Event::Message(message) = event {
                    messages.push(message);
                }
            }
        }
        for source in std::mem::take(&mut self.sources) {
            conn.send_eof(source.stream)?;
        }
        Ok(messages)
    }

    /// Writes everything the sinks still hold, waiting for slow readers up to `limit`.
    pub fn flush(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for sink in &mut self.sinks {
            while !sink.pending.is_empty() && sink.fd.is_some() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                if let Some(fd) = &sink.fd {
                    let mut out = pollfd(fd.as_raw_fd(), libc::POLLOUT);
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut out, 1, left.as_millis().max(1) as i32) };
                }
                sink.flush();
            }
        }
    }
}

impl Sink {
    /// Writes what it can without blocking (a blocking sink: everything); closes the
    /// descriptor at the peer's end of stream; drops everything when the reader is gone.
    fn flush(&mut self) {
        let Some(fd) = &self.fd else {
            self.ungranted += self.pending.len();
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match write_fd(fd.as_raw_fd(), front) {
                Ok(0) => break,
                Ok(wrote) => {
                    self.pending.drain(..wrote);
                    self.ungranted += wrote;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !self.blocking => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Someone else made the shared descriptor non-blocking: wait for room.
                    let _ = crate::connection::wait_writable(fd.as_raw_fd());
                }
                // EPIPE: the reader is gone; what it would have read is of no use any more.
                Err(_) => {
                    self.fd = None;
                    self.ungranted += self.pending.len();
                    self.pending.clear();
                    return;
                }
            }
        }
        if self.eof && self.close_on_eof {
            self.fd = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors that we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: fresh descriptors from pipe2.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn streams_flow_both_ways_and_close() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(ours);
        let mut peer = Connection::new(theirs);
        let mut relay = Relay::new();
        let (out_read, out_write) = pipe();
        let (in_read, in_write) = pipe();
        relay.source(out_read, Stream::Stdout);
        relay.sink(Stream::Stdin, in_write, true).unwrap();

        std::fs::File::from(out_write.try_clone().unwrap())
            .write_all(b"to the peer")
            .unwrap();
        drop(out_write);
        peer.send_data(Stream::Stdin, b"to the process").unwrap();
        peer.send_eof(Stream::Stdin).unwrap();
        peer.send(&Message::Start).unwrap();

        let mut messages = Vec::new();
        while relay.sources_open() || messages.is_empty() {
            for event in relay
                .poll(&mut conn, &[], Some(Duration::from_secs(5)))
                .unwrap()
            {
                if let Event::Message(message) = event {
                    messages.push(message);
                }
            }
        }
        assert_eq!(messages, [Message::Start]);
        let mut input = String::new();
        std::fs::File::from(in_read)
            .read_to_string(&mut input)
            .unwrap();
        assert_eq!(input, "to the process", "end of stream closed the pipe");
        let timeout = Some(Duration::from_secs(5));
        assert_eq!(
            peer.recv(timeout).unwrap(),
            Frame::Data(Stream::Stdout, b"to the peer".to_vec())
        );
        assert_eq!(
            peer.recv(timeout).unwrap(),
            Frame::Data(Stream::Stdout, Vec::new())
        );
    }

    #[test]
    fn a_process_that_does_not_read_holds_up_its_stream_but_not_the_messages() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(ours);
        let mut peer_conn = Connection::new(theirs);
        let mut relay = Relay::new();
        let (_in_read, in_write) = pipe();
        relay.sink(Stream::Stdin, in_write, true).unwrap();
        // The peer relays a source that never runs dry into our stdin sink, which nobody
        // reads, then sends a signal.
        let mut peer = Relay::new();
        let (flood_read, flood_write) = pipe();
        peer.source(flood_read, Stream::Stdin);
        let flooder = std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 16];
            let mut out = std::fs::File::from(flood_write);
            while out.write_all(&chunk).is_ok() {}
        });
        for _ in 0..50 {
            peer.poll(&mut peer_conn, &[], Some(Duration::from_millis(5)))
                .unwrap();
            relay
                .poll(&mut conn, &[], Some(Duration::from_millis(5)))
                .unwrap();
        }
        let buffered: usize = relay.sinks.iter().map(|s| s.pending.len()).sum();
        assert!(buffered <= WINDOW, "{buffered}");
        peer_conn.send(&Message::Start).unwrap();
        let mut got_start = false;
        for _ in 0..50 {
            peer.poll(&mut peer_conn, &[], Some(Duration::from_millis(5)))
                .unwrap();
            let events = relay
                .poll(&mut conn, &[], Some(Duration::from_millis(5)))
                .unwrap();
            if events.contains(&Event::Message(Message::Start)) {
                got_start = true;
                break;
            }
        }
        assert!(
            got_start,
            "the message overtook nothing but was not stuck either"
        );
        drop(peer);
        drop(_in_read);
        drop(relay);
        drop(conn);
        flooder.join().unwrap();
    }

    #[test]
    fn data_beyond_the_window_is_a_protocol_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(ours);
        let mut peer = Connection::new(theirs);
        let mut relay = Relay::new();
        let (_in_read, in_write) = pipe();
        relay.sink(Stream::Stdin, in_write, true).unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; MAX_DATA];
            for _ in 0..(2 * WINDOW / MAX_DATA + 20) {
                if peer.send_data(Stream::Stdin, &chunk).is_err() {
                    break;
                }
            }
        });
        let mut error = None;
        for _ in 0..500 {
            match relay.poll(&mut conn, &[], Some(Duration::from_millis(10))) {
                Ok(_) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        assert!(
            matches!(error, Some(ProtocolError::Unexpected { .. })),
            "{error:?}"
        );
        drop(conn);
        writer.join().unwrap();
    }

    #[test]
    fn drain_forwards_leftovers_and_gives_up_on_open_pipes() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(ours);
        let mut peer = Connection::new(theirs);
        let mut relay = Relay::new();
        let (out_read, out_write) = pipe();
        relay.source(out_read, Stream::Stderr);
        std::fs::File::from(out_write.try_clone().unwrap())
            .write_all(b"last words")
            .unwrap();
        // `out_write` stays open, like a pipe held by a leftover process.
        let started = Instant::now();
        relay.drain(&mut conn, Duration::from_millis(200)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        let timeout = Some(Duration::from_secs(5));
        assert_eq!(
            peer.recv(timeout).unwrap(),
            Frame::Data(Stream::Stderr, b"last words".to_vec())
        );
        assert_eq!(
            peer.recv(timeout).unwrap(),
            Frame::Data(Stream::Stderr, Vec::new())
        );
        drop(out_write);
    }
}
