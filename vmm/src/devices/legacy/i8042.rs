//! The i8042 keyboard controller, reduced to what a microVM needs: the CPU reset command
//! (0xfe on port 0x64) ends the VM as a guest reboot.

use std::sync::Arc;

use vm_superio::I8042Device;

use crate::devices::bus::BusDevice;
use crate::exit::{ResetTrigger, StopSignal};

/// First i8042 port (data).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64 (data and command/status).
pub const I8042_PORT_LEN: u64 = 5;

/// The i8042 on the port I/O bus.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 whose reset command stops the VM through `stop`.
    pub fn new(stop: Arc<StopSignal>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(stop)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match data {
            [byte] => *byte = self.inner.read(offset as u8),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [value] = data {
            // The reset trigger cannot fail.
            let _ = self.inner.write(offset as u8, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ExitReason, StopCause};

    #[test]
    fn reset_command_stops_the_vm_as_a_reboot() {
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut dev = I8042::new(stop.clone());
        dev.write(4, &[0x20]);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xfe, 0xfe]); // wrong width: ignored
        assert!(!stop.is_stopped());
        let mut status = [0u8];
        dev.read(4, &mut status);
        assert_eq!(status, [0]);
        dev.write(4, &[0xfe]);
        assert_eq!(stop.cause(), Some(StopCause::Exit(ExitReason::Reboot)));
    }
}
