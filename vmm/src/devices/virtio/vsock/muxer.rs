//! The host side of hybrid vsock: the Unix listener, host connections waiting for their
//! `CONNECT <port>` line, and established connections with their flow-control state.
//!
//! The muxer knows nothing about virtqueues or epoll: the device feeds it guest packets and
//! readiness events, pulls packets for the guest from it, and mirrors its wanted fd
//! interests into the event loop. Sockets that are closed go to a graveyard first, so the
//! event loop can unregister them before their fd numbers are reused.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::EventSet;

use super::packet::*;

/// Receive buffer we advertise per connection (guest to host data in flight).
pub const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload we accept or send in one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Most simultaneous connections (a guest cannot exhaust host fds).
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_HANDSHAKE: usize = 32;
/// Most control packets queued for the guest: a guest that sends packets but posts no
/// receive buffers cannot grow the VMM's memory without bound.
pub const MAX_CONTROL: usize = 4096;
/// First host-side port handed to host-initiated connections.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Identifies a connection: (host port, guest port).
pub type ConnKey = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host connected and asked for a guest port; waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// Guest shut down both directions; flushing what it sent, then gone.
    Closing,
}

struct Connection {
    stream: UnixStream,
    state: State,
    /// Guest to host bytes not yet written to the stream.
    tx_buffer: VecDeque<u8>,
    /// Bytes written to the host stream (our fwd_cnt).
    fwd_cnt: u32,
    /// fwd_cnt last told to the guest.
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest (our tx_cnt for its credit).
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host stream is known readable (or at EOF) and was not drained yet.
    rx_ready: bool,
    /// The host closed its side.
    host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    guest_shutdown: u32,
    /// The host stream's write side was shut down.
    write_shut: bool,
}

impl Connection {
    fn new(stream: UnixStream, state: State) -> Self {
        Self {
            stream,
            state,
            tx_buffer: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_ready: false,
            host_eof: false,
            guest_shutdown: 0,
            write_shut: false,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn wants_rx(&self) -> bool {
        self.state == State::Established
            && self.rx_ready
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && (self.host_eof || self.peer_credit() > 0)
    }

    fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == State::Established && !self.rx_ready && !self.host_eof {
            set |= EventSet::IN;
        }
        if !self.tx_buffer.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Writes buffered guest data to the host; returns Err on a broken stream.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.tx_buffer.is_empty() {
            let (front, _) = self.tx_buffer.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.tx_buffer.drain(..written);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(written as u32);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.tx_buffer.is_empty() && self.guest_shutdown & SHUTDOWN_SEND != 0 && !self.write_shut
        {
            self.write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A host connection that has not sent its `CONNECT <port>\n` line yet.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdOwner {
    Listener,
    Pending,
    Connection(ConnKey),
}

/// What the device should put in one guest receive buffer.
pub enum RxPacket {
    /// A header-only packet.
    Control(PacketHeader),
    /// A data packet; `data` is the payload.
    Data(PacketHeader, Vec<u8>),
}

/// The host side of the vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    pending: HashMap<RawFd, Pending>,
    connections: BTreeMap<ConnKey, Connection>,
    fd_owner: HashMap<RawFd, FdOwner>,
    control: VecDeque<PacketHeader>,
    next_host_port: u32,
    graveyard: Vec<OwnedFd>,
}

impl Muxer {
    /// Binds the host Unix socket at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> std::io::Result<Self> {
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        let mut fd_owner = HashMap::new();
        fd_owner.insert(listener.as_raw_fd(), FdOwner::Listener);
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            pending: HashMap::new(),
            connections: BTreeMap::new(),
            fd_owner,
            control: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
            graveyard: Vec::new(),
        })
    }

    /// The fds the event loop should watch, with the events wanted.
    pub fn interests(&self) -> HashMap<RawFd, EventSet> {
        let mut map = HashMap::new();
        map.insert(self.listener.as_raw_fd(), EventSet::IN);
        for fd in self.pending.keys() {
            map.insert(*fd, EventSet::IN);
        }
        for connection in self.connections.values() {
            map.insert(connection.stream.as_raw_fd(), connection.interest());
        }
        map
    }

    /// Closed sockets, to drop once the event loop has unregistered them.
    pub fn take_graveyard(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.graveyard)
    }

    /// Number of live connections.
    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Why the muxer's state cannot go into a snapshot: a snapshot holds no host sockets,
    /// so it is taken before any connection exists (the guest only listens).
    pub fn snapshot_blocker(&self) -> Option<String> {
        let (open, connecting, queued) = (
            self.connections.len(),
            self.pending.len(),
            self.control.len(),
        );
        (open + connecting + queued > 0).then(|| {
            format!(
                "vsock has {open} open and {connecting} connecting host connections and \
                 {queued} queued control packets; a snapshot must be taken before any \
                 connection exists (while the guest only listens)"
            )
        })
    }

    /// Whether packets for the guest are waiting.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || self.connections.values().any(Connection::wants_rx)
    }

    fn header(&self, key: ConnKey, op: u16) -> PacketHeader {
        let (fwd_cnt, buf_alloc) = self
            .connections
            .get(&key)
            .map(|c| (c.fwd_cnt, BUF_ALLOC))
            .unwrap_or((0, BUF_ALLOC));
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn queue_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        let mut header = self.header(key, op);
        header.flags = flags;
        if let Some(connection) = self.connections.get_mut(&key) {
            connection.fwd_cnt_sent = connection.fwd_cnt;
        }
        self.push_control(header);
    }

    fn push_control(&mut self, header: PacketHeader) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(header);
        } else {
            tracing::warn!("vsock: the guest does not take its packets; dropping a control packet");
        }
    }

    fn bury(&mut self, stream: UnixStream) {
        self.fd_owner.remove(&stream.as_raw_fd());
        self.graveyard.push(OwnedFd::from(stream));
    }

    fn remove_connection(&mut self, key: ConnKey) {
        if let Some(connection) = self.connections.remove(&key) {
            self.bury(connection.stream);
        }
    }

    fn reset(&mut self, key: ConnKey) {
        self.remove_connection(key);
        let header = self.header(key, OP_RST);
        self.push_control(header);
    }

    /// Handles readiness of one of the muxer's fds.
    pub fn handle_fd(&mut self, fd: RawFd, events: EventSet) {
        match self.fd_owner.get(&fd).copied() {
            Some(FdOwner::Listener) => self.accept_all(),
            Some(FdOwner::Pending) => self.read_handshake(fd),
            Some(FdOwner::Connection(key)) => self.connection_ready(key, events),
            None => {}
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() + self.connections.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        tracing::warn!("vsock: too many connections; refusing a host connection");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.fd_owner.insert(fd, FdOwner::Pending);
                    self.pending.insert(
                        fd,
                        Pending {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::warn!("vsock: accept failed: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn read_handshake(&mut self, fd: RawFd) {
        let Some(mut pending) = self.pending.remove(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte, so nothing after the newline (the first data) is consumed.
        let line_done = loop {
            match pending.stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if byte[0] == b'\n' => break Ok(true),
                Ok(_) if pending.line.len() >= MAX_HANDSHAKE => break Err("line too long"),
                Ok(_) => pending.line.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break Err("read failed"),
            }
        };
        let port = match line_done {
            Ok(false) => {
                // The rest of the line has not arrived yet.
                self.pending.insert(fd, pending);
                return;
            }
            Ok(true) => parse_connect(&pending.line).ok_or("expected `CONNECT <port>`"),
            Err(why) => Err(why),
        };
        let guest_port = match port {
            Ok(port) => port,
            Err(why) => {
                tracing::debug!("vsock: dropping host connection: {why}");
                self.bury(pending.stream);
                return;
            }
        };
        let host_port = self.allocate_host_port();
        let key = (host_port, guest_port);
        self.fd_owner.insert(fd, FdOwner::Connection(key));
        self.connections
            .insert(key, Connection::new(pending.stream, State::Connecting));
        self.queue_control(key, OP_REQUEST, 0);
    }

    fn allocate_host_port(&mut self) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
            if !self.connections.keys().any(|(host, _)| *host == port) {
                return port;
            }
        }
    }

    fn connection_ready(&mut self, key: ConnKey, events: EventSet) {
        let Some(connection) = self.connections.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::HANG_UP) {
            match connection.state {
                // The host gave up before the guest accepted.
                State::Connecting => return self.reset(key),
                // The guest already closed; nothing is left to deliver.
                State::Closing => return self.remove_connection(key),
                // The host closed both directions after its last data was read.
                State::Established if connection.host_eof => return self.reset(key),
                State::Established => {}
            }
        }
        if events.contains(EventSet::IN) || events.contains(EventSet::HANG_UP) {
            connection.rx_ready = true;
        }
        if events.contains(EventSet::OUT) || events.contains(EventSet::ERROR) {
            if connection.flush().is_err() {
                self.reset(key);
                return;
            }
            self.after_flush(key);
        }
    }

    /// Sends a credit update when the guest may be waiting for one, and finishes closing
    /// connections whose data has drained.
    fn after_flush(&mut self, key: ConnKey) {
        let Some(connection) = self.connections.get(&key) else {
            return;
        };
        if connection.state == State::Closing {
            if connection.tx_buffer.is_empty() {
                self.remove_connection(key);
            }
            return;
        }
        let unannounced = connection.fwd_cnt.wrapping_sub(connection.fwd_cnt_sent);
        if unannounced >= BUF_ALLOC / 4
            || (connection.tx_buffer.is_empty() && unannounced > 0 && unannounced >= BUF_ALLOC / 16)
        {
            self.queue_control(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Handles one packet from the guest. `payload` holds the data of an RW packet.
    pub fn handle_guest_packet(&mut self, header: &PacketHeader, payload: &[u8]) {
        let header = *header;
        let (src_cid, dst_cid, op, type_) =
            (header.src_cid, header.dst_cid, header.op, header.type_);
        if src_cid != self.guest_cid || dst_cid != HOST_CID {
            tracing::debug!("vsock: dropping packet from cid {src_cid} to cid {dst_cid}");
            return;
        }
        let key = (header.dst_port, header.src_port);
        if type_ != TYPE_STREAM {
            if op != OP_RST {
                self.reset(key);
            }
            return;
        }
        if let Some(connection) = self.connections.get_mut(&key) {
            connection.peer_buf_alloc = header.buf_alloc;
            connection.peer_fwd_cnt = header.fwd_cnt;
        }
        match op {
            OP_REQUEST => self.guest_connect(key, &header),
            OP_RESPONSE => self.guest_accepted(key),
            OP_RST => self.remove_connection(key),
            OP_RW => self.guest_data(key, payload),
            OP_CREDIT_REQUEST => {
                if self.connections.contains_key(&key) {
                    self.queue_control(key, OP_CREDIT_UPDATE, 0);
                } else {
                    self.reset(key);
                }
            }
            OP_CREDIT_UPDATE => {
                if !self.connections.contains_key(&key) {
                    self.reset(key);
                }
            }
            OP_SHUTDOWN => self.guest_shutdown(key, header.flags),
            other => {
                tracing::debug!("vsock: unknown operation {other}; resetting");
                self.reset(key);
            }
        }
    }

    fn guest_connect(&mut self, key: ConnKey, request: &PacketHeader) {
        if self.connections.contains_key(&key) || self.connections.len() >= MAX_CONNECTIONS {
            self.reset(key);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", key.0));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                self.fd_owner
                    .insert(stream.as_raw_fd(), FdOwner::Connection(key));
                let mut connection = Connection::new(stream, State::Established);
                connection.peer_buf_alloc = request.buf_alloc;
                connection.peer_fwd_cnt = request.fwd_cnt;
                self.connections.insert(key, connection);
                self.queue_control(key, OP_RESPONSE, 0);
            }
            Err(error) => {
                tracing::debug!(
                    "vsock: guest connection to host port {} refused ({}): {error}",
                    key.0,
                    Path::new(&path).display()
                );
                let header = self.header(key, OP_RST);
                self.push_control(header);
            }
        }
    }

    fn guest_accepted(&mut self, key: ConnKey) {
        let Some(connection) = self.connections.get_mut(&key) else {
            self.reset(key);
            return;
        };
        if connection.state != State::Connecting {
            self.reset(key);
            return;
        }
        connection.state = State::Established;
        let reply = format!("OK {}\n", key.0);
        if connection.stream.write_all(reply.as_bytes()).is_err() {
            self.reset(key);
        }
    }

    fn guest_data(&mut self, key: ConnKey, payload: &[u8]) {
        let Some(connection) = self.connections.get_mut(&key) else {
            self.reset(key);
            return;
        };
        if connection.state != State::Established
            || connection.guest_shutdown & SHUTDOWN_SEND != 0
            || connection.tx_buffer.len() + payload.len() > BUF_ALLOC as usize
        {
            tracing::debug!("vsock: guest sent data it had no credit or right for; resetting");
            self.reset(key);
            return;
        }
        connection.tx_buffer.extend(payload);
        if connection.flush().is_err() {
            self.reset(key);
            return;
        }
        self.after_flush(key);
    }

    fn guest_shutdown(&mut self, key: ConnKey, flags: u32) {
        let Some(connection) = self.connections.get_mut(&key) else {
            // Unknown connection: a reset lets the guest release its socket at once.
            self.reset(key);
            return;
        };
        connection.guest_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if connection.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            // Full close: acknowledge with a reset, deliver what is buffered, then drop.
            connection.state = State::Closing;
            let _ = connection.flush();
            let header = self.header(key, OP_RST);
            self.push_control(header);
            self.after_flush(key);
        } else if connection.flush().is_err() {
            self.reset(key);
        }
    }

    /// Produces the next packet for the guest, reading at most `max_payload` bytes of data.
    pub fn next_rx(&mut self, max_payload: usize) -> Option<RxPacket> {
        if let Some(header) = self.control.pop_front() {
            return Some(RxPacket::Control(header));
        }
        let keys: Vec<ConnKey> = self
            .connections
            .iter()
            .filter(|(_, c)| c.wants_rx())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(connection) = self.connections.get_mut(&key) else {
                continue;
            };
            if connection.host_eof {
                continue;
            }
            let want = max_payload
                .min(MAX_PAYLOAD)
                .min(connection.peer_credit() as usize);
            if want == 0 {
                continue;
            }
            let mut data = vec![0u8; want];
            match connection.stream.read(&mut data) {
                Ok(0) => {
                    // The host will send no more (it may still read: a half close).
                    connection.host_eof = true;
                    connection.rx_ready = false;
                    self.queue_control(key, OP_SHUTDOWN, SHUTDOWN_SEND);
                    return self.control.pop_front().map(RxPacket::Control);
                }
                Ok(read) => {
                    data.truncate(read);
                    connection.rx_cnt = connection.rx_cnt.wrapping_add(read as u32);
                    connection.fwd_cnt_sent = connection.fwd_cnt;
                    let mut header = self.header(key, OP_RW);
                    header.len = read as u32;
                    return Some(RxPacket::Data(header, data));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    connection.rx_ready = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.reset(key);
                    return self.control.pop_front().map(RxPacket::Control);
                }
            }
        }
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Parses `CONNECT <port>` (an optional trailing `\r` is accepted).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    text.strip_prefix("CONNECT ")?.trim().parse().ok()
}

/// Connects to a Unix socket without blocking: a listener with a full backlog refuses
/// instead of stalling the event loop.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket owned by nobody else.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= address.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `address` is a valid sockaddr_un of the given size and `fd` is open.
    let result = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_refused_once_a_host_connects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let mut muxer = Muxer::new(3, &path).unwrap();
        assert_eq!(
            muxer.snapshot_blocker(),
            None,
            "a listening muxer can be saved"
        );
        let _client = UnixStream::connect(&path).unwrap();
        muxer.handle_fd(muxer.listener.as_raw_fd(), EventSet::IN);
        let blocker = muxer.snapshot_blocker().unwrap();
        assert!(
            blocker.contains("0 open and 1 connecting host connections"),
            "{blocker}"
        );
    }
}
