//! The workload-start marker.
//!
//! `twinbox-probe start-marker` prints one line, `TWINBOX-PROBE-START {json}`, the instant
//! it runs as the workload, then (optionally) execs the real command. The line carries the
//! sandbox's clocks and its kernel's boot id, which lets the host pick the right clock:
//!
//! - same boot id as the host (a container, any peer on the host kernel): the sandbox's
//!   `CLOCK_REALTIME` is the host's, so the host subtracts its own launch timestamp from
//!   `realtime_ns` and gets an exact figure with no pipe latency. `CLOCK_REALTIME` rather than
//!   `CLOCK_MONOTONIC` because time namespaces may offset the latter but never the former.
//! - another boot id (a VM: the guest kernel's clocks start at guest boot and its wall clock
//!   is only as good as its RTC), the host timestamps the line itself when it reads it from the
//!   sandbox's stdout (or the file given with `--out`). The guest's `boottime_ns` still tells
//!   how long the guest kernel had been up when the workload started (kernel boot + agent).

use serde::{Deserialize, Serialize};

/// The prefix of the marker line.
pub const MARKER_PREFIX: &str = "TWINBOX-PROBE-START ";

/// What the sandbox's clocks read when the workload started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartMarker {
    /// `CLOCK_REALTIME`, nanoseconds since the epoch.
    pub realtime_ns: u64,
    /// `CLOCK_MONOTONIC`, nanoseconds.
    pub monotonic_ns: u64,
    /// `CLOCK_BOOTTIME`, nanoseconds since this kernel booted.
    pub boottime_ns: u64,
    /// The sandbox kernel's boot id (`/proc/sys/kernel/random/boot_id`), if readable.
    pub boot_id: Option<String>,
    /// The probe's pid inside the sandbox.
    pub pid: u32,
}

/// Reads a clock in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    if rc != 0 {
        return 0;
    }
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

impl StartMarker {
    /// Reads the clocks now.
    pub fn now() -> Self {
        StartMarker {
            realtime_ns: clock_ns(libc::CLOCK_REALTIME),
            monotonic_ns: clock_ns(libc::CLOCK_MONOTONIC),
            boottime_ns: clock_ns(libc::CLOCK_BOOTTIME),
            boot_id: crate::checks::kernel::boot_id(),
            pid: std::process::id(),
        }
    }

    /// The marker line, without the trailing newline.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_string(self).expect("a StartMarker always serializes");
        format!("{MARKER_PREFIX}{json}")
    }

    /// Parses a marker line; `None` when `line` is not one (workload output, say).
    pub fn parse_line(line: &str) -> Option<Self> {
        let json = line.trim_end().strip_prefix(MARKER_PREFIX)?;
        serde_json::from_str(json).ok()
    }

    /// Finds the first marker line in a sandbox's output.
    pub fn find_in(output: &str) -> Option<Self> {
        output.lines().find_map(Self::parse_line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_line_round_trips_and_is_found_among_output() {
        let marker = StartMarker::now();
        assert!(marker.realtime_ns > 1_600_000_000_000_000_000);
        assert!(marker.boottime_ns >= marker.monotonic_ns);
        let output = format!("booting\n{}\nhello from the workload\n", marker.to_line());
        assert_eq!(StartMarker::find_in(&output), Some(marker));
        assert_eq!(
            StartMarker::parse_line("TWINBOX-PROBE-START not json"),
            None
        );
        assert_eq!(StartMarker::find_in("no marker here"), None);
    }
}
