//! The virtio-mmio transport (version 2, "modern"): the register window the driver uses
//! to negotiate features, configure queues and start or reset the device.
//!
//! Every register access is validated: wrong widths, writes in the wrong device state and
//! bad queue setups are ignored with a warning or end in DEVICE_NEEDS_RESET, never in a
//! crash of the VMM.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};

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

/// A virtio device's MMIO register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    queues: Vec<Queue>,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    device_status: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// Wraps `device`, whose queues will live in `mem`.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMemory) -> Self {
        let queues = fresh_queues(&*lock(&device));
        Self {
            device,
            mem,
            queues,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            device_status: 0,
            config_generation: 0,
        }
    }

    /// The device status register.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may only change while the driver is setting the device up.
    fn queue_config_allowed(&self) -> bool {
        self.device_status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
            && self.device_status & status::DRIVER != 0
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        device.reset();
        device.interrupt().acknowledge(u32::MAX);
        self.queues = fresh_queues(&*device);
        drop(device);
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.device_status = 0;
    }

    fn fail(&mut self, why: &str) {
        tracing::warn!("virtio-mmio: device needs reset: {why}");
        self.device_status |= status::DEVICE_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        lock(&self.device)
            .interrupt()
            .trigger(VIRTIO_MMIO_INT_CONFIG);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        // The driver may only add bits (except FAILED, which it may set at any time).
        if value & old != old {
            tracing::warn!("virtio-mmio: driver cleared status bits ({old:#x} -> {value:#x})");
            return;
        }
        let added = value & !old;
        if added & status::FEATURES_OK != 0 {
            let features = self.driver_features;
            if features & VIRTIO_F_VERSION_1 == 0 {
                tracing::warn!("virtio-mmio: driver refused VIRTIO_F_VERSION_1; features not OK");
                self.device_status = value & !status::FEATURES_OK;
                return;
            }
            lock(&self.device).set_acked_features(features);
        }
        self.device_status = value;
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
                match self.device_features_select {
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
            0x070 => self.device_status,
            0x0fc => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x014 => self.device_features_select = value,
            0x020 => {
                if self.device_status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
                    tracing::warn!("virtio-mmio: driver features written in the wrong state");
                    return;
                }
                let offered = lock(&self.device).avail_features() | VIRTIO_F_VERSION_1;
                let (shift, mask) = match self.driver_features_select {
                    0 => (0, 0xffff_ffffu64),
                    1 => (32, 0xffff_ffff_0000_0000u64),
                    _ => return,
                };
                let accepted = (u64::from(value) << shift) & offered;
                self.driver_features = (self.driver_features & !mask) | accepted;
            }
            0x024 => self.driver_features_select = value,
            0x030 => self.queue_select = value,
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
            Ok(())
        }
        fn is_activated(&self) -> bool {
            self.activated_with.is_some()
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated_with = None;
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
