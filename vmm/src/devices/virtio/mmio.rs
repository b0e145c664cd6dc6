//! The virtio-mmio transport (version 2, "modern"): the register window the driver uses
//! to negotiate features, configure queues and start or reset the device.
//!
//! Every register access is validated: wrong widths, writes in the wrong device state and
//! bad queue setups are ignored with a warning or end in DEVICE_NEEDS_RESET, never in a
//! crash of the VMM.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_CONFIG, VirtioDevice};
use crate::devices::bus::{BusDevice, lock};
use crate::vstate::memory::GuestMemory;

const MMIO_MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5842_5754; // "TWBX"
const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// virtio-queue's `QueueState` field by field, for serde's remote derive.
#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// One virtqueue as saved in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot(#[serde(with = "QueueStateDef")] QueueState);

/// A virtio-mmio transport and its device's queues as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    device_type: u32,
    registers: Registers,
    interrupt_status: u32,
    activated: bool,
    queues: Vec<QueueSnapshot>,
}

/// The transport's own registers (the device and its queues hold the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Registers {
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    device_status: u32,
    config_generation: u32,
}

/// A virtio device's MMIO register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    queues: Vec<Queue>,
    registers: Registers,
}

impl MmioTransport {
    /// Wraps `device`, whose queues will live in `mem`.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMemory) -> Self {
        let queues = fresh_queues(&*lock(&device));
        Self {
            device,
            mem,
            queues,
            registers: Registers::default(),
        }
    }

    /// The device status register.
    pub fn device_status(&self) -> u32 {
        self.registers.device_status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.registers.queue_select as usize)
    }

    /// Queue registers may only change while the driver is setting the device up.
    fn queue_config_allowed(&self) -> bool {
        self.registers.device_status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
            && self.registers.device_status & status::DRIVER != 0
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        device.reset();
        device.interrupt().acknowledge(u32::MAX);
        self.queues = fresh_queues(&*device);
        drop(device);
        // Everything but the config generation, which only ever moves forward.
        self.registers = Registers {
            config_generation: self.registers.config_generation,
            ..Registers::default()
        };
    }

    fn fail(&mut self, why: &str) {
        tracing::warn!("virtio-mmio: device needs reset: {why}");
        self.registers.device_status |= status::DEVICE_NEEDS_RESET;
        self.signal_config_change();
    }

    /// Tells the driver that the device configuration changed (e.g. a disk's capacity):
    /// a new config generation and the config-change interrupt, on which Linux re-reads
    /// the configuration space.
    pub fn signal_config_change(&mut self) {
        self.registers.config_generation = self.registers.config_generation.wrapping_add(1);
        lock(&self.device)
            .interrupt()
            .trigger(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Whether the driver has started the device (DRIVER_OK).
    pub fn driver_ok(&self) -> bool {
        self.registers.device_status & status::DRIVER_OK != 0
    }

    /// The transport's and its queues' state for a snapshot; fails when the device cannot
    /// be saved now (see [`VirtioDevice::snapshot_blocker`]).
    pub fn snapshot(&self) -> Result<TransportSnapshot, String> {
        let device = lock(&self.device);
        if let Some(blocker) = device.snapshot_blocker() {
            return Err(blocker);
        }
        let activated = device.is_activated();
        let queues = if activated {
            device.active_queues()
        } else {
            &self.queues
        };
        Ok(TransportSnapshot {
            device_type: device.device_type(),
            registers: self.registers,
            interrupt_status: device.interrupt().status(),
            activated,
            queues: queues
                .iter()
                .map(|queue| QueueSnapshot(queue.state()))
                .collect(),
        })
    }

    /// Puts the transport and a freshly built device of the same kind in a saved state:
    /// registers, acknowledged features, interrupt status and queues; a device that was
    /// active is activated again with the saved queues.
    pub fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), String> {
        let mut device = lock(&self.device);
        if saved.device_type != device.device_type() {
            return Err(format!(
                "the snapshot has a virtio device of type {} where this VM has type {}",
                saved.device_type,
                device.device_type()
            ));
        }
        if saved.queues.len() != device.queue_max_sizes().len() {
            return Err(format!(
                "the snapshot's virtio device (type {}) has {} queues, this one {}",
                saved.device_type,
                saved.queues.len(),
                device.queue_max_sizes().len()
            ));
        }
        let queues = saved
            .queues
            .iter()
            .map(|queue| Queue::try_from(queue.0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("invalid saved queue: {error}"))?;
        if let Some(index) = queues
            .iter()
            .position(|queue| queue.ready() && !queue.is_valid(&self.mem))
        {
            return Err(format!(
                "saved queue {index} of the virtio device (type {}) lies outside guest memory",
                saved.device_type
            ));
        }
        if saved.registers.device_status & status::FEATURES_OK != 0 {
            device.set_acked_features(saved.registers.driver_features);
        }
        device.interrupt().restore_status(saved.interrupt_status);
        if saved.activated {
            device
                .activate(self.mem.clone(), queues)
                .map_err(|error| format!("cannot reactivate the virtio device: {error}"))?;
        } else {
            self.queues = queues;
        }
        drop(device);
        self.registers = saved.registers;
        Ok(())
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.registers.device_status;
        // The driver may only add bits (except FAILED, which it may set at any time).
        if value & old != old {
            tracing::warn!("virtio-mmio: driver cleared status bits ({old:#x} -> {value:#x})");
            return;
        }
        let added = value & !old;
        if added & status::FEATURES_OK != 0 {
            let features = self.registers.driver_features;
            if features & VIRTIO_F_VERSION_1 == 0 {
                tracing::warn!("virtio-mmio: driver refused VIRTIO_F_VERSION_1; features not OK");
                self.registers.device_status = value & !status::FEATURES_OK;
                return;
            }
            lock(&self.device).set_acked_features(features);
        }
        self.registers.device_status = value;
        if added & status::DRIVER_OK != 0 {
            if value & status::FEATURES_OK == 0 {
                self.fail("DRIVER_OK without FEATURES_OK");
                return;
            }
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = self.mem.clone();
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() && !queue.is_valid(&mem) {
                self.fail(&format!("queue {index} has an invalid layout"));
                return;
            }
        }
        let queues = std::mem::take(&mut self.queues);
        let result = lock(&self.device).activate(mem, queues);
        if let Err(error) = result {
            self.fail(&format!("activation failed: {error}"));
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x000 => MMIO_MAGIC_VALUE,
            0x004 => MMIO_VERSION,
            0x008 => lock(&self.device).device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let features = lock(&self.device).avail_features() | VIRTIO_F_VERSION_1;
                match self.registers.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => self
                .selected_queue()
                .map(|q| u32::from(q.max_size()))
                .unwrap_or(0),
            0x044 => self
                .selected_queue()
                .map(|q| u32::from(q.ready()))
                .unwrap_or(0),
            0x060 => lock(&self.device).interrupt().status(),
            0x070 => self.registers.device_status,
            0x0fc => self.registers.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x014 => self.registers.device_features_select = value,
            0x020 => {
                if self.registers.device_status & (status::DRIVER | status::FEATURES_OK)
                    != status::DRIVER
                {
                    tracing::warn!("virtio-mmio: driver features written in the wrong state");
                    return;
                }
                let offered = lock(&self.device).avail_features() | VIRTIO_F_VERSION_1;
                let (shift, mask) = match self.registers.driver_features_select {
                    0 => (0, 0xffff_ffffu64),
                    1 => (32, 0xffff_ffff_0000_0000u64),
                    _ => return,
                };
                let accepted = (u64::from(value) << shift) & offered;
                self.registers.driver_features =
                    (self.registers.driver_features & !mask) | accepted;
            }
            0x024 => self.registers.driver_features_select = value,
            0x030 => self.registers.queue_select = value,
            0x050 => {
                // Normally an ioeventfd catches these writes in KVM; relay it ourselves
                // when the guest's access reached us anyway.
                if let Some(event) = lock(&self.device).queue_events().get(value as usize) {
                    let _ = event.write(1);
                }
            }
            0x064 => lock(&self.device).interrupt().acknowledge(value),
            0x070 => self.set_status(value),
            0x038 | 0x044 | 0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if !self.queue_config_allowed() {
                    tracing::warn!(
                        "virtio-mmio: queue register {offset:#x} written in the wrong state"
                    );
                    return;
                }
                let Some(queue) = self.selected_queue() else {
                    tracing::warn!("virtio-mmio: write to a queue that does not exist");
                    return;
                };
                match offset {
                    0x038 => queue.set_size(value.min(u32::from(u16::MAX)) as u16),
                    0x044 => queue.set_ready(value == 1),
                    0x080 => queue.set_desc_table_address(Some(value), None),
                    0x084 => queue.set_desc_table_address(None, Some(value)),
                    0x090 => queue.set_avail_ring_address(Some(value), None),
                    0x094 => queue.set_avail_ring_address(None, Some(value)),
                    0x0a0 => queue.set_used_ring_address(Some(value), None),
                    _ => queue.set_used_ring_address(None, Some(value)),
                }
            }
            _ => tracing::debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|size| Queue::new(*size).expect("queue sizes are powers of two"))
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                let value = self.read_register(offset);
                data.copy_from_slice(&value.to_le_bytes());
            }
            _ => {
                tracing::warn!(
                    "virtio-mmio: {}-byte register read at {offset:#x} (must be 4 bytes, aligned)",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(bytes))
            }
            _ => tracing::warn!(
                "virtio-mmio: {}-byte register write at {offset:#x} (must be 4 bytes, aligned)",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_support::memory;
    use crate::devices::virtio::{ActivateError, IrqTrigger};
    use vmm_sys_util::eventfd::EventFd;

    struct Dummy {
        interrupt: Arc<IrqTrigger>,
        events: Vec<EventFd>,
        acked: u64,
        activated_with: Option<usize>,
        resets: u32,
        fail_activation: bool,
        active: Vec<Queue>,
    }

    impl Dummy {
        fn new() -> Self {
            Self {
                interrupt: Arc::new(IrqTrigger::new().unwrap()),
                events: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
                acked: 0,
                activated_with: None,
                resets: 0,
                fail_activation: false,
                active: Vec::new(),
            }
        }
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            0b101
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.events
        }
        fn interrupt(&self) -> &Arc<IrqTrigger> {
            &self.interrupt
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[9, 8, 7, 6], offset, data);
        }
        fn activate(&mut self, _: GuestMemory, queues: Vec<Queue>) -> Result<(), ActivateError> {
            if self.fail_activation {
                return Err(ActivateError::Backend("refused".into()));
            }
            self.activated_with = Some(queues.len());
            self.active = queues;
            Ok(())
        }
        fn is_activated(&self) -> bool {
            self.activated_with.is_some()
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated_with = None;
            self.active.clear();
        }
        fn active_queues(&self) -> &[Queue] {
            &self.active
        }
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn setup() -> (Arc<Mutex<Dummy>>, MmioTransport) {
        let device = Arc::new(Mutex::new(Dummy::new()));
        let transport = MmioTransport::new(device.clone(), memory());
        (device, transport)
    }

    fn configure_queue(t: &mut MmioTransport) {
        write(t, 0x030, 0);
        write(t, 0x038, 16);
        write(t, 0x080, 0x1000);
        write(t, 0x090, 0x2000);
        write(t, 0x0a0, 0x3000);
        write(t, 0x044, 1);
    }

    #[test]
    fn identification_registers() {
        let (_, mut t) = setup();
        assert_eq!(read(&mut t, 0x000), MMIO_MAGIC_VALUE);
        assert_eq!(read(&mut t, 0x004), 2);
        assert_eq!(read(&mut t, 0x008), 42);
        write(&mut t, 0x014, 1);
        assert_eq!(read(&mut t, 0x010), 1, "VERSION_1 in the high word");
        write(&mut t, 0x014, 0);
        assert_eq!(read(&mut t, 0x010), 0b101);
        assert_eq!(read(&mut t, 0x034), 16);
        let mut config = [0u8; 2];
        t.read(0x101, &mut config);
        assert_eq!(config, [8, 7]);
    }

    #[test]
    fn full_negotiation_activates_the_device() {
        let (device, mut t) = setup();
        write(&mut t, 0x070, status::ACKNOWLEDGE);
        write(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        write(&mut t, 0x024, 0);
        write(&mut t, 0x020, 0b111); // bit 1 is not offered and must be dropped
        write(&mut t, 0x024, 1);
        write(&mut t, 0x020, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write(&mut t, 0x070, s);
        assert_eq!(read(&mut t, 0x070), s);
        assert_eq!(device.lock().unwrap().acked, 0b101 | VIRTIO_F_VERSION_1);
        configure_queue(&mut t);
        assert_eq!(read(&mut t, 0x044), 1);
        write(&mut t, 0x070, s | status::DRIVER_OK);
        assert_eq!(device.lock().unwrap().activated_with, Some(1));
        // Reset returns everything to the start.
        write(&mut t, 0x070, 0);
        assert_eq!(read(&mut t, 0x070), 0);
        assert_eq!(device.lock().unwrap().resets, 1);
        assert_eq!(read(&mut t, 0x044), 0);
    }

    /// Negotiates features and queue 0 and starts the device, as a driver does.
    fn activate(t: &mut MmioTransport) {
        write(t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        write(t, 0x024, 1);
        write(t, 0x020, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write(t, 0x070, s);
        configure_queue(t);
        write(t, 0x070, s | status::DRIVER_OK);
    }

    #[test]
    fn state_round_trip_reactivates_the_device_with_its_queues() {
        let (device, mut t) = setup();
        activate(&mut t);
        device.lock().unwrap().active[0].set_next_avail(5);
        device.lock().unwrap().active[0].set_next_used(4);
        write(&mut t, 0x030, 3);
        device
            .lock()
            .unwrap()
            .interrupt
            .trigger(VIRTIO_MMIO_INT_CONFIG);
        let saved = t.snapshot().unwrap();
        let json = serde_json::to_string(&saved).unwrap();
        let loaded: TransportSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded, saved);

        let (restored_device, mut restored) = setup();
        restored.restore(&loaded).unwrap();
        {
            let device = restored_device.lock().unwrap();
            assert_eq!(device.activated_with, Some(1));
            assert_eq!(device.acked, VIRTIO_F_VERSION_1);
            let queue = &device.active[0];
            assert_eq!((queue.next_avail(), queue.next_used()), (5, 4));
            assert_eq!(
                (queue.desc_table(), queue.avail_ring(), queue.used_ring()),
                (0x1000, 0x2000, 0x3000)
            );
            assert!(queue.ready());
        }
        for register in [0x070, 0x060, 0x0fc] {
            assert_eq!(read(&mut restored, register), read(&mut t, register));
        }
        assert_eq!(restored.snapshot().unwrap(), saved);
        assert_eq!(
            restored_device
                .lock()
                .unwrap()
                .interrupt
                .event()
                .read()
                .ok(),
            None,
            "restoring raises no interrupt"
        );
    }

    #[test]
    fn an_inactive_device_keeps_its_half_configured_queues() {
        let (_, mut t) = setup();
        write(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        write(&mut t, 0x024, 1);
        write(&mut t, 0x020, 1);
        write(
            &mut t,
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        write(&mut t, 0x038, 8);
        let saved = t.snapshot().unwrap();
        let (device, mut restored) = setup();
        restored.restore(&saved).unwrap();
        assert_eq!(device.lock().unwrap().activated_with, None);
        assert_eq!(restored.snapshot().unwrap(), saved);
        assert_eq!(restored.queues[0].size(), 8);
    }

    #[test]
    fn restore_refuses_another_device_kind() {
        let (_, t) = setup();
        let mut saved = t.snapshot().unwrap();
        saved.device_type = 2;
        let (_, mut other) = setup();
        let error = other.restore(&saved).unwrap_err();
        assert!(
            error.contains("type 2") && error.contains("type 42"),
            "{error}"
        );
        saved.device_type = 42;
        saved.queues.clear();
        let error = other.restore(&saved).unwrap_err();
        assert!(error.contains("0 queues"), "{error}");
    }

    #[test]
    fn config_change_bumps_the_generation_and_interrupts() {
        let (device, mut t) = setup();
        activate(&mut t);
        assert!(t.driver_ok());
        let generation = read(&mut t, 0x0fc);
        t.signal_config_change();
        assert_eq!(read(&mut t, 0x0fc), generation + 1);
        assert_ne!(read(&mut t, 0x060) & VIRTIO_MMIO_INT_CONFIG, 0);
        assert_eq!(device.lock().unwrap().interrupt.event().read().unwrap(), 1);
    }

    #[test]
    fn legacy_driver_without_version_1_is_refused() {
        let (device, mut t) = setup();
        write(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        write(&mut t, 0x020, 0b1);
        write(
            &mut t,
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(read(&mut t, 0x070) & status::FEATURES_OK, 0);
        assert_eq!(device.lock().unwrap().acked, 0);
    }

    #[test]
    fn hostile_register_accesses_are_contained() {
        let (device, mut t) = setup();
        // Queue setup before FEATURES_OK, bad widths, unknown queue, unknown registers.
        write(&mut t, 0x038, 8);
        t.write(0x070, &[1, 2]);
        t.write(0x071, &[0, 0, 0, 0]);
        let mut odd = [0u8; 2];
        t.read(0x000, &mut odd);
        assert_eq!(odd, [0xff, 0xff]);
        write(&mut t, 0x030, 99);
        assert_eq!(read(&mut t, 0x034), 0);
        assert_eq!(read(&mut t, 0x044), 0);
        write(&mut t, 0x0f0, 1);
        write(&mut t, 0x050, 12345);
        // DRIVER_OK with a queue in unmapped memory: device needs reset, not activated.
        write(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        write(&mut t, 0x024, 1);
        write(&mut t, 0x020, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write(&mut t, 0x070, s);
        write(&mut t, 0x030, 0);
        write(&mut t, 0x038, 16);
        write(&mut t, 0x080, 0xffff_f000);
        write(&mut t, 0x084, 0xffff_ffff);
        write(&mut t, 0x044, 1);
        write(&mut t, 0x070, s | status::DRIVER_OK);
        assert_ne!(read(&mut t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
        assert!(device.lock().unwrap().activated_with.is_none());
        assert_ne!(read(&mut t, 0x060) & VIRTIO_MMIO_INT_CONFIG, 0);
        // Clearing bits is not allowed (only a full reset).
        write(&mut t, 0x070, status::ACKNOWLEDGE);
        assert_ne!(read(&mut t, 0x070), status::ACKNOWLEDGE);
    }

    #[test]
    fn failed_activation_sets_needs_reset() {
        let (device, mut t) = setup();
        device.lock().unwrap().fail_activation = true;
        write(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        write(&mut t, 0x024, 1);
        write(&mut t, 0x020, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write(&mut t, 0x070, s);
        configure_queue(&mut t);
        write(&mut t, 0x070, s | status::DRIVER_OK);
        assert_ne!(read(&mut t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
    }
}
