//! A report built by the real code paths from this host's own probe observations and
//! generated latency samples, for the renderer and schema tests.

use super::report::*;
use super::stats::Distribution;
use super::timing::StartClock;
use super::verdict::{Expectation, HostFacts, HostProcess, assess};

/// Deterministic, spread-out samples around `median_ms` (a log-normal-ish shape).
pub fn samples(median_ms: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let u = (i as f64 + 0.5) / n as f64;
            median_ms * (1.0 + 0.6 * (u - 0.5) + 0.8 * u.powi(8))
        })
        .collect()
}

/// A report with two modes and two peers (one absent), from the host's own observations.
pub fn sample_report() -> Report {
    let host = HostFacts::collect().unwrap();
    let observations = twinbox_probe::checks::collect(&twinbox_probe::checks::Options {
        host_pid: Some(std::process::id()),
        allocation_test_mib: None,
    });
    let expect = Expectation {
        host_process: HostProcess::of(std::process::id()),
        ..Expectation::default()
    };
    let verdicts = assess(&observations, &host, &expect);
    let column = |id: &str, label: &str, kind, status| Column {
        id: id.into(),
        label: label.into(),
        kind,
        version: Some("1.0".into()),
        status,
    };
    let start = |column: &str, median: f64, clock| StartTimes {
        column: column.into(),
        runs: 20,
        failures: 0,
        workload_start: Distribution::from_millis(samples(median, 20)),
        start_clock: Some(clock),
        exit: Distribution::from_millis(samples(median * 1.3, 20)),
        phases: vec![],
    };
    let density = |column: &str, mib: u64, ms: f64| DensitySeries {
        column: column.into(),
        points: [1u32, 10, 50]
            .iter()
            .map(|&k| DensityPoint {
                sandboxes: k,
                pss_per_sandbox_bytes: (mib << 20) + (u64::from(k) << 16),
                uss_per_sandbox_bytes: mib << 19,
                start_latency: Distribution::from_millis(samples(
                    ms * (1.0 + f64::from(k) / 50.0),
                    5,
                )),
                failures: 0,
            })
            .collect(),
    };
    let mut header = Header::for_this_host(
        "busybox:latest",
        &["/bin/true".into()],
        20,
        KvmHost::new(KvmKind::Emulated),
    )
    .unwrap();
    header
        .notes
        .push("generated for tests <escaped & checked>".into());
    let phase = |phase, median: f64| PhaseTimes {
        phase,
        distribution: Distribution::from_millis(samples(median, 3)).unwrap(),
    };
    let mut start_time = vec![
        start("container", 20.0, StartClock::SharedKernel),
        start("vm", 180.0, StartClock::HostReadTime),
        start("runc", 25.0, StartClock::SharedKernel),
    ];
    start_time[0].phases = vec![phase(Phase::ContainerSetup, 12.0)];
    start_time[1].phases = vec![
        phase(Phase::VmmStart, 8.0),
        phase(Phase::KernelBoot, 120.0),
        phase(Phase::AgentReady, 150.0),
    ];
    Report {
        schema_version: REPORT_SCHEMA_VERSION,
        header,
        columns: vec![
            column("container", "container", ColumnKind::Mode, ColumnStatus::Ok),
            column("vm", "vm", ColumnKind::Mode, ColumnStatus::Ok),
            column("runc", "runc", ColumnKind::Peer, ColumnStatus::Ok),
            column(
                "runsc",
                "runsc",
                ColumnKind::Peer,
                ColumnStatus::Absent {
                    reason: "runsc is not installed (apt-get install runsc)".into(),
                },
            ),
        ],
        start_time,
        weight: vec![Weight {
            column: "container".into(),
            sandboxes: 3,
            pss_bytes: 900 << 10,
            uss_bytes: 600 << 10,
            disk_shared_bytes: 2 << 20,
            disk_per_sandbox_bytes: 12 << 10,
        }],
        density: vec![
            density("container", 1, 20.0),
            density("vm", 40, 180.0),
            density("runc", 2, 25.0),
        ],
        isolation: Isolation::from_verdicts(&[("container", verdicts.clone()), ("runc", verdicts)]),
    }
}
