//! The 8250 UART (vm-superio) on COM1, and the event handler that feeds it host input.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::{BusDevice, lock};

/// COM1's first port.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// COM1's eight registers.
pub const SERIAL_PORT_LEN: u64 = 8;

/// An eventfd as a vm-superio interrupt trigger (it is registered as an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

type Uart = Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// vm-superio's `SerialState` field by field, for serde's remote derive.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// The UART's registers and receive FIFO, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot(#[serde(with = "SerialStateDef")] SerialState);

/// The serial console on the port I/O bus.
pub struct SerialConsole {
    uart: Uart,
}

impl SerialConsole {
    /// A UART that raises `interrupt` and writes guest output to `output`.
    pub fn new(interrupt: EventFd, output: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger(interrupt), output),
        }
    }

    /// A UART in a saved state (registers and pending input), as [`SerialConsole::new`]
    /// otherwise. Fails on a state whose receive FIFO overflows.
    pub fn from_snapshot(
        interrupt: EventFd,
        output: Box<dyn Write + Send>,
        snapshot: &SerialSnapshot,
    ) -> Result<Self, String> {
        Serial::from_state(&snapshot.0, EventFdTrigger(interrupt), NoEvents, output)
            .map(|uart| Self { uart })
            .map_err(|error| format!("invalid serial port state: {error:?}"))
    }

    /// The UART's state for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        SerialSnapshot(self.uart.state())
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or_else(|error| {
            tracing::warn!("serial console: cannot queue input: {error:?}");
            0
        })
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match data {
            [byte] if offset < SERIAL_PORT_LEN => *byte = self.uart.read(offset as u8),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [value] = data
            && offset < SERIAL_PORT_LEN
            && let Err(error) = self.uart.write(offset as u8, *value)
        {
            tracing::warn!("serial console: output failed: {error:?}");
        }
    }
}

/// Feeds bytes from a host fd (the VMM's stdin) into the serial console.
pub struct SerialInput {
    console: Arc<Mutex<SerialConsole>>,
    input: OwnedFd,
}

impl SerialInput {
    /// Reads `input` into `console` whenever it is readable.
    pub fn new(console: Arc<Mutex<SerialConsole>>, input: OwnedFd) -> Self {
        Self { console, input }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut console = lock(&self.console);
        let capacity = console.input_capacity();
        let mut buffer = [0u8; 64];
        let want = capacity.min(buffer.len());
        if want == 0 {
            // The guest has not drained the FIFO yet; try again on the next event.
            return;
        }
        match nix_read(self.input.as_raw_fd(), &mut buffer[..want]) {
            Ok(0) => {
                // EOF: stop watching the input.
                let _ = ops.remove(events);
            }
            Ok(read) => {
                console.enqueue_input(&buffer[..read]);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => {
                tracing::warn!("serial console: cannot read input, detaching it: {error}");
                let _ = ops.remove(events);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(error) = ops.add(Events::new(&self.input, EventSet::IN)) {
            tracing::debug!("serial console: input is not pollable, guest input is off: {error}");
        }
    }
}

fn nix_read(fd: i32, buffer: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buffer` is valid for `buffer.len()` writable bytes and `fd` is open.
    let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    if read < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(read as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_output_and_receives_input() {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut serial = SerialConsole::new(interrupt.try_clone().unwrap(), Box::new(sink.clone()));
        for byte in b"hi" {
            serial.write(0, &[*byte]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the "received data available" interrupt, then queue input.
        serial.write(1, &[0x01]);
        assert_eq!(serial.enqueue_input(b"x"), 1);
        assert!(interrupt.read().unwrap() >= 1);
        let mut byte = [0u8];
        serial.read(0, &mut byte);
        assert_eq!(byte, *b"x");
        // Wide and out-of-window accesses are ignored.
        let mut wide = [0u8; 2];
        serial.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        serial.write(9, &[1]);
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial =
            SerialConsole::new(interrupt.try_clone().unwrap(), Box::new(Sink::default()));
        serial.write(3, &[0x80]); // DLAB
        serial.write(0, &[0x0c]); // baud divisor
        serial.write(3, &[0x03]); // 8N1
        serial.write(7, &[0x5a]); // scratch
        serial.enqueue_input(b"ab");
        let saved = serial.snapshot();
        let json = serde_json::to_string(&saved).unwrap();
        let loaded: SerialSnapshot = serde_json::from_str(&json).unwrap();
        let mut restored =
            SerialConsole::from_snapshot(interrupt, Box::new(Sink::default()), &loaded).unwrap();
        assert_eq!(restored.snapshot(), saved);
        let mut byte = [0u8];
        restored.read(7, &mut byte);
        assert_eq!(byte, [0x5a]);
        restored.read(0, &mut byte);
        assert_eq!(byte, *b"a");

        let overfull = SerialSnapshot(SerialState {
            in_buffer: vec![0; 4096],
            ..SerialState::default()
        });
        let error = SerialConsole::from_snapshot(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Box::new(Sink::default()),
            &overfull,
        )
        .err()
        .unwrap();
        assert!(error.contains("serial"), "{error}");
    }
}
