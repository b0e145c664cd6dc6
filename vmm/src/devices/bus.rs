//! A tiny address bus for port I/O and MMIO dispatch.
//!
//! vCPU threads look the accessed address up and call the device with the offset into its
//! window. Accesses nobody claims read as all ones and are otherwise ignored, as on real
//! hardware; they never stop the VM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes in an address window.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into the device's window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the device's window.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors while building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping windows.
    #[error("device window {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Window start.
        base: u64,
        /// Window length.
        len: u64,
    },
    /// Zero-length or wrapping window.
    #[error("device window {base:#x}+{len:#x} is empty or wraps around")]
    InvalidWindow {
        /// Window start.
        base: u64,
        /// Window length.
        len: u64,
    },
}

/// A shared device on a bus.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Window {
    len: u64,
    device: SharedBusDevice,
}

/// Address windows mapped to devices.
#[derive(Clone, Default)]
pub struct Bus {
    windows: BTreeMap<u64, Window>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.windows.iter().map(|(base, w)| (*base, w.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidWindow { base, len })?;
        let overlaps_previous = self
            .windows
            .range(..end)
            .next_back()
            .is_some_and(|(start, w)| start + w.len > base);
        if overlaps_previous {
            return Err(BusError::Overlap { base, len });
        }
        self.windows.insert(base, Window { len, device });
        Ok(())
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedBusDevice)> {
        let (base, window) = self.windows.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the window.
        (offset.checked_add(size as u64)? <= window.len).then_some((offset, &window.device))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) when no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device mutex. A device that panicked while holding its lock has been stopped
/// already; its state is still memory-safe to use, so the poison is ignored.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_straddling_accesses() {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(device.clone(), 0x100, 0x10).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x104, &mut data));
        assert_eq!(data, [4, 4]);
        assert!(bus.write(0x10e, &[1, 2]));
        assert!(
            !bus.write(0x10f, &[1, 2]),
            "access straddles the window end"
        );
        assert!(!bus.read(0xff, &mut data));
        assert_eq!(data, [0xff, 0xff]);
        assert!(!bus.read(u64::MAX, &mut data));
        assert_eq!(device.lock().unwrap().writes, vec![(0xe, vec![1, 2])]);
    }

    #[test]
    fn overlapping_and_empty_windows_are_refused() {
        let device: SharedBusDevice = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(device.clone(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(device.clone(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(device.clone(), 0xf8, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(device.clone(), 0x200, 0),
            Err(BusError::InvalidWindow { .. })
        ));
        assert!(matches!(
            bus.insert(device, u64::MAX, 2),
            Err(BusError::InvalidWindow { .. })
        ));
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x110, 0x10)
            .unwrap();
    }
}
