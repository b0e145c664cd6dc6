//! Legacy PC devices: the 8250 serial console, the i8042 controller (for reset detection)
//! and the boot timer.

mod boot_timer;
mod i8042;
mod serial;

pub use boot_timer::{
    BOOT_TIMER_MAGIC, BootMark, BootTimer, BootTimes, SNAPSHOT_MAGIC, monotonic_now,
};
pub use i8042::{I8042, I8042_CMDLINE, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{
    EventFdTrigger, SERIAL_PORT_BASE, SERIAL_PORT_LEN, SerialConsole, SerialInput, SerialSnapshot,
};
