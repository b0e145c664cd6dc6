//! The i8042 keyboard controller, reduced to what a microVM needs: the CPU reset command
//! (0xfe on port 0x64) ends the VM as a guest reboot, and the controller answers the
//! commands Linux sends while probing it (self test, reading and writing the command
//! byte), so the driver finishes at once instead of timing out. No keyboard or mouse is
//! attached: [`I8042_CMDLINE`] (which the VMM appends) tells Linux so, sparing it the
//! command timeouts of probing them.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitReason, StopCause, StopSignal};

/// First i8042 port (data).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64 (data and command/status).
pub const I8042_PORT_LEN: u64 = 5;

/// Kernel arguments that describe this controller: no keyboard, no aux port.
pub const I8042_CMDLINE: &str = "i8042.nokbd i8042.noaux";

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const STATUS_NOT_INHIBITED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// Longest reply queue (a guest cannot grow the VMM's memory through it).
const MAX_OUTPUT: usize = 16;

/// The i8042 on the port I/O bus.
pub struct I8042 {
    stop: Arc<StopSignal>,
    control: u8,
    output: VecDeque<u8>,
    /// The command whose data byte the next write to the data port carries.
    pending_command: Option<u8>,
    last_was_command: bool,
}

impl I8042 {
    /// An i8042 whose reset command stops the VM through `stop`.
    pub fn new(stop: Arc<StopSignal>) -> Self {
        Self {
            stop,
            control: CTR_AUX_DISABLED,
            output: VecDeque::new(),
            pending_command: None,
            last_was_command: false,
        }
    }

    fn reply(&mut self, byte: u8) {
        if self.output.len() < MAX_OUTPUT {
            self.output.push_back(byte);
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn command(&mut self, command: u8) {
        self.last_was_command = true;
        match command {
            CMD_READ_CTR => self.reply(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending_command = Some(command),
            CMD_SELF_TEST => self.reply(SELF_TEST_OK),
            CMD_TEST_KBD | CMD_TEST_AUX => self.reply(PORT_TEST_OK),
            CMD_DISABLE_KBD => self.control |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.control &= !CTR_KBD_DISABLED,
            CMD_DISABLE_AUX => self.control |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.control &= !CTR_AUX_DISABLED,
            CMD_READ_OUTPUT_PORT => self.reply(0x01), // A20 on, no reset
            CMD_RESET_CPU => self.stop.stop(StopCause::Exit(ExitReason::Reboot)),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending_command.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            // Output port bit 0 clear resets the CPU.
            Some(CMD_WRITE_OUTPUT_PORT) if value & 0x01 == 0 => {
                self.stop.stop(StopCause::Exit(ExitReason::Reboot))
            }
            // No keyboard is attached: bytes for it are dropped.
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, &mut *data) {
            (DATA_OFFSET, [byte]) => *byte = self.output.pop_front().unwrap_or(0),
            (COMMAND_OFFSET, [byte]) => *byte = self.status(),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA_OFFSET, [value]) => self.data(*value),
            (COMMAND_OFFSET, [command]) => self.command(*command),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (Arc<StopSignal>, I8042) {
        let stop = Arc::new(StopSignal::new().unwrap());
        (stop.clone(), I8042::new(stop))
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut byte = [0u8];
        dev.read(offset, &mut byte);
        byte[0]
    }

    #[test]
    fn reset_command_stops_the_vm_as_a_reboot() {
        let (stop, mut dev) = device();
        dev.write(4, &[CMD_READ_CTR]);
        dev.write(0, &[CMD_RESET_CPU]); // a data byte, not a command
        dev.write(4, &[CMD_RESET_CPU, CMD_RESET_CPU]); // wrong width: ignored
        assert!(!stop.is_stopped());
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(stop.cause(), Some(StopCause::Exit(ExitReason::Reboot)));
    }

    #[test]
    fn output_port_reset_also_reboots() {
        let (stop, mut dev) = device();
        dev.write(4, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(0, &[0x03]);
        assert!(!stop.is_stopped());
        dev.write(4, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(0, &[0x02]);
        assert!(stop.is_stopped());
    }

    #[test]
    fn answers_the_linux_probe_sequence() {
        let (_, mut dev) = device();
        assert_eq!(
            read(&mut dev, 4) & STATUS_OUTPUT_FULL,
            0,
            "nothing to flush"
        );
        dev.write(4, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, 0), SELF_TEST_OK);
        dev.write(4, &[CMD_READ_CTR]);
        let ctr = read(&mut dev, 0);
        dev.write(4, &[CMD_WRITE_CTR]);
        dev.write(0, &[ctr | 0x01]);
        dev.write(4, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, 0), ctr | 0x01);
        dev.write(4, &[CMD_TEST_KBD]);
        assert_eq!(read(&mut dev, 0), PORT_TEST_OK);
        assert_eq!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn replies_are_bounded_and_odd_accesses_ignored() {
        let (_, mut dev) = device();
        for _ in 0..1000 {
            dev.write(4, &[CMD_SELF_TEST]);
        }
        assert_eq!(dev.output.len(), MAX_OUTPUT);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        dev.write(2, &[CMD_RESET_CPU]);
        assert_eq!(read(&mut dev, 2), 0xff);
    }
}
