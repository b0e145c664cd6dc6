//! The virtio-vsock device: three queues (rx, tx, event) in front of the [`Muxer`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{MAX_PAYLOAD, Muxer, RxPacket};
use super::packet::{HEADER_SIZE, OP_RW, PacketHeader};
use crate::devices::virtio::{
    ActivateError, IrqTrigger, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_VRING, VirtioDevice,
    read_config_bytes,
};
use crate::vstate::memory::GuestMemory;

/// Size of each vsock queue.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const RX_QUEUE: usize = 0;
/// Guest to host packets.
pub const TX_QUEUE: usize = 1;
/// Transport events (unused: no live migration).
pub const EVENT_QUEUE: usize = 2;

/// Errors while creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Reserved context ids.
    #[error("guest CID {0} is reserved; use 3 or more")]
    InvalidCid(u32),
    /// The host socket could not be created.
    #[error(
        "cannot listen on vsock socket {path}: {source} (remove a stale socket file, or pick another path)"
    )]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// eventfd creation failed.
    #[error("cannot create the vsock device's eventfds: {0}")]
    EventFd(#[source] std::io::Error),
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
}

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    queue_events: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    active: Option<Active>,
    pub(super) muxer: Muxer,
    pub(super) registered: super::event_handler::Registered,
}

impl Vsock {
    /// A vsock device for guest `guest_cid`, bridged to the Unix socket `uds_path`.
    pub fn new(guest_cid: u32, uds_path: &Path) -> Result<Self, VsockError> {
        if guest_cid < 3 {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let muxer =
            Muxer::new(u64::from(guest_cid), uds_path).map_err(|source| VsockError::Bind {
                path: uds_path.to_path_buf(),
                source,
            })?;
        let queue_events = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VsockError::EventFd)?;
        Ok(Self {
            guest_cid: u64::from(guest_cid),
            queue_events,
            interrupt: Arc::new(IrqTrigger::new().map_err(VsockError::EventFd)?),
            active: None,
            muxer,
            registered: Default::default(),
        })
    }

    /// Processes guest packets from the tx queue, then fills the rx queue.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        let queue = &mut active.queues[TX_QUEUE];
        while let Some(chain) = queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            match chain.reader(&active.mem) {
                Ok(mut reader) => match read_packet(&mut reader) {
                    Some((header, payload)) => self.muxer.handle_guest_packet(&header, &payload),
                    None => tracing::warn!("vsock: malformed packet from the guest; dropped"),
                },
                Err(_) => tracing::warn!("vsock: tx descriptors point outside guest memory"),
            }
            if let Err(error) = queue.add_used(&active.mem, head, 0) {
                tracing::warn!("vsock: cannot return tx descriptor {head}: {error}");
            }
            used_any = true;
        }
        if used_any && queue.needs_notification(&active.mem).unwrap_or(true) {
            self.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
        self.process_rx();
    }

    /// Moves packets for the guest into its rx buffers while both exist.
    pub fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queue = &mut active.queues[RX_QUEUE];
        let mut used_any = false;
        while self.muxer.has_rx() {
            let Some(chain) = queue.pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(&active.mem) {
                Ok(mut writer) if writer.available_bytes() >= HEADER_SIZE => {
                    let capacity = writer.available_bytes() - HEADER_SIZE;
                    match self.muxer.next_rx(capacity) {
                        Some(packet) => write_packet(&mut writer, packet),
                        None => {
                            // Nothing was ready after all: give the buffer back.
                            queue.go_to_previous_position();
                            break;
                        }
                    }
                }
                _ => {
                    tracing::warn!("vsock: rx buffer too small or outside guest memory");
                    0
                }
            };
            if let Err(error) = queue.add_used(&active.mem, head, written) {
                tracing::warn!("vsock: cannot return rx descriptor {head}: {error}");
            }
            used_any = true;
        }
        if used_any && queue.needs_notification(&active.mem).unwrap_or(true) {
            self.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }
}

/// Reads a header and, for data packets, its payload, from any descriptor layout.
fn read_packet(reader: &mut virtio_queue::Reader<'_>) -> Option<(PacketHeader, Vec<u8>)> {
    let header: PacketHeader = reader.read_obj().ok()?;
    let len = header.len as usize;
    if header.op != OP_RW {
        return Some((header, Vec::new()));
    }
    if len > MAX_PAYLOAD || len > reader.available_bytes() {
        return None;
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).ok()?;
    Some((header, payload))
}

fn write_packet(writer: &mut virtio_queue::Writer<'_>, packet: RxPacket) -> u32 {
    let (header, data) = match packet {
        RxPacket::Control(header) => (header, Vec::new()),
        RxPacket::Data(header, data) => (header, data),
    };
    if writer.write_obj(header).is_err() || writer.write_all(&data).is_err() {
        tracing::warn!("vsock: cannot write a packet into the guest's buffer");
    }
    writer.bytes_written() as u32
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                actual: queues.len(),
            });
        }
        self.active = Some(Active { mem, queues });
        let _ = self.queue_events[TX_QUEUE].write(1);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn active_queues(&self) -> &[Queue] {
        self.active
            .as_ref()
            .map(|active| active.queues.as_slice())
            .unwrap_or_default()
    }

    fn snapshot_blocker(&self) -> Option<String> {
        self.muxer.snapshot_blocker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_support::memory;
    use crate::devices::virtio::vsock::packet::*;
    use event_manager::{EventManager, SubscriberOps};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::Mutex;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const GUEST_CID: u64 = 3;
    const RX_BUFFERS: u64 = 0x40_0000;
    const TX_BUFFERS: u64 = 0x80_0000;
    const RX_BUFFER_SIZE: u32 = 4096;
    const RX_COUNT: u16 = 8;

    struct Harness<'a> {
        mem: &'a GuestMemory,
        device: Arc<Mutex<Vsock>>,
        events: EventManager<Arc<Mutex<Vsock>>>,
        rx: MockSplitQueue<'a, GuestMemory>,
        tx: MockSplitQueue<'a, GuestMemory>,
        rx_seen: u16,
        tx_next: u16,
        dir: tempfile::TempDir,
    }

    fn chain(parts: &[(u64, u32, bool)], offset: u16) -> Vec<RawDescriptor> {
        parts
            .iter()
            .enumerate()
            .map(|(i, (addr, len, writable))| {
                let mut flags = if *writable {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if i + 1 < parts.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(
                    *addr,
                    *len,
                    flags,
                    offset + i as u16 + 1,
                ))
            })
            .collect()
    }

    impl<'a> Harness<'a> {
        fn new(mem: &'a GuestMemory) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let device = Vsock::new(GUEST_CID as u32, &dir.path().join("v.sock")).unwrap();
            let rx = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
            let tx = MockSplitQueue::create(mem, GuestAddress(0x10_0000), QUEUE_SIZE);
            let ev = MockSplitQueue::create(mem, GuestAddress(0x20_0000), QUEUE_SIZE);
            for i in 0..RX_COUNT {
                let addr = RX_BUFFERS + u64::from(i) * u64::from(RX_BUFFER_SIZE);
                rx.add_desc_chains(&chain(&[(addr, RX_BUFFER_SIZE, true)], i), i)
                    .unwrap();
            }
            let device = Arc::new(Mutex::new(device));
            let queues = [&rx, &tx, &ev]
                .iter()
                .map(|q| q.create_queue::<Queue>().unwrap())
                .collect();
            device
                .lock()
                .unwrap()
                .activate(mem.clone(), queues)
                .unwrap();
            let mut events = EventManager::new().unwrap();
            events.add_subscriber(device.clone());
            Self {
                mem,
                device,
                events,
                rx,
                tx,
                rx_seen: 0,
                tx_next: 0,
                dir,
            }
        }

        fn uds(&self) -> std::path::PathBuf {
            self.dir.path().join("v.sock")
        }

        fn pump(&mut self) {
            for _ in 0..5 {
                self.events.run_with_timeout(20).unwrap();
            }
        }

        /// Sends one packet whose descriptors are laid out as `parts` (lengths summing to
        /// the header plus payload); the bytes are written contiguously first.
        fn send_split(&mut self, header: PacketHeader, payload: &[u8], parts: &[u32]) {
            let base = TX_BUFFERS + u64::from(self.tx_next) * 0x1_0000;
            self.mem.write_obj(header, GuestAddress(base)).unwrap();
            self.mem
                .write_slice(payload, GuestAddress(base + HEADER_SIZE as u64))
                .unwrap();
            let mut addr = base;
            let descs: Vec<(u64, u32, bool)> = parts
                .iter()
                .map(|len| {
                    let part = (addr, *len, false);
                    addr += u64::from(*len);
                    part
                })
                .collect();
            let offset = self.tx_next * 4;
            self.tx
                .add_desc_chains(&chain(&descs, offset), offset)
                .unwrap();
            self.tx_next += 1;
            self.device.lock().unwrap().queue_events()[TX_QUEUE]
                .write(1)
                .unwrap();
            self.pump();
        }

        fn send(&mut self, header: PacketHeader, payload: &[u8]) {
            // Header and data in one descriptor, as Linux 6.3+ does.
            self.send_split(header, payload, &[(HEADER_SIZE + payload.len()) as u32]);
        }

        /// Packets the device put in rx buffers since the last call.
        fn received(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
            let used = self.rx.used().idx().load();
            let mut packets = Vec::new();
            while self.rx_seen != used {
                let element = self
                    .rx
                    .used()
                    .ring()
                    .ref_at(self.rx_seen as usize)
                    .unwrap()
                    .load();
                let addr = RX_BUFFERS + u64::from(element.id()) * u64::from(RX_BUFFER_SIZE);
                let header: PacketHeader = self.mem.read_obj(GuestAddress(addr)).unwrap();
                let mut data = vec![0u8; element.len() as usize - HEADER_SIZE];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HEADER_SIZE as u64))
                    .unwrap();
                packets.push((header, data));
                // Recycle the buffer.
                let id = element.id() as u16;
                self.rx
                    .add_desc_chains(&chain(&[(addr, RX_BUFFER_SIZE, true)], id), id)
                    .unwrap();
                self.rx_seen += 1;
            }
            packets
        }
    }

    fn guest_header(src_port: u32, dst_port: u32, op: u16, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn guest_initiated_connection_round_trip() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let host_listener = UnixListener::bind(format!("{}_1234", h.uds().display())).unwrap();

        h.send(guest_header(5000, 1234, OP_REQUEST, 0), &[]);
        let packets = h.received();
        assert_eq!(packets.len(), 1);
        let response = packets[0].0;
        assert_eq!({ response.op }, OP_RESPONSE);
        assert_eq!(({ response.src_port }, { response.dst_port }), (1234, 5000));
        assert_eq!({ response.dst_cid }, GUEST_CID);
        let (mut host, _) = host_listener.accept().unwrap();

        h.send(guest_header(5000, 1234, OP_RW, 4), b"ping");
        // Header and payload split mid-header across three descriptors.
        h.send_split(guest_header(5000, 1234, OP_RW, 3), b"abc", &[10, 34, 3]);
        let mut got = [0u8; 7];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pingabc");

        host.write_all(b"pong").unwrap();
        h.pump();
        let packets = h.received();
        assert_eq!(packets.len(), 1);
        assert_eq!({ packets[0].0.op }, OP_RW);
        assert_eq!(packets[0].1, b"pong");

        // Host closes: the guest is told to shut down.
        drop(host);
        h.pump();
        let packets = h.received();
        assert!(packets.iter().any(|(p, _)| p.op == OP_SHUTDOWN));
        h.send(guest_header(5000, 1234, OP_RST, 0), &[]);
        assert_eq!(h.device.lock().unwrap().muxer.connection_count(), 0);
    }

    #[test]
    fn host_initiated_connection_handshake() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let mut host = UnixStream::connect(h.uds()).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        h.pump();
        let packets = h.received();
        assert_eq!(packets.len(), 1);
        let request = packets[0].0;
        assert_eq!({ request.op }, OP_REQUEST);
        assert_eq!({ request.dst_port }, 52);
        let host_port = request.src_port;
        assert!(host_port >= 1 << 30);

        h.send(guest_header(52, host_port, OP_RESPONSE, 0), &[]);
        let mut line = [0u8; 32];
        let n = host.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap(),
            format!("OK {host_port}\n")
        );

        host.write_all(b"hello guest").unwrap();
        h.pump();
        let packets = h.received();
        assert_eq!(packets[0].1, b"hello guest");
        h.send(guest_header(52, host_port, OP_RW, 2), b"hi");
        let mut reply = [0u8; 2];
        host.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"hi");
    }

    #[test]
    fn a_handshake_may_arrive_in_pieces() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let mut host = UnixStream::connect(h.uds()).unwrap();
        host.write_all(b"CONN").unwrap();
        h.pump();
        assert!(h.received().is_empty());
        host.write_all(b"ECT 77\r\n").unwrap();
        h.pump();
        let packets = h.received();
        assert_eq!(packets.len(), 1);
        assert_eq!(
            ({ packets[0].0.op }, { packets[0].0.dst_port }),
            (OP_REQUEST, 77)
        );
    }

    #[test]
    fn bad_handshakes_and_refused_ports() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let mut bad = UnixStream::connect(h.uds()).unwrap();
        bad.write_all(b"HELLO 52\n").unwrap();
        h.pump();
        assert!(h.received().is_empty());
        let mut buf = [0u8; 8];
        assert_eq!(
            bad.read(&mut buf).unwrap(),
            0,
            "bad handshake closes the connection"
        );

        // Nobody listens on host port 99: the guest's request is reset.
        h.send(guest_header(5001, 99, OP_REQUEST, 0), &[]);
        let packets = h.received();
        assert_eq!({ packets[0].0.op }, OP_RST);
    }

    #[test]
    fn malformed_packets_are_dropped_or_reset() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        // A 10-byte "header".
        h.send_split(guest_header(1, 2, OP_RW, 0), &[], &[10]);
        // A payload length beyond the descriptors.
        h.send_split(guest_header(1, 2, OP_RW, 60_000), b"xy", &[46]);
        assert!(h.received().is_empty());
        // Data for a connection that does not exist gets a reset.
        h.send(guest_header(7, 8, OP_RW, 1), b"z");
        let packets = h.received();
        assert_eq!(packets.len(), 1);
        assert_eq!({ packets[0].0.op }, OP_RST);
        // Packets claiming another source cid are ignored.
        let mut spoofed = guest_header(7, 8, OP_REQUEST, 0);
        spoofed.src_cid = 42;
        h.send(spoofed, &[]);
        assert!(h.received().is_empty());
        // The device still works afterwards.
        let _listener = UnixListener::bind(format!("{}_8", h.uds().display())).unwrap();
        h.send(guest_header(7, 8, OP_REQUEST, 0), &[]);
        assert_eq!({ h.received()[0].0.op }, OP_RESPONSE);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_control_queue() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        // Take all rx buffers away, then provoke a reset per packet.
        for port in 0..u32::from(RX_COUNT) {
            h.send(guest_header(9000 + port, 1, OP_RW, 1), b"x");
        }
        assert_eq!(h.received().len(), usize::from(RX_COUNT));
        let mut device = h.device.lock().unwrap();
        let bogus = guest_header(1, 1, OP_RW, 0);
        for _ in 0..10_000 {
            device.muxer.handle_guest_packet(&bogus, &[]);
        }
        assert!(device.muxer.has_rx());
        let mut queued = 0;
        while device.muxer.next_rx(0).is_some() {
            queued += 1;
        }
        assert_eq!(queued, super::super::muxer::MAX_CONTROL);
    }

    #[test]
    fn reserved_cids_and_busy_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Vsock::new(2, &dir.path().join("a")),
            Err(VsockError::InvalidCid(2))
        ));
        let path = dir.path().join("b");
        let _first = Vsock::new(3, &path).unwrap();
        assert!(matches!(Vsock::new(3, &path), Err(VsockError::Bind { .. })));
    }
}
