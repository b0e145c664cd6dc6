//! The compare probe in known setups: runc containers built by the tests (default
//! capabilities vs CAP_SYS_ADMIN, limits set vs unset, own vs host network namespace), the
//! host itself, the start marker, and an HTML report rendered in headless Chromium.
//!
//! The probe is bind-mounted into each container read-only, as the orchestration will do.
//! The assertions are on the host's verdicts, not on raw observation values.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use twinbox::compare::probe::{
    IN_SANDBOX_PATH, isolation_args, parse_observations, start_marker_args,
};
use twinbox::compare::render::{self, SERIES_COLOURS};
use twinbox::compare::report::*;
use twinbox::compare::stats::Distribution;
use twinbox::compare::timing::{LaunchClock, StartClock, workload_start};
use twinbox::compare::verdict::{Expectation, HostFacts, HostProcess, Verdict, assess};
use twinbox_probe::{Observations, StartMarker};
use twinbox_tests::runc::RuncBundle;

/// A runc bundle with the probe bind-mounted in.
fn probe_bundle(name: &str) -> RuncBundle {
    let mut bundle = RuncBundle::new(name).expect("runc bundle");
    bundle.bind_file(
        &twinbox_tests::workspace_bin("twinbox-probe"),
        IN_SANDBOX_PATH,
    );
    bundle
}

/// Runs `twinbox-probe isolation` in the bundle, with this test process as the host-only pid.
fn observe(bundle: &RuncBundle, allocation_test_mib: Option<u64>) -> Observations {
    let mut argv = vec![IN_SANDBOX_PATH.to_string()];
    argv.extend(isolation_args(
        Some(std::process::id()),
        allocation_test_mib,
    ));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let output = bundle.run_ok(&argv).expect("probe run");
    parse_observations(&String::from_utf8_lossy(&output.stdout)).expect("observations")
}

/// The expectation for a bundle: this process as the host pid, the bundle as a host path.
fn expectation(bundle: Option<&RuncBundle>) -> Expectation {
    Expectation {
        host_process: HostProcess::of(std::process::id()),
        host_paths: bundle
            .map(|b| b.path().display().to_string())
            .into_iter()
            .collect(),
        ..Expectation::default()
    }
}

fn judge(observations: &Observations, expect: &Expectation) -> BTreeMap<&'static str, Verdict> {
    let host = HostFacts::collect().expect("host facts");
    assess(observations, &host, expect)
        .into_iter()
        .map(|verdict| (verdict.id, verdict))
        .collect()
}

fn isolated_ids(rows: &BTreeMap<&'static str, Verdict>) -> Vec<&'static str> {
    rows.values().filter(|v| v.isolated).map(|v| v.id).collect()
}

#[test]
fn cap_add_sys_admin_loses_the_capabilities_row() {
    let default = probe_bundle("caps-default");
    let mut elevated = probe_bundle("caps-sys-admin");
    elevated.add_capability("CAP_SYS_ADMIN");

    let plain = judge(&observe(&default, None), &expectation(Some(&default)));
    let admin = judge(&observe(&elevated, None), &expectation(Some(&elevated)));

    assert!(
        plain["capabilities"].isolated,
        "{:?}",
        plain["capabilities"]
    );
    assert!(
        !admin["capabilities"].isolated,
        "{:?}",
        admin["capabilities"]
    );
    assert!(admin["capabilities"].observed.contains("SYS_ADMIN"));
    // The capability really works: mount passes its permission check only with it.
    assert!(
        plain["syscall.mount"].isolated,
        "{:?}",
        plain["syscall.mount"]
    );
    assert!(
        !admin["syscall.mount"].isolated,
        "{:?}",
        admin["syscall.mount"]
    );

    // What a runc container shares with the host regardless of capabilities.
    for rows in [&plain, &admin] {
        for shared in ["kernel.identity", "identity.boot_id", "resources.memtotal"] {
            assert!(!rows[shared].isolated, "{shared}: {:?}", rows[shared]);
        }
        for own in [
            "pids.host_visible",
            "devices.block",
            "devices.kvm",
            "kernel_info.kallsyms",
        ] {
            assert!(rows[own].isolated, "{own}: {:?}", rows[own]);
        }
        // The rootfs is a bind of the bundle directory: its host path shows.
        assert!(!rows["mounts.host_paths"].isolated);
        assert!(
            rows["mounts.host_paths"].observed.contains("runc-bundle-"),
            "{:?}",
            rows["mounts.host_paths"]
        );
    }
}

#[test]
fn limits_set_vs_unset() {
    const PIDS: u64 = 32;
    const MEMORY: u64 = 64 << 20;
    // The allocation test touches more than the limit: the limit must stop it.
    const ALLOCATE_MIB: u64 = 96;
    let mut limited = probe_bundle("limits-set");
    limited.config["linux"]["resources"]["pids"] = serde_json::json!({ "limit": PIDS });
    limited.config["linux"]["resources"]["memory"] = serde_json::json!({ "limit": MEMORY });
    let unlimited = probe_bundle("limits-unset");

    let configured = Expectation {
        pids_limit: Some(PIDS),
        memory_limit_bytes: Some(MEMORY),
        ..expectation(Some(&limited))
    };
    let set = judge(&observe(&limited, Some(ALLOCATE_MIB)), &configured);
    assert!(set["limits.pids"].isolated, "{:?}", set["limits.pids"]);
    assert!(set["limits.memory"].isolated, "{:?}", set["limits.memory"]);
    assert!(
        set["limits.memory"].observed.contains("killed"),
        "{:?}",
        set["limits.memory"]
    );

    let unset = judge(
        &observe(&unlimited, Some(ALLOCATE_MIB)),
        &expectation(Some(&unlimited)),
    );
    assert!(!unset["limits.pids"].isolated, "{:?}", unset["limits.pids"]);
    assert!(
        !unset["limits.memory"].isolated,
        "{:?}",
        unset["limits.memory"]
    );
    assert!(
        unset["limits.memory"].observed.contains("completed"),
        "{:?}",
        unset["limits.memory"]
    );

    // Only the limit rows differ between the two.
    let mut changed = isolated_ids(&set);
    changed.retain(|id| !isolated_ids(&unset).contains(id));
    assert_eq!(changed, ["limits.memory", "limits.pids"]);
}

#[test]
fn host_network_namespace_vs_none() {
    let own = probe_bundle("net-own");
    let mut shared = probe_bundle("net-host");
    shared.share_host_namespace("network");

    let own_rows = judge(&observe(&own, None), &expectation(Some(&own)));
    let shared_rows = judge(&observe(&shared, None), &expectation(Some(&shared)));
    let host_rows = judge(
        &twinbox_probe::checks::collect(&Default::default()),
        &expectation(None),
    );

    for id in ["network.interfaces", "network.external"] {
        assert!(own_rows[id].isolated, "{id}: {:?}", own_rows[id]);
        // Sharing the host's namespace shows exactly what the host itself sees.
        assert_eq!(shared_rows[id], host_rows[id], "{id}");
    }
    // This machine kind has an uplink: the host network is not loopback-only.
    assert!(!shared_rows["network.interfaces"].isolated);
}

#[test]
fn probe_on_the_host_isolates_nothing() {
    let output = std::process::Command::new(twinbox_tests::workspace_bin("twinbox-probe"))
        .args(isolation_args(Some(std::process::id()), None))
        .output()
        .expect("probe on the host");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let observations = parse_observations(&String::from_utf8_lossy(&output.stdout)).unwrap();
    let rows = judge(&observations, &expectation(None));
    // On the host nothing is isolated; a row may only pass because this kernel lacks the
    // feature altogether (no /proc/kcore, no sysrq, no kexec here).
    for verdict in rows.values().filter(|v| v.isolated) {
        assert!(
            verdict.observed.starts_with("absent") || verdict.observed == "denied (ENOSYS)",
            "isolated on the host: {verdict:?}"
        );
    }
    for id in [
        "kernel.identity",
        "pids.host_visible",
        "user.host_root",
        "capabilities",
        "seccomp",
        "mounts.host_paths",
        "limits.memory",
        "limits.pids",
        "identity.boot_id",
    ] {
        assert!(!rows[id].isolated, "{id}: {:?}", rows[id]);
    }
}

/// Times `runs` runc starts of `start-marker -- /bin/true`: (workload start, exit) each.
fn time_runc_starts(bundle: &RuncBundle, runs: usize) -> Vec<(Duration, Duration)> {
    let host_boot_id = twinbox_probe::checks::kernel::boot_id();
    let mut argv = vec![IN_SANDBOX_PATH.to_string()];
    argv.extend(start_marker_args(&["/bin/true".to_string()]));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    (0..runs)
        .map(|_| {
            let launch = LaunchClock::now();
            let output = bundle.run_ok(&argv).expect("runc run");
            let exited = launch.instant.elapsed();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let marker = StartMarker::find_in(&stdout).expect("a marker line");
            let (start, clock) =
                workload_start(&launch, &marker, Instant::now(), host_boot_id.as_deref());
            assert_eq!(clock, StartClock::SharedKernel);
            assert_eq!(marker.pid, 1, "the workload is pid 1 of the container");
            assert!(
                start > Duration::ZERO && start < exited,
                "{start:?} vs {exited:?}"
            );
            (start, exited)
        })
        .collect()
}

#[test]
fn start_marker_times_a_runc_workload() {
    let bundle = probe_bundle("marker");
    assert_eq!(time_runc_starts(&bundle, 3).len(), 3);
}

#[test]
fn html_report_from_probe_runs_renders_in_chromium() {
    const RUNS: usize = 5;
    let bundle = probe_bundle("report");
    let timings = time_runc_starts(&bundle, RUNS);
    let (starts, exits): (Vec<Duration>, Vec<Duration>) = timings.into_iter().unzip();
    let runc_rows = assess(
        &observe(&bundle, None),
        &HostFacts::collect().unwrap(),
        &expectation(Some(&bundle)),
    );
    let host_rows = assess(
        &twinbox_probe::checks::collect(&Default::default()),
        &HostFacts::collect().unwrap(),
        &expectation(None),
    );

    // The second column's latencies are generated (a slower, wider distribution).
    let generated: Vec<f64> = (0..RUNS * 4)
        .map(|i| 120.0 + 15.0 * i as f64 + (i % 3) as f64 * 7.0)
        .collect();
    let column = |id: &str, kind, status| Column {
        id: id.into(),
        label: id.into(),
        kind,
        version: None,
        status,
    };
    let density_point = |k: u32, mib: u64, ms: f64| DensityPoint {
        sandboxes: k,
        pss_per_sandbox_bytes: mib << 20,
        uss_per_sandbox_bytes: mib << 19,
        start_latency: Distribution::from_millis(vec![ms, ms * 1.1, ms * 1.3]),
        failures: 0,
    };
    let report = Report {
        schema_version: REPORT_SCHEMA_VERSION,
        header: Header::for_this_host(
            "busybox",
            &["/bin/true".into()],
            RUNS as u32,
            KvmHost::new(KvmKind::Emulated),
        )
        .unwrap(),
        columns: vec![
            column("runc", ColumnKind::Peer, ColumnStatus::Ok),
            column("generated", ColumnKind::Mode, ColumnStatus::Ok),
            column(
                "runsc",
                ColumnKind::Peer,
                ColumnStatus::Absent {
                    reason: "not installed".into(),
                },
            ),
        ],
        start_time: vec![
            StartTimes {
                column: "runc".into(),
                runs: RUNS as u32,
                failures: 0,
                workload_start: Distribution::from_durations(&starts),
                start_clock: Some(StartClock::SharedKernel),
                exit: Distribution::from_durations(&exits),
                phases: vec![],
            },
            StartTimes {
                column: "generated".into(),
                runs: generated.len() as u32,
                failures: 0,
                workload_start: Distribution::from_millis(generated.clone()),
                start_clock: Some(StartClock::HostReadTime),
                exit: Distribution::from_millis(generated.iter().map(|ms| ms * 1.2).collect()),
                phases: vec![],
            },
        ],
        weight: vec![],
        density: vec![
            DensitySeries {
                column: "runc".into(),
                points: vec![density_point(1, 2, 20.0), density_point(10, 3, 30.0)],
            },
            DensitySeries {
                column: "generated".into(),
                points: vec![density_point(1, 40, 150.0), density_point(10, 44, 210.0)],
            },
        ],
        isolation: Isolation::from_verdicts(&[("runc", runc_rows), ("generated", host_rows)]),
    };
    Report::from_json(&report.to_json()).expect("the report reads back");

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let png = dir.path().join("report.png");
    std::fs::write(&page, render::html(&report).unwrap()).unwrap();
    twinbox_tests::chromium::screenshot(&page, &png, 1200, 1800).expect("screenshot");
    let image = twinbox_tests::chromium::Image::from_png(&png).unwrap();
    assert!(image.distinct_colours() > 50, "the page rendered blank");

    // Both columns with data are drawn in both plots: each colour appears in (at least) two
    // separate vertical bands, the latency and the density figure, with enough pixels to be
    // lines (a legend swatch is 28x4 pixels). The absent peer draws nothing.
    for (index, colour) in SERIES_COLOURS.iter().enumerate().take(2) {
        let bands = twinbox_tests::chromium::bands(&image.rows_with(*colour, 6), 40);
        let plotted = bands.iter().filter(|band| band.pixels >= 300).count();
        assert!(
            plotted >= 2,
            "colour {index} is not plotted in both figures: {bands:?}"
        );
    }
    assert!(image.rows_with(SERIES_COLOURS[2], 6).is_empty());
}

#[test]
fn start_marker_writes_to_a_file_then_becomes_the_workload() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("marker");
    let launch = LaunchClock::now();
    let status = std::process::Command::new(twinbox_tests::workspace_bin("twinbox-probe"))
        .arg("start-marker")
        .arg("--out")
        .arg(&out)
        .args(["--", "/bin/sh", "-c", "echo $$ > \"$0\"; exit 3"])
        .arg(dir.path().join("pid"))
        .status()
        .unwrap();
    // exec, not a child: the workload's exit status and pid are the probe's.
    assert_eq!(status.code(), Some(3));
    let marker = StartMarker::find_in(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let workload_pid: u32 = std::fs::read_to_string(dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(marker.pid, workload_pid);
    let host_boot_id = twinbox_probe::checks::kernel::boot_id();
    let (start, clock) = workload_start(&launch, &marker, Instant::now(), host_boot_id.as_deref());
    assert_eq!(clock, StartClock::SharedKernel);
    assert!(start < launch.instant.elapsed());
}

#[test]
fn probe_rejects_bad_usage() {
    for args in [
        &["isolation", "--bogus"][..],
        &["isolation", "--host-pid", "x"],
        &["nope"],
        &[],
    ] {
        let output = std::process::Command::new(twinbox_tests::workspace_bin("twinbox-probe"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("usage: twinbox-probe"),
            "{args:?}: {stderr}"
        );
    }
    let missing = std::process::Command::new(twinbox_tests::workspace_bin("twinbox-probe"))
        .args(["start-marker", "--", "/nonexistent/workload"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/workload"));
}
