//! The boot timer: when the guest writes [`BOOT_TIMER_MAGIC`] to the first byte of the
//! device window, the VMM records the time since it started (Firecracker's boot timer
//! protocol; from a guest shell: `devmem 0xd0000000 8 123`). Writing [`SNAPSHOT_MAGIC`]
//! instead asks the VMM to snapshot the VM (when it was configured to) and stop.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::devices::bus::{BusDevice, lock};
use crate::exit::{ExitReason, StopCause, StopSignal};

/// The value a guest writes to signal "booted".
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// The value a guest writes to the boot timer's first byte to ask for a snapshot.
pub const SNAPSHOT_MAGIC: u8 = 0x73;

/// One boot-timer mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootMark {
    /// Time from VMM start to the guest's magic write.
    pub since_start: Duration,
    /// The host's CLOCK_MONOTONIC at the write, to relate it to other processes' clocks
    /// (e.g. a benchmark that spawned the VMM).
    pub monotonic: Duration,
}

/// Boot-timer records shared with the VMM owner.
#[derive(Debug, Default)]
pub struct BootTimes {
    marks: Mutex<Vec<BootMark>>,
    entered: OnceLock<Duration>,
}

impl BootTimes {
    /// Records that the guest is about to run for the first time (vCPU 0's first `KVM_RUN`);
    /// later calls keep the first time.
    pub fn mark_entered(&self) {
        let _ = self.entered.set(monotonic_now());
    }

    /// CLOCK_MONOTONIC when the guest first ran, once it has.
    pub fn entered(&self) -> Option<Duration> {
        self.entered.get().copied()
    }

    /// The first mark.
    pub fn first(&self) -> Option<BootMark> {
        lock(&self.marks).first().copied()
    }

    /// All marks in order.
    pub fn all(&self) -> Vec<BootMark> {
        lock(&self.marks).clone()
    }
}

/// The host's CLOCK_MONOTONIC.
pub fn monotonic_now() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The boot-timer MMIO device.
pub struct BootTimer {
    start: Instant,
    times: Arc<BootTimes>,
    snapshot: Option<Arc<StopSignal>>,
}

impl BootTimer {
    /// A boot timer counting from `start` (the VMM's start). With `snapshot`, a guest write
    /// of [`SNAPSHOT_MAGIC`] stops the VM with [`ExitReason::Snapshotted`] (the VMM then
    /// writes the snapshot); without, that write is ignored.
    pub fn new(start: Instant, times: Arc<BootTimes>, snapshot: Option<Arc<StopSignal>>) -> Self {
        Self {
            start,
            times,
            snapshot,
        }
    }

    fn request_snapshot(&self) {
        match &self.snapshot {
            Some(stop) => {
                tracing::info!("guest asked for a snapshot: pausing the VM");
                stop.stop(StopCause::Exit(ExitReason::Snapshotted));
            }
            None => tracing::debug!("guest asked for a snapshot, but none was configured"),
        }
    }
}

/// Marks beyond this many are dropped so a guest cannot grow the VMM's memory.
const MAX_MARKS: usize = 64;

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        match data.first() {
            Some(&BOOT_TIMER_MAGIC) => {}
            Some(&SNAPSHOT_MAGIC) => return self.request_snapshot(),
            _ => return,
        }
        let monotonic = monotonic_now();
        let elapsed = self.start.elapsed();
        let mut marks = lock(&self.times.marks);
        if marks.len() < MAX_MARKS {
            marks.push(BootMark {
                since_start: elapsed,
                monotonic,
            });
        }
        tracing::info!(
            "guest boot timer: {}.{:03} ms since VMM start (mark {})",
            elapsed.as_millis(),
            elapsed.as_micros() % 1000,
            marks.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_at_offset_zero_records_a_mark() {
        let times = Arc::new(BootTimes::default());
        let start = Instant::now();
        let mut timer = BootTimer::new(start, times.clone(), None);
        timer.write(1, &[BOOT_TIMER_MAGIC]);
        timer.write(0, &[BOOT_TIMER_MAGIC - 1]);
        timer.write(0, &[]);
        assert_eq!(times.first(), None);
        let before = monotonic_now();
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        let first = times.first().unwrap();
        assert!(first.since_start <= start.elapsed());
        assert!(first.monotonic >= before && first.monotonic <= monotonic_now());
        for _ in 0..2 * MAX_MARKS {
            timer.write(0, &[BOOT_TIMER_MAGIC, 0, 0, 0]);
        }
        assert_eq!(times.all().len(), MAX_MARKS);
        assert_eq!(times.first(), Some(first));
    }

    #[test]
    fn the_snapshot_magic_stops_the_vm_only_when_configured() {
        let times = Arc::new(BootTimes::default());
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut ignoring = BootTimer::new(Instant::now(), times.clone(), None);
        ignoring.write(0, &[SNAPSHOT_MAGIC]);
        assert!(!stop.is_stopped());
        let mut snapshotting = BootTimer::new(Instant::now(), times.clone(), Some(stop.clone()));
        snapshotting.write(1, &[SNAPSHOT_MAGIC]);
        assert!(!stop.is_stopped());
        snapshotting.write(0, &[SNAPSHOT_MAGIC]);
        assert_eq!(stop.cause(), Some(StopCause::Exit(ExitReason::Snapshotted)));
        assert_eq!(times.first(), None, "a snapshot request is no boot mark");
    }

    #[test]
    fn the_first_guest_entry_is_kept() {
        let times = BootTimes::default();
        assert_eq!(times.entered(), None);
        let before = monotonic_now();
        times.mark_entered();
        let entered = times.entered().unwrap();
        assert!(entered >= before && entered <= monotonic_now());
        times.mark_entered();
        assert_eq!(times.entered(), Some(entered));
    }
}
