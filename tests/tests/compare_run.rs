//! `twinbox compare` end to end: the real binary on a busybox image in a private store, with
//! runc and crun as peers, small N and K. Checks the JSON against the documented schema, the
//! verdicts of known setups, columns for missing and failing peers, the HTML report in headless
//! Chromium, and that neither a finished nor an interrupted density run leaves processes,
//! mounts, cgroups, runtime state or files behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twinbox::compare::report::Report;
use twinbox_tests::oci::{Compression, busybox_layer};
use twinbox_tests::store::TestStore;

const IMAGE: &str = "busybox:compare";

/// A private store holding the busybox image.
fn store_with_busybox() -> TestStore {
    let store = TestStore::new();
    std::fs::create_dir_all(store.dir.path()).unwrap();
    let tarball = store.dir.path().join("rootfs.tar.gz");
    std::fs::write(&tarball, busybox_layer(Compression::Gzip).blob).unwrap();
    store.ok(&["import", tarball.to_str().unwrap(), IMAGE]);
    store
}

/// The image of the VM-mode run: busybox with a config that the workload checks.
const CONFIGURED_IMAGE: &str = "busybox:configured";

/// The workload of [`CONFIGURED_IMAGE`]: found only through the image's `PATH`, and failing
/// with 127 (which `compare` counts as a failed run, like a missing program) unless it runs
/// with the image's environment, working directory and user.
const CONFIG_CHECK: &str = r#"#!/bin/sh
if [ "$GREETING" = hi ] && [ "$(pwd)" = /srv ] && [ "$(id -u):$(id -g)" = 65534:65534 ]; then
	exit 0
fi
echo "image config not applied: GREETING=$GREETING cwd=$(pwd) user=$(id -u):$(id -g)" >&2
exit 127
"#;

/// A private store holding [`CONFIGURED_IMAGE`] (loaded from an OCI layout).
fn store_with_configured_busybox() -> TestStore {
    use twinbox_tests::oci::{LayerBuilder, OciLayout};
    let store = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&work.path().join("layout"));
    let tools = LayerBuilder::new()
        .dir("srv", 0o755)
        .file("opt/tools/check-config", CONFIG_CHECK.as_bytes(), 0o755)
        .finish(Compression::Gzip);
    let descriptor = layout.image(
        &[busybox_layer(Compression::Gzip), tools],
        serde_json::json!({
            "Env": ["PATH=/opt/tools:/bin", "GREETING=hi"],
            "Cmd": ["/bin/false"],
            "WorkingDir": "/srv",
            "User": "65534:65534",
        }),
        "amd64",
    );
    let (repository, tag) = CONFIGURED_IMAGE.split_once(':').unwrap();
    layout.tag(descriptor, tag);
    store.ok(&["load", layout.dir.to_str().unwrap(), "--name", repository]);
    store
}

/// `twinbox --root STORE compare IMAGE --quiet --work-dir WORK ARGS...` (`args` split at
/// white space).
fn compare_command(store: &TestStore, work: &Path, args: &str) -> Command {
    let mut command = Command::new(twinbox_tests::twinbox_bin());
    command
        .arg("--root")
        .arg(store.root())
        .args(["compare", IMAGE, "--quiet", "--work-dir"])
        .arg(work)
        .args(args.split_whitespace())
        .stdin(Stdio::null());
    command
}

fn run_ok(mut command: Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "compare failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    output
}

/// Parses the report and validates it against docs/compare-report.schema.json.
fn validated_report(json: &str) -> (Report, Value) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            twinbox_tests::repo_root().join("docs/compare-report.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let document: Value = serde_json::from_str(json).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    (
        Report::from_json(json).expect("the report reads back"),
        document,
    )
}

fn status<'r>(report: &'r Report, id: &str) -> &'r twinbox::compare::report::ColumnStatus {
    &report
        .column(id)
        .unwrap_or_else(|| panic!("no column {id}"))
        .status
}

fn cell<'r>(
    report: &'r Report,
    row: &str,
    column: &str,
) -> &'r twinbox::compare::report::IsolationCell {
    report
        .isolation
        .rows
        .iter()
        .find(|r| r.id == row)
        .and_then(|r| r.cells.iter().find(|c| c.column == column))
        .unwrap_or_else(|| panic!("no cell {row}/{column}"))
}

/// What a compare run (the process `pid`) may leave behind: nothing.
fn assert_nothing_left(store: &TestStore, work: &Path, pid: u32) {
    let tag = format!("tbc{pid}-");
    let work_dir = work.join(format!("twinbox-compare-{pid}"));
    assert!(!work_dir.exists(), "{} left behind", work_dir.display());
    let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join(format!("twinbox-compare-{pid}")))
        .chain([PathBuf::from(format!(
            "/sys/fs/cgroup/twinbox-compare-{pid}"
        ))])
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let store_root = store.root().display().to_string();
    let leaked: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            l.contains(&store_root)
                || l.contains(&tag)
                || l.contains(&work_dir.display().to_string())
        })
        .collect();
    assert!(leaked.is_empty(), "mounts left: {leaked:#?}");
    let containers = store.root().join("containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "container roots left: {left:?}");
    let index = std::fs::read_to_string(store.root().join("containers.json")).unwrap_or_default();
    assert!(
        !index.contains(&tag),
        "containers.json still names them: {index}"
    );
    let processes: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&tag) || c.contains(&work_dir.display().to_string()))
        .collect();
    assert!(processes.is_empty(), "processes left: {processes:#?}");
}

#[test]
fn container_and_peers_report_validates_renders_and_leaves_nothing() {
    let store = store_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut command = compare_command(
        &store,
        work.path(),
        "--runs 3 --density 2 --modes container,vm --peers runc,runsc,crun,qemu --format json --out",
    );
    command.arg(out.path());
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_nothing_left(&store, work.path(), pid);

    let stdout = String::from_utf8(output.stdout).unwrap();
    let (report, _) = validated_report(&stdout);
    let written = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    assert_eq!(Report::from_json(&written).unwrap(), report);

    // Container mode and runc ran and were measured.
    for id in ["container", "runc"] {
        assert_eq!(
            *status(&report, id),
            twinbox::compare::report::ColumnStatus::Ok,
            "{id}"
        );
        let times = report.start_time.iter().find(|s| s.column == id).unwrap();
        let start = times.workload_start.as_ref().unwrap();
        let exit = times.exit.as_ref().unwrap();
        assert_eq!((start.count, times.failures), (3, 0), "{id}");
        assert!(
            start.p50_ms > 0.0 && start.p50_ms < exit.p50_ms,
            "{id}: {times:?}"
        );
        assert!(!times.phases.is_empty(), "{id}: container setup phase");
        let weight = report.weight.iter().find(|w| w.column == id).unwrap();
        assert!(weight.pss_bytes > 0 && weight.uss_bytes > 0, "{weight:?}");
        assert!(
            weight.disk_shared_bytes > weight.disk_per_sandbox_bytes,
            "{weight:?}"
        );
        let density = report.density.iter().find(|d| d.column == id).unwrap();
        let ks: Vec<u32> = density.points.iter().map(|p| p.sandboxes).collect();
        assert_eq!(ks, [1, 2], "{id}");
        // Default capabilities, own namespaces, enforced limits.
        for row in [
            "capabilities",
            "pids.host_visible",
            "limits.memory",
            "limits.pids",
        ] {
            assert!(
                cell(&report, row, id).isolated,
                "{row}/{id}: {:?}",
                cell(&report, row, id)
            );
        }
        assert!(!cell(&report, "kernel.identity", id).isolated);
    }
    // gVisor runs too, with the flags that work on this host, said in the header.
    assert_eq!(
        *status(&report, "runsc"),
        twinbox::compare::report::ColumnStatus::Ok
    );
    let runsc = report
        .start_time
        .iter()
        .find(|s| s.column == "runsc")
        .unwrap();
    assert_eq!(runsc.workload_start.as_ref().unwrap().count, 3);
    assert!(
        report
            .header
            .notes
            .iter()
            .any(|n| n.starts_with("runsc ran with") && n.contains("--platform=")),
        "{:?}",
        report.header.notes
    );
    let total = |id: &str| {
        report
            .isolation
            .totals
            .iter()
            .find(|t| t.column == id)
            .unwrap()
    };
    assert_eq!(total("container").checks, total("runc").checks);

    // crun on hybrid cgroups, and the VM mode on PVM, are columns with their reason.
    let hybrid = Path::new("/sys/fs/cgroup/unified").is_dir();
    match status(&report, "crun") {
        twinbox::compare::report::ColumnStatus::Failed { reason } if hybrid => {
            assert!(reason.contains("hybrid"), "{reason}")
        }
        other => assert!(!hybrid, "crun on hybrid cgroups: {other:?}"),
    }
    if vmm::vstate::vm::host_is_pvm() {
        match status(&report, "vm") {
            twinbox::compare::report::ColumnStatus::Failed { reason } => {
                assert!(
                    reason.contains("PVM") && reason.contains("emulated KVM host"),
                    "{reason}"
                )
            }
            other => panic!("vm column on PVM: {other:?}"),
        }
        match status(&report, "qemu-microvm") {
            twinbox::compare::report::ColumnStatus::Failed { reason } => {
                assert!(
                    reason.starts_with("a VM column: ") && reason.contains("PVM"),
                    "{reason}"
                )
            }
            other => panic!("QEMU column on PVM: {other:?}"),
        }
        assert!(String::from_utf8_lossy(&output.stderr).contains("cannot boot"));
    }

    // The HTML report renders both plots in Chromium.
    let png = out.path().join("report.png");
    twinbox_tests::chromium::screenshot(&out.path().join("report.html"), &png, 1200, 2200)
        .expect("screenshot");
    let image = twinbox_tests::chromium::Image::from_png(&png).unwrap();
    assert!(image.distinct_colours() > 50, "the page rendered blank");
    let plotted: Vec<usize> = report
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.status == twinbox::compare::report::ColumnStatus::Ok)
        .map(|(index, _)| index)
        .collect();
    for index in plotted {
        let colour = twinbox::compare::render::series_colour(index);
        let bands = twinbox_tests::chromium::bands(&image.rows_with(colour, 6), 40);
        assert!(
            bands.iter().filter(|band| band.pixels >= 100).count() >= 2,
            "column {index} is not drawn in both plots: {bands:?}"
        );
    }
    let text = std::fs::read_to_string(out.path().join("report.txt")).unwrap();
    assert!(text.contains("isolated"), "{text}");
}

#[test]
fn cap_add_sys_admin_loses_the_capabilities_row() {
    let store = store_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let output = run_ok(compare_command(
        &store,
        work.path(),
        "--runs 1 --modes container --peers none --cap-add SYS_ADMIN --format json",
    ));
    let (report, _) = validated_report(&String::from_utf8(output.stdout).unwrap());
    let caps = cell(&report, "capabilities", "container");
    assert!(!caps.isolated, "{caps:?}");
    assert!(caps.observed.contains("SYS_ADMIN"), "{caps:?}");
    assert!(!cell(&report, "syscall.mount", "container").isolated);
    assert_eq!(report.columns.len(), 1);
}

#[test]
fn missing_and_failing_peers_get_a_column_with_the_reason() {
    let store = store_with_busybox();
    let work = tempfile::tempdir().unwrap();
    // A PATH with a runc that always fails and no runsc.
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("runc");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake runc: refusing everything' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = compare_command(
        &store,
        work.path(),
        "--runs 1 --modes container --peers runc,runsc,qemu --format json",
    );
    command.env("PATH", bin.path());
    let output = run_ok(command);
    let (report, _) = validated_report(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(
        *status(&report, "container"),
        twinbox::compare::report::ColumnStatus::Ok
    );
    match status(&report, "runc") {
        twinbox::compare::report::ColumnStatus::Failed { reason } => {
            assert!(reason.contains("refusing everything"), "{reason}")
        }
        other => panic!("fake runc: {other:?}"),
    }
    match status(&report, "runsc") {
        twinbox::compare::report::ColumnStatus::Absent { reason } => {
            assert!(reason.contains("not installed"), "{reason}")
        }
        other => panic!("runsc without PATH: {other:?}"),
    }
    match status(&report, "qemu-microvm") {
        twinbox::compare::report::ColumnStatus::Absent { reason } => assert!(
            reason.contains("qemu-system-x86_64 is not installed")
                && reason.contains("qemu-system-x86"),
            "{reason}"
        ),
        other => panic!("QEMU without PATH: {other:?}"),
    }
    // Only measured columns have data.
    assert!(report.start_time.iter().all(|s| s.column == "container"));
    assert_eq!(report.isolation.totals.len(), 1);
}

#[test]
fn interrupted_density_run_stops_everything() {
    let store = store_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let mut command = compare_command(
        &store,
        work.path(),
        "--runs 1 --density 40 --modes container --peers none",
    );
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the density run has several idle sandboxes up, then press Ctrl-C.
    let bundles = work.path().join(format!("twinbox-compare-{pid}/bundles"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(&bundles).map_or(0, |d| d.count()) < 4 {
        assert!(Instant::now() < deadline, "the density run never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("interrupted"));
    assert_nothing_left(&store, work.path(), pid);
}

#[test]
fn bad_usage_is_refused_with_a_reason() {
    let store = store_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let output = compare_command(&store, work.path(), "--memory 12x")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a size"));
    let mut missing = Command::new(twinbox_tests::twinbox_bin());
    missing
        .arg("--root")
        .arg(store.root())
        .args(["compare", "no-such-image", "--quiet"]);
    let output = missing.output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-image"));
}

#[test]
fn workloads_exit_with_any_status_but_a_missing_one_fails_its_runs() {
    let store = store_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let timed = |workload: &[&str]| {
        let mut command = compare_command(
            &store,
            work.path(),
            "--runs 2 --modes container --peers none --format json --",
        );
        command.args(workload);
        let output = run_ok(command);
        validated_report(&String::from_utf8(output.stdout).unwrap()).0
    };
    let exits_3 = timed(&["sh", "-c", "exit 3"]);
    let times = &exits_3.start_time[0];
    assert_eq!(times.failures, 0, "{times:?}");
    assert_eq!(times.exit.as_ref().unwrap().count, 2);

    let missing = timed(&["/no/such/workload"]);
    let times = &missing.start_time[0];
    assert_eq!((times.failures, times.workload_start.is_none()), (2, true));
    assert!(
        missing
            .header
            .notes
            .iter()
            .any(|note| note.contains("/no/such/workload")),
        "{:?}",
        missing.header.notes
    );
}

/// VM mode through `kvm-compare`'s library: one L1 boot runs `twinbox compare --modes
/// container,vm --peers qemu` with N=2 and K=1 in the emulated KVM host and brings the report
/// back. The image's config travels into L1 with it: every column's workload checks it.
#[test]
fn vm_mode_in_the_emulated_host_reports_both_modes_with_the_note() {
    use twinbox::compare::report::{ColumnStatus, KvmKind};
    let store = store_with_configured_busybox();
    let work = tempfile::tempdir().unwrap();
    let run = twinbox_tests::kvm_compare::EmulatedCompare {
        store_root: store.root(),
        image: CONFIGURED_IMAGE.to_string(),
        compare_args: "--modes container,vm --peers qemu --runs 2 --density 1 -- check-config"
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        timeout: Duration::from_secs(240),
    }
    .run(twinbox_tests::kvm_host(), work.path())
    .unwrap_or_else(|error| panic!("{error}"));
    assert!(run.leftovers.is_empty(), "left in L1: {:#?}", run.leftovers);

    let (report, _) = validated_report(&run.report_json);
    assert_eq!(report.header.kvm.kind, KvmKind::Emulated);
    let note = report.header.kvm.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("emulated") && note.contains("ratios"),
        "{note}"
    );
    for id in ["container", "vm", "qemu-microvm"] {
        assert_eq!(*status(&report, id), ColumnStatus::Ok, "{id}: {}", run.log);
        let times = report.start_time.iter().find(|s| s.column == id).unwrap();
        let start = times.workload_start.as_ref().unwrap();
        assert_eq!((start.count, times.failures), (2, 0), "{id}");
        let weight = report.weight.iter().find(|w| w.column == id).unwrap();
        assert!(weight.pss_bytes > 0, "{id}: {weight:?}");
        let density = report.density.iter().find(|d| d.column == id).unwrap();
        assert_eq!(density.points.len(), 1, "{id}: {density:?}");
        assert_eq!(density.points[0].sandboxes, 1, "{id}: {density:?}");
    }
    // The VM's start phases, from its `state` annotations, end in order and before its
    // workload starts; the container's only phase is its setup.
    use twinbox::compare::report::Phase;
    let phases = |id: &str| -> Vec<(Phase, f64)> {
        let times = report.start_time.iter().find(|s| s.column == id).unwrap();
        times
            .phases
            .iter()
            .map(|p| (p.phase, p.distribution.p50_ms))
            .collect()
    };
    // Its VMs restore the template snapshot, so they have no kernel boot of their own; and
    // nothing notes a missing phase.
    let vm_phases = phases("vm");
    let order: Vec<Phase> = vm_phases.iter().map(|(phase, _)| *phase).collect();
    assert_eq!(
        order,
        [Phase::VmmStart, Phase::AgentReady],
        "{vm_phases:?}: {}",
        run.log
    );
    assert!(
        !report
            .header
            .notes
            .iter()
            .any(|note| note.contains("phases")),
        "{:?}",
        report.header.notes
    );
    let vm_times = report.start_time.iter().find(|s| s.column == "vm").unwrap();
    for phase in &vm_times.phases {
        // Two weight sandboxes and one density sandbox.
        assert_eq!(phase.distribution.count, 3, "{phase:?}");
    }
    let p50s: Vec<f64> = vm_phases.iter().map(|(_, ms)| *ms).collect();
    assert!(p50s[0] > 0.0 && p50s[0] < p50s[1], "{vm_phases:?}");
    // p50 start latency of a column's first density step (created + started sandboxes).
    let density_start = |column: &str| {
        report
            .density
            .iter()
            .find(|d| d.column == column)
            .unwrap()
            .points[0]
            .start_latency
            .as_ref()
            .unwrap()
            .p50_ms
    };
    let vm_density_start = density_start("vm");
    assert!(
        p50s[1] <= vm_density_start,
        "{vm_phases:?} vs {vm_density_start}"
    );
    assert_eq!(
        phases("container")
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>(),
        [Phase::ContainerSetup]
    );
    // The report was made in L1: the container shares L1's kernel, the VM runs its own.
    let container = cell(&report, "kernel.identity", "container");
    assert!(
        !container.isolated && container.observed.contains(&report.header.kernel),
        "{container:?} vs L1 kernel {}",
        report.header.kernel
    );
    let vm = cell(&report, "kernel.identity", "vm");
    assert!(
        vm.isolated && !vm.observed.contains(&report.header.kernel),
        "{vm:?} vs L1 kernel {}",
        report.header.kernel
    );
    // QEMU microvm booted the same guest kernel, ran the workload to its exit, and its probe
    // judged the guest like the VM column's.
    let qemu = cell(&report, "kernel.identity", "qemu-microvm");
    assert_eq!(qemu.observed, vm.observed);
    assert!(qemu.isolated);
    let qemu_times = report
        .start_time
        .iter()
        .find(|s| s.column == "qemu-microvm")
        .unwrap();
    let (start, exit) = (
        qemu_times.workload_start.as_ref().unwrap(),
        qemu_times.exit.as_ref().unwrap(),
    );
    assert!(
        start.p50_ms > 0.0 && start.p50_ms < exit.p50_ms,
        "{qemu_times:?}"
    );
    // Its VMM start and kernel boot, estimated from the guest's boot clock, are ordered too.
    let qemu_phases = phases("qemu-microvm");
    assert_eq!(
        qemu_phases.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [Phase::VmmStart, Phase::KernelBoot],
        "{qemu_times:?}"
    );
    let qemu_density_start = density_start("qemu-microvm");
    assert!(
        0.0 < qemu_phases[0].1
            && qemu_phases[0].1 < qemu_phases[1].1
            && qemu_phases[1].1 <= qemu_density_start,
        "{qemu_phases:?} vs {qemu_density_start}"
    );
    let totals = |id: &str| {
        report
            .isolation
            .totals
            .iter()
            .find(|t| t.column == id)
            .map(|t| t.checks)
    };
    assert_eq!(totals("qemu-microvm"), totals("vm"));
}
