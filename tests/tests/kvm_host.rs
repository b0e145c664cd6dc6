//! Real kernels in the emulated KVM host: twinbox's guest kernel booted by QEMU microvm (L2)
//! inside L1. This proves the guest kernel config (boot protocols, SMP, virtio-mmio devices,
//! filesystems, isolation features) and the harness itself; twinbox's own VMM gets the same
//! treatment in the VMM's tests.
//!
//! All L2 runs share one L1 boot (`batch()`); each test checks its own step.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use twinbox_tests::guest_kernel;
use twinbox_tests::kvm_host::{
    Job, JobOutput, KvmHostError, QemuMicrovm, StepScript, kvm_host, l2_initramfs,
};

/// The guest's init: mounts the API filesystems, runs the checks named by `twinbox.check=` on
/// the kernel command line, prints one `KEY=value` line per finding, then reboots (which ends
/// QEMU with `-no-reboot`). `L2-DONE` proves it reached the end on its own.
const L2_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "L2-INIT-OK"
for word in $(cat /proc/cmdline); do
	case $word in
	twinbox.check=*) checks=${word#*=} ;;
	twinbox.marker=*) marker=${word#*=} ;;
	esac
done
for check in $(echo "$checks" | tr , ' '); do
	case $check in
	uname) echo "UNAME=$(uname -r)" ;;
	cpus) echo "CPUS=$(grep -c ^processor /proc/cpuinfo)" ;;
	features)
		for fs in ext4 erofs overlay tmpfs devtmpfs cgroup cgroup2; do
			grep -qw "$fs" /proc/filesystems && echo "FS=$fs"
		done
		mkdir -p /sys/fs/cgroup
		mount -t cgroup2 none /sys/fs/cgroup && echo "CGROUP2=$(cat /sys/fs/cgroup/cgroup.controllers)"
		umount /sys/fs/cgroup
		mount -t tmpfs none /mnt
		for controller in cpu cpuacct cpuset memory pids freezer devices blkio; do
			mkdir /mnt/$controller
			mount -t cgroup -o $controller none /mnt/$controller && echo "CGROUP1=$controller"
		done
		echo "USERNS_UID=$(unshare -U -r -m -u -i -n -p -f id -u)"
		grep -q '^Seccomp_filters:' /proc/self/status && echo "SECCOMP=filter"
		;;
	disks)
		echo "RAW_SHA256=$(sha256sum /dev/vda | cut -d' ' -f1)"
		mkdir -p /ext4 /erofs /lower /rw
		mount -t ext4 -o ro,noload /dev/vdb /ext4 && echo "EXT4=$(cat /ext4/marker)"
		mount -t erofs -o ro /dev/vdc /erofs && echo "EROFS=$(cat /erofs/marker)"
		mount -t tmpfs none /rw && mkdir /rw/upper /rw/work /rw/merged &&
			mount -t overlay overlay -o lowerdir=/erofs,upperdir=/rw/upper,workdir=/rw/work /rw/merged &&
			echo changed >/rw/merged/marker && echo "OVERLAY=$(cat /rw/merged/marker) $(cat /erofs/marker)"
		;;
	write-vda) echo "written-by-l2 $marker" | dd of=/dev/vda conv=fsync 2>/dev/null && echo "WRITE=done" ;;
	vsock) ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport | grep -q virtio && echo "VSOCK=bound" ;;
	esac
done
echo "L2-DONE"
reboot -f
"#;

/// What `batch()` produced, with the inputs the checks compare against.
struct Batch {
    run: JobOutput,
    raw_disk_sha256: String,
    marker: String,
    /// The start of the writable L1 disk after the run.
    written_disk: Vec<u8>,
}

/// A per-step limit: a TCG L2 boot takes seconds; this only bounds a hang.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A file of `len` pseudo-random bytes (different on every run).
fn random_disk(path: &Path, len: usize) {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(path, bytes).unwrap();
}

fn run_tool(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Boots L1 once and runs every L2 step of this file in it.
fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        let kernel = guest_kernel();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.img");
        random_disk(&raw, 4 << 20);
        let marker = format!("marker-{}", std::process::id());
        let content = dir.path().join("content");
        std::fs::create_dir(&content).unwrap();
        std::fs::write(content.join("marker"), &marker).unwrap();
        let ext4 = dir.path().join("ext4.img");
        run_tool(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&content)
                .arg(&ext4)
                .arg("4M"),
        );
        let erofs = dir.path().join("erofs.img");
        run_tool(
            Command::new("mkfs.erofs")
                .arg("--quiet")
                .arg(&erofs)
                .arg(&content),
        );

        let writable = dir.path().join("writable.img");
        std::fs::write(&writable, vec![0; 1 << 20]).unwrap();

        let boot = |kernel: &str, checks: &str| {
            QemuMicrovm::new(kernel)
                .initrd("/l2/initramfs.cpio")
                .append(&format!("twinbox.check={checks} twinbox.marker={marker}"))
        };
        let script = StepScript::new()
            .step(
                "bzimage-uname",
                STEP_TIMEOUT,
                &boot("/l2/bzImage", "uname,features").command(),
            )
            .step(
                "pvh-smp",
                STEP_TIMEOUT,
                &boot("/l2/vmlinux", "uname,cpus").cpus(2).command(),
            )
            .step(
                "virtio-disks",
                STEP_TIMEOUT,
                &boot("/l2/vmlinux", "disks,vsock")
                    .disk("/l2/raw.img", true)
                    .disk("/l2/ext4.img", true)
                    .disk("/l2/erofs.img", true)
                    .vsock(3)
                    .command(),
            )
            .step(
                "l1-disk-write",
                STEP_TIMEOUT,
                &boot("/l2/vmlinux", "write-vda")
                    .disk("/dev/vda", false)
                    .command(),
            )
            .step(
                "vmm-fails",
                STEP_TIMEOUT,
                &QemuMicrovm::new("/l2/no-such-kernel").command(),
            );
        let job = Job::new(script.script())
            .qemu()
            .file(&kernel.bzimage, "/l2/bzImage")
            .file(&kernel.vmlinux, "/l2/vmlinux")
            .file(&raw, "/l2/raw.img")
            .file(&ext4, "/l2/ext4.img")
            .file(&erofs, "/l2/erofs.img")
            .data("/l2/initramfs.cpio", l2_initramfs(L2_INIT).unwrap(), 0o644)
            .disk(&writable, false)
            .timeout(4 * STEP_TIMEOUT);
        let run = kvm_host().run(&job).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.exit_code, 0, "the batch script failed:\n{}", run.output);
        let mut written_disk = std::fs::read(&writable).unwrap();
        written_disk.truncate(64);
        Batch {
            run,
            raw_disk_sha256: sha256_of(&raw),
            marker,
            written_disk,
        }
    })
}

/// The `KEY=value` lines of a successful step whose guest reached `L2-DONE`.
fn findings(step: &str) -> Vec<(String, String)> {
    let output = batch().run.completed_step(step, &["L2-INIT-OK", "L2-DONE"]);
    output
        .lines()
        .map(str::trim)
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn values<'a>(findings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    findings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn guest_kernel_boots_as_bzimage_and_reports_its_release() {
    let found = findings("bzimage-uname");
    assert_eq!(values(&found, "UNAME"), [guest_kernel().release.as_str()]);
}

#[test]
fn guest_kernel_has_the_filesystems_and_isolation_features_containers_need() {
    let found = findings("bzimage-uname");
    let mut missing = String::new();
    for fs in [
        "ext4", "erofs", "overlay", "tmpfs", "devtmpfs", "cgroup", "cgroup2",
    ] {
        if !values(&found, "FS").contains(&fs) {
            let _ = write!(missing, " fs:{fs}");
        }
    }
    let v2 = values(&found, "CGROUP2").join(" ");
    for controller in ["cpuset", "cpu", "io", "memory", "pids"] {
        if !v2.split_whitespace().any(|c| c == controller) {
            let _ = write!(missing, " cgroup2:{controller}");
        }
    }
    let v1 = values(&found, "CGROUP1");
    for controller in [
        "cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices", "blkio",
    ] {
        if !v1.contains(&controller) {
            let _ = write!(missing, " cgroup1:{controller}");
        }
    }
    if values(&found, "USERNS_UID") != ["0"] {
        missing.push_str(" user+pid+net+mount+uts+ipc namespaces");
    }
    if values(&found, "SECCOMP") != ["filter"] {
        missing.push_str(" seccomp-filter");
    }
    assert!(
        missing.is_empty(),
        "missing in the guest:{missing}\n{found:?}"
    );
}

#[test]
fn guest_kernel_boots_via_pvh_with_two_vcpus() {
    let found = findings("pvh-smp");
    assert_eq!(values(&found, "UNAME"), [guest_kernel().release.as_str()]);
    assert_eq!(values(&found, "CPUS"), ["2"]);
}

#[test]
fn virtio_blk_reads_back_what_the_host_wrote() {
    let batch = batch();
    let found = findings("virtio-disks");
    assert_eq!(
        values(&found, "RAW_SHA256"),
        [batch.raw_disk_sha256.as_str()]
    );
    assert_eq!(values(&found, "EXT4"), [batch.marker.as_str()]);
    assert_eq!(values(&found, "EROFS"), [batch.marker.as_str()]);
    // overlayfs over the erofs image with a tmpfs upper: the write lands in the upper layer.
    assert_eq!(
        values(&found, "OVERLAY"),
        [format!("changed {}", batch.marker).as_str()]
    );
}

#[test]
fn l2_writes_to_an_l1_disk_reach_the_host_image() {
    let batch = batch();
    assert_eq!(values(&findings("l1-disk-write"), "WRITE"), ["done"]);
    let expected = format!("written-by-l2 {}\n", batch.marker);
    assert_eq!(
        String::from_utf8_lossy(&batch.written_disk[..expected.len()]),
        expected
    );
}

#[test]
fn virtio_vsock_driver_binds_to_the_device() {
    let found = findings("virtio-disks");
    assert_eq!(values(&found, "VSOCK"), ["bound"]);
}

#[test]
fn a_failing_l2_vmm_is_reported_clearly() {
    let step = batch().run.step("vmm-fails").unwrap();
    assert_ne!(step.exit_code, 0);
    assert!(!step.timed_out);
    let error = step.check().unwrap_err();
    assert!(matches!(error, KvmHostError::StepFailed { .. }));
    let message = error.to_string();
    assert!(
        message.starts_with("step 'vmm-fails' failed: exit status 1"),
        "{message}"
    );
    // QEMU's own complaint reaches the message.
    assert!(message.contains("no-such-kernel"), "{message}");
}

#[test]
fn l1_without_svm_reports_missing_kvm() {
    let error = kvm_host()
        .run(&Job::new("echo unreachable").cpu_model("EPYC,-svm"))
        .unwrap_err();
    assert!(matches!(error, KvmHostError::NoKvmInL1 { .. }), "{error}");
    assert!(error.to_string().contains("no /dev/kvm"), "{error}");
}

#[test]
fn a_script_past_its_timeout_is_killed_and_reported() {
    let error = kvm_host()
        .run(&Job::new("echo started; sleep 600").timeout(Duration::from_secs(3)))
        .unwrap_err();
    let KvmHostError::ScriptTimeout { limit, output } = &error else {
        panic!("expected a script timeout, got: {error}");
    };
    assert_eq!(*limit, Duration::from_secs(3));
    assert!(output.contains("started"), "{error}");
}
