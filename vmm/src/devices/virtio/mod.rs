//! virtio devices over the MMIO transport: the transport itself, the device trait, and
//! the block and vsock devices.

pub mod block;
pub mod mmio;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemory;

/// VIRTIO_F_VERSION_1: the modern (1.0+) interface; twinbox offers nothing older.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used buffer was added to a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Interrupt status bit: the configuration changed (or the device needs a reset).
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Errors a device reports when the driver activates it.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up the wrong number of queues.
    #[error("expected {expected} queues, the driver configured {actual}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues given.
        actual: usize,
    },
    /// The device's backend failed to start.
    #[error("backend failed: {0}")]
    Backend(String),
}

/// The interrupt line of a virtio-mmio device: the status register the driver reads and
/// acknowledges, and an irqfd that raises the IOAPIC pin.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    event: EventFd,
}

impl IrqTrigger {
    /// A trigger with a fresh (not yet registered) irqfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Sets `bits` in the interrupt status and raises the interrupt.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(error) = self.event.write(1) {
            tracing::warn!("virtio: cannot raise interrupt: {error}");
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets the interrupt status register to a saved value without raising the interrupt
    /// (a restored irqchip already holds whatever the guest had pending).
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// Clears acknowledged status bits.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd to register with KVM.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// Records the features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, signalled (via ioeventfd) when the driver notifies it.
    fn queue_events(&self) -> &[EventFd];
    /// The device's interrupt.
    fn interrupt(&self) -> &Arc<IrqTrigger>;
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (most devices ignore writes).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>) -> Result<(), ActivateError>;
    /// Whether the device is running.
    fn is_activated(&self) -> bool;
    /// Stops the device and drops its queues (driver reset).
    fn reset(&mut self);
    /// The queues of an activated device (empty when it is not activated), for a snapshot.
    fn active_queues(&self) -> &[Queue];
    /// Why the device's state cannot be saved right now, if it cannot (e.g. open
    /// connections to host sockets that a snapshot cannot hold).
    fn snapshot_blocker(&self) -> Option<String> {
        None
    }
}

/// Copies the bytes of `config` at `offset` into `data`; reads past the end return zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = config.len().min(start.saturating_add(data.len()));
    data[..end - start].copy_from_slice(&config[start..end]);
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Guest memory and queues for device unit tests.
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use crate::vstate::memory::{GuestMemory, MemoryBacking, create_guest_memory};

    /// 16 MiB of guest memory.
    pub fn memory() -> GuestMemory {
        create_guest_memory(16 << 20, MemoryBacking::Anonymous).unwrap()
    }

    /// A descriptor: `(address, length, flags)`.
    pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// A mock split queue of `size` entries at address 0.
    pub fn mock_queue(mem: &GuestMemory, size: u16) -> MockSplitQueue<'_, GuestMemory> {
        MockSplitQueue::create(mem, GuestAddress(0), size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xaa; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_set_and_acknowledged() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger(VIRTIO_MMIO_INT_VRING);
        irq.trigger(VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.event().read().unwrap(), 2);
        irq.acknowledge(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
    }
}
