//! How a VM ends, and the one-shot signal every thread uses to end it.

use std::sync::Mutex;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// Why a VM stopped cleanly (errors are returned as `Err` by [`crate::Vmm::run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine: i8042 reset command or a triple fault (`reboot=t`).
    Reboot,
    /// The guest powered off (KVM system event).
    Shutdown,
    /// A vCPU executed HLT with interrupts off and no in-kernel wakeup.
    Halt,
    /// The VMM was asked to stop by its owner ([`crate::VmHandle::stop`]).
    Stopped,
    /// The guest asked for a snapshot and it was written to
    /// [`crate::VmConfig::snapshot_to`]; the VM stopped.
    Snapshotted,
}

/// The result of a VM run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmExit {
    /// Why it stopped.
    pub reason: ExitReason,
    /// Time from VMM start to the guest's first boot-timer write, if it wrote one.
    pub boot_time: Option<Duration>,
    /// CLOCK_MONOTONIC at that write, to relate it to clocks outside the VMM.
    pub boot_clock: Option<Duration>,
    /// Wall time the VM ran, from VMM start to the stop.
    pub run_time: Duration,
}

/// A stop request: a clean exit reason or a fatal error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// Clean stop.
    Exit(ExitReason),
    /// A device or vCPU failed; the message says what and why.
    Error(String),
}

/// A one-shot "stop the VM" signal shared by vCPUs, devices and the owner: the first
/// cause wins, and the event fd wakes the event loop.
#[derive(Debug)]
pub struct StopSignal {
    cause: Mutex<Option<StopCause>>,
    event: EventFd,
}

impl StopSignal {
    /// Creates an unsignalled stop signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            cause: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Requests a stop. Later requests do not override the first cause.
    pub fn stop(&self, cause: StopCause) {
        let mut slot = crate::devices::bus::lock(&self.cause);
        if slot.is_none() {
            *slot = Some(cause);
        }
        drop(slot);
        // A failed write means the counter is saturated: a wakeup is already pending.
        let _ = self.event.write(1);
    }

    /// The first stop cause, if a stop was requested.
    pub fn cause(&self) -> Option<StopCause> {
        crate::devices::bus::lock(&self.cause).clone()
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.cause().is_some()
    }

    /// The event fd that becomes readable on a stop request.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_cause_wins_and_wakes_the_loop() {
        let signal = StopSignal::new().unwrap();
        assert!(!signal.is_stopped());
        signal.stop(StopCause::Exit(ExitReason::Reboot));
        signal.stop(StopCause::Error("late".into()));
        assert_eq!(signal.cause(), Some(StopCause::Exit(ExitReason::Reboot)));
        assert_eq!(signal.event().read().unwrap(), 2);
    }
}
