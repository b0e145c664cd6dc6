//! Time to workload start, from the probe's start marker.

use std::time::{Duration, Instant};

use twinbox_probe::StartMarker;
use twinbox_probe::marker::clock_ns;

use super::report::Phase;
use crate::vm::phases::{BootPhases, Milestone};

/// The host's clocks just before a sandbox is started.
#[derive(Debug, Clone, Copy)]
pub struct LaunchClock {
    /// `CLOCK_REALTIME` in ns, comparable with a marker written on the host kernel.
    pub realtime_ns: u64,
    /// The same instant as a monotonic `Instant`, for host-side read timestamps.
    pub instant: Instant,
    /// `CLOCK_MONOTONIC` in ns, comparable with a VM's start milestones.
    pub monotonic_ns: u64,
}

impl LaunchClock {
    /// Reads the clocks now: call it right before starting the sandbox.
    pub fn now() -> Self {
        LaunchClock {
            instant: Instant::now(),
            monotonic_ns: clock_ns(libc::CLOCK_MONOTONIC),
            realtime_ns: clock_ns(libc::CLOCK_REALTIME),
        }
    }
}

/// Which clock a workload-start time was measured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartClock {
    /// The sandbox runs on the host kernel: its `CLOCK_REALTIME` in the marker is the host's,
    /// so the time is exact.
    SharedKernel,
    /// The sandbox has its own kernel (a VM): the host's timestamp of reading the marker
    /// line, which adds the output path's latency (stdout relay, usually well under 1 ms).
    HostReadTime,
}

/// Time from `launch` to the workload start recorded in `marker`, which the host read at
/// `read_at`. Uses the marker's own clock when the sandbox shares the host kernel (same boot
/// id), and the read time otherwise.
pub fn workload_start(
    launch: &LaunchClock,
    marker: &StartMarker,
    read_at: Instant,
    host_boot_id: Option<&str>,
) -> (Duration, StartClock) {
    let shared = host_boot_id.is_some() && marker.boot_id.as_deref() == host_boot_id;
    if shared {
        // A realtime step between launch and marker (NTP) would show as 0 here rather than
        // as a negative time; over milliseconds that is the lesser evil.
        let ns = marker.realtime_ns.saturating_sub(launch.realtime_ns);
        (Duration::from_nanos(ns), StartClock::SharedKernel)
    } else {
        (
            read_at.saturating_duration_since(launch.instant),
            StartClock::HostReadTime,
        )
    }
}

/// The report phases of a VM and the milestones that end them.
const VM_PHASE_ENDS: [(Phase, Milestone); 3] = [
    (Phase::VmmStart, Milestone::VmEntered),
    (Phase::KernelBoot, Milestone::KernelBooted),
    (Phase::AgentReady, Milestone::AgentReady),
];

/// Launch to the end of each VM start phase the VM recorded (all on `CLOCK_MONOTONIC`);
/// milestones from before `launch` (another sandbox's) are left out.
pub fn vm_phases(launch: &LaunchClock, phases: &BootPhases) -> Vec<(Phase, Duration)> {
    VM_PHASE_ENDS
        .iter()
        .filter_map(|&(phase, milestone)| {
            let ns = phases.get(milestone)?.checked_sub(launch.monotonic_ns)?;
            Some((phase, Duration::from_nanos(ns)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_marker_clock_on_the_host_kernel_and_read_time_otherwise() {
        let host_boot_id = twinbox_probe::checks::kernel::boot_id();
        let launch = LaunchClock::now();
        std::thread::sleep(Duration::from_millis(20));
        let marker = StartMarker::now();
        std::thread::sleep(Duration::from_millis(30));
        let read_at = Instant::now();

        let (on_host, clock) = workload_start(&launch, &marker, read_at, host_boot_id.as_deref());
        assert_eq!(clock, StartClock::SharedKernel);
        assert!(on_host >= Duration::from_millis(20) && on_host < Duration::from_millis(50));

        let guest = StartMarker {
            boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..marker
        };
        let (in_vm, clock) = workload_start(&launch, &guest, read_at, host_boot_id.as_deref());
        assert_eq!(clock, StartClock::HostReadTime);
        assert!(in_vm >= Duration::from_millis(50));
        assert_eq!(in_vm, read_at - launch.instant);
    }

    #[test]
    fn vm_phases_count_from_launch_on_the_monotonic_clock() {
        let launch = LaunchClock::now();
        let mut phases = BootPhases::default();
        let at = |ms: u64| Duration::from_nanos(launch.monotonic_ns) + Duration::from_millis(ms);
        phases.mark(Milestone::VmmStarted, at(1));
        phases.mark(Milestone::VmEntered, at(5));
        phases.mark(Milestone::KernelBooted, at(90));
        phases.mark(Milestone::WorkloadCreated, at(130));
        assert_eq!(
            vm_phases(&launch, &phases),
            [
                (Phase::VmmStart, Duration::from_millis(5)),
                (Phase::KernelBoot, Duration::from_millis(90)),
            ]
        );
        let mut stale = BootPhases::default();
        stale.mark(
            Milestone::AgentReady,
            Duration::from_nanos(launch.monotonic_ns - 1),
        );
        assert_eq!(vm_phases(&launch, &stale), []);
    }
}
