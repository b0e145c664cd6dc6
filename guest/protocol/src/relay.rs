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
//! Sinks that the relay owns are non-blocking with a bounded buffer: while a sink holds more
//! than [`SINK_LIMIT`] unwritten bytes, the connection is not read (the peer then blocks on
//! its own writes), so a process that does not read its stdin cannot make the other side
//! buffer without bound, nor deadlock the relay while it writes its output.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::ProtocolError;
use crate::connection::Connection;
use crate::frame::{Frame, MAX_DATA, Stream};
use crate::message::Message;

/// Bytes a sink may hold before the relay stops reading the connection.
pub const SINK_LIMIT: usize = 1 << 20;

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
}

/// The streams of one process.
#[derive(Default)]
pub struct Relay {
    sources: Vec<Source>,
    sinks: Vec<Sink>,
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

impl Relay {
    /// A relay without streams.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forwards what `fd` yields to the peer as `stream` (end of file included). The
    /// descriptor may stay blocking: it is only read when poll says it is readable.
    pub fn source(&mut self, fd: OwnedFd, stream: Stream) {
        self.sources.push(Source { fd, stream });
    }

    /// Writes the peer's `stream` to `fd`, made non-blocking. With `close_on_eof`, the
    /// peer's end of stream closes `fd` (a pipe's reader then sees end of file).
    pub fn sink(&mut self, stream: Stream, fd: OwnedFd, close_on_eof: bool) -> std::io::Result<()> {
        set_nonblocking(fd.as_raw_fd())?;
        self.sinks.push(Sink {
            stream,
            fd: Some(fd),
            pending: VecDeque::new(),
            eof: false,
            close_on_eof,
        });
        Ok(())
    }

    /// Whether any source is still open.
    pub fn sources_open(&self) -> bool {
        !self.sources.is_empty()
    }

    fn backlogged(&self) -> bool {
        self.sinks.iter().any(|s| s.pending.len() > SINK_LIMIT)
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
        // Frames decoded earlier but not handed out yet.
        if !self.backlogged() {
            while let Some(frame) = conn.buffered_frame()? {
                self.dispatch(frame, &mut events);
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
        let read_conn = !self.backlogged();
        let mut fds = Vec::with_capacity(1 + extra.len() + self.sources.len() + self.sinks.len());
        fds.push(libc::pollfd {
            fd: if read_conn {
                conn.stream().as_fd().as_raw_fd()
            } else {
                -1
            },
            events: libc::POLLIN,
            revents: 0,
        });
        for fd in extra {
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for source in &self.sources {
            fds.push(libc::pollfd {
                fd: source.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for sink in &self.sinks {
            fds.push(libc::pollfd {
                fd: match &sink.fd {
                    Some(fd) if !sink.pending.is_empty() => fd.as_raw_fd(),
                    _ => -1,
                },
                events: libc::POLLOUT,
                revents: 0,
            });
        }
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
        let sinks_at = 1 + extra.len() + self.sources.len();
        for (index, sink) in self.sinks.iter_mut().enumerate() {
            if fds[sinks_at + index].revents != 0 {
                sink.flush();
            }
        }
        for (index, pollfd) in fds[1..1 + extra.len()].iter().enumerate() {
            if pollfd.revents != 0 {
                events.push(Event::Extra(index));
            }
        }
        let ready_sources: Vec<usize> = (0..self.sources.len())
            .filter(|i| fds[1 + extra.len() + i].revents != 0)
            .collect();
        self.pump_sources(conn, &ready_sources)?;
        if fds[0].revents != 0 {
            if let Some(frame) = conn.read_ready()? {
                self.dispatch(frame, &mut events);
            }
            while !self.backlogged() {
                match conn.buffered_frame()? {
                    Some(frame) => self.dispatch(frame, &mut events),
                    None => break,
                }
            }
        }
        Ok(events)
    }

    /// Reads once from each of the given sources and forwards the bytes (or their end).
    fn pump_sources<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Connection<S>,
        ready: &[usize],
    ) -> Result<(), ProtocolError> {
        let mut buffer = vec![0u8; MAX_DATA];
        let mut closed = Vec::new();
        for &index in ready {
            let source = &self.sources[index];
            match read_fd(source.fd.as_raw_fd(), &mut buffer) {
                Ok(0) => closed.push(index),
                Ok(got) => conn.send_data(source.stream, &buffer[..got])?,
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

    fn dispatch(&mut self, frame: Frame, events: &mut Vec<Event>) {
        match frame {
            Frame::Message(message) => events.push(Event::Message(message)),
            Frame::Data(stream, bytes) => {
                // Data for a stream nobody takes (stdin of a process without one) is dropped.
                if let Some(sink) = self.sinks.iter_mut().find(|s| s.stream == stream) {
                    if bytes.is_empty() {
                        sink.eof = true;
                    } else if sink.fd.is_some() {
                        sink.pending.extend(bytes);
                    }
                    sink.flush();
                }
            }
        }
    }

    /// After the process ended: forwards what its sources still hold until each reaches end
    /// of file or `limit` passes (a leftover background process may keep a pipe open), then
    /// closes them towards the peer.
    pub fn drain<S: Read + Write + AsFd>(
        &mut self,
        conn: &mut Connection<S>,
        limit: Duration,
    ) -> Result<(), ProtocolError> {
        let deadline = Instant::now() + limit;
        while !self.sources.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds: Vec<libc::pollfd> = self
                .sources
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: valid pollfd array for the call.
            let ready = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    left.as_millis().max(1) as i32,
                )
            };
            if ready <= 0 {
                continue;
            }
            let ready: Vec<usize> = (0..fds.len()).filter(|&i| fds[i].revents != 0).collect();
            self.pump_sources(conn, &ready)?;
        }
        for source in std::mem::take(&mut self.sources) {
            conn.send_eof(source.stream)?;
        }
        Ok(())
    }
}

impl Sink {
    /// Writes what it can without blocking; closes the descriptor at the peer's end of
    /// stream; drops everything when the reader is gone.
    fn flush(&mut self) {
        let Some(fd) = &self.fd else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match write_fd(fd.as_raw_fd(), front) {
                Ok(0) => break,
                Ok(wrote) => {
                    self.pending.drain(..wrote);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // EPIPE: the process closed its end; its input is of no use any more.
                Err(_) => {
                    self.fd = None;
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
    fn a_process_that_does_not_read_stops_the_connection_not_the_relay() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(ours);
        let mut peer = Connection::new(theirs);
        let mut relay = Relay::new();
        let (_in_read, in_write) = pipe();
        relay.sink(Stream::Stdin, in_write, true).unwrap();
        let (extra_read, extra_write) = pipe();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; MAX_DATA];
            for _ in 0..(SINK_LIMIT / MAX_DATA) + 80 {
                if peer.send_data(Stream::Stdin, &chunk).is_err() {
                    break;
                }
            }
            peer
        });
        // The relay keeps serving its other descriptors while the sink is full.
        std::fs::File::from(extra_write).write_all(b"!").unwrap();
        let mut saw_extra = false;
        for _ in 0..200 {
            let events = relay
                .poll(
                    &mut conn,
                    &[extra_read.as_fd()],
                    Some(Duration::from_millis(20)),
                )
                .unwrap();
            if events.contains(&Event::Extra(0)) {
                saw_extra = true;
                break;
            }
        }
        assert!(saw_extra);
        let buffered: usize = relay.sinks.iter().map(|s| s.pending.len()).sum();
        assert!(buffered <= SINK_LIMIT + 2 * MAX_DATA + 4096, "{buffered}");
        drop(conn);
        drop(relay);
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
