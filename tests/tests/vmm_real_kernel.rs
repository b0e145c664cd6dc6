//! twinbox's VMM booting the project's real guest kernel, as L2 inside the emulated KVM host
//! (this machine's own /dev/kvm is PVM and runs no stock kernel): boot to init through both
//! boot protocols, SMP, virtio-blk data integrity, vsock round trips in both directions
//! through the hybrid Unix-socket interface, clean shutdown with the boot-timer figure, a
//! snapshot that the guest asks for and its restore with another disk, and a guest crash
//! (triple fault) reported as one.
//!
//! All L2 runs share one L1 boot (`batch()`); each test checks its own step.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;
use twinbox_tests::kvm_host::{
    Job, JobOutput, StepScript, kvm_host, l2_initramfs_with, shell_quote, without_debug_info,
};
use twinbox_tests::vm_boot::VmSummary;
use twinbox_tests::vsock_echo::{Transfer, payload};
use twinbox_tests::{guest_kernel, twinbox_bin, workspace_bin};
use vmm::guest_image::{assemble, elf_image};

/// The guest's init: mounts the API filesystems, writes the boot-timer magic, runs the
/// checks named by `twinbox.check=` on the kernel command line (one `KEY=value` line per
/// finding), then reboots, which ends the VMM. `L2-DONE` proves it reached the end.
const L2_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
devmem 0xd0000000 8 123
echo "L2-INIT-OK"
for word in $(cat /proc/cmdline); do
	case $word in
	twinbox.check=*) checks=${word#*=} ;;
	twinbox.bytes=*) bytes=${word#*=} ;;
	twinbox.seed=*) seed=${word#*=} ;;
	esac
done
for check in $(echo "$checks" | tr , ' '); do
	case $check in
	uname) echo "UNAME=$(uname -r)" ;;
	cpus) echo "CPUS_ONLINE=$(cat /sys/devices/system/cpu/online)" ;;
	disks)
		echo "VDA_SHA256=$(sha256sum /dev/vda | cut -d' ' -f1)"
		dd if=/dev/vda of=/dev/vdb bs=64k count=16 conv=fsync 2>/dev/null && echo "VDB_WRITE=done"
		echo "VDC_RO=$(blockdev --getro /dev/vdc)"
		if dd if=/dev/zero of=/dev/vdc bs=4k count=1 conv=fsync 2>/dev/null; then
			echo "VDC_WRITE=accepted"
		else
			echo "VDC_WRITE=refused"
		fi
		;;
	snapshot)
		echo "SNAPSHOT_VDB_SIZE=$(cat /sys/block/vdb/size)"
		devmem 0xd0000000 8 0x73
		# Only a VM restored from the snapshot goes on here; its vdb is another file.
		for i in $(seq 500); do [ "$(cat /sys/block/vdb/size)" != 0 ] && break; sleep 0.01; done
		echo "RESTORED_VDB_SHA256=$(sha256sum /dev/vdb | cut -d' ' -f1)"
		echo "RESTORED_CPUS_ONLINE=$(cat /sys/devices/system/cpu/online)"
		;;
	vsock)
		timeout -s KILL 60 vsock-echo host-to-guest serve vsock:5000 &
		server=$!
		vsock-echo guest-to-host send vsock:2:5001 "$bytes" "$seed"
		wait $server
		;;
	esac
done
echo "L2-DONE"
reboot -f
"#;

/// Guest command line (twinbox appends its device entries and i8042 options).
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
/// Guest vsock port the guest's echo server listens on (host-initiated connection).
const GUEST_PORT: u32 = 5000;
/// Host port the guest connects to (guest-initiated): `<vsock socket>_5001` in L1.
const HOST_PORT: u32 = 5001;
/// Payload per vsock direction: several times the VMM's 256 KiB receive buffer, so credit
/// updates and partial writes happen on the way.
const VSOCK_BYTES: usize = 2 << 20;
/// Per-step limit: a TCG L2 boot takes seconds; this only bounds a hang.
const STEP_TIMEOUT: Duration = Duration::from_secs(150);
/// Size of the random read-only disk and of the L1 disks.
const DISK_BYTES: usize = 4 << 20;
/// How much of the random disk the guest copies onto the writable disk.
const COPIED_BYTES: usize = 1 << 20;

/// What `batch()` produced, with the inputs the checks compare against.
struct Batch {
    run: JobOutput,
    random_disk: Vec<u8>,
    /// The writable L1 disk after the run.
    written_disk: Vec<u8>,
    /// The read-only disk before and after the run.
    read_only_disk: (Vec<u8>, Vec<u8>),
    /// Payload seeds: host to guest, guest to host.
    seeds: (u64, u64),
}

/// A seed different on every run.
fn fresh_seed(salt: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A tiny 64-bit guest that raises an exception its boot IDT cannot deliver: a triple
/// fault nobody asked for.
fn crashing_guest(dir: &Path) -> std::path::PathBuf {
    let code = assemble("bits 64\norg 0x200000\nint3\njmp $\n", dir).expect("nasm assembles");
    let path = dir.join("crash.elf");
    std::fs::write(&path, elf_image(0x20_0000, &code)).unwrap();
    path
}

/// `twinbox vm boot ARGS` in L1, logging in JSON to `log`.
fn vm_boot(log: &str, args: &str) -> String {
    format!("twinbox --log {log} --log-format json vm boot {args}")
}

/// Ends a step whose VMM's exit status is in `$status`: prints `files` (the VMM's log, the
/// L1 tools' reports) and `VM_STATUS=`, and exits with that status.
fn finish(files: &str) -> String {
    format!("cat {files}\necho VM_STATUS=$status\nexit $status")
}

/// Boots L1 once and runs every L2 step of this file in it.
fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        let kernel = guest_kernel();
        let dir = tempfile::tempdir().unwrap();
        let seeds = (fresh_seed(1), fresh_seed(2));

        let random_disk = payload(fresh_seed(3), DISK_BYTES);
        let random_path = dir.path().join("random.img");
        std::fs::write(&random_path, &random_disk).unwrap();
        let writable = dir.path().join("writable.img");
        std::fs::write(&writable, vec![0u8; DISK_BYTES]).unwrap();
        let read_only = dir.path().join("read-only.img");
        let read_only_before = payload(fresh_seed(4), DISK_BYTES);
        std::fs::write(&read_only, &read_only_before).unwrap();

        let tools = dir.path().join("tools");
        std::fs::create_dir(&tools).unwrap();
        let twinbox = without_debug_info(&twinbox_bin(), &tools).unwrap();
        let vsock_echo = without_debug_info(&workspace_bin("vsock-echo"), &tools).unwrap();
        let initramfs =
            l2_initramfs_with(L2_INIT, &[("/bin/vsock-echo", vsock_echo.as_path())]).unwrap();

        // The PVH run: 2 vCPUs, a random read-only image file (vda), an L1 block device the
        // guest writes (vdb) and one it may only read (vdc), vsock both ways.
        let pvh_cmdline = format!(
            "{CMDLINE} reboot=k twinbox.check=uname,cpus,disks,vsock twinbox.bytes={VSOCK_BYTES} twinbox.seed={}",
            seeds.1
        );
        // L1's vsock tools write to files: the step's output is the guest's console.
        let pvh = format!(
            "rm -f /tmp/v.sock /tmp/v.sock_{HOST_PORT}\n\
             timeout -s KILL 100 vsock-echo guest-to-host serve unix:/tmp/v.sock_{HOST_PORT} \
             >/tmp/server.out 2>&1 &\n\
             server=$!\n\
             {} &\n\
             vm=$!\n\
             vsock-echo host-to-guest send hybrid:/tmp/v.sock:{GUEST_PORT} {VSOCK_BYTES} {} \
             >/tmp/client.out 2>&1\n\
             wait $server\n\
             wait $vm\n\
             status=$?\n\
             {}",
            vm_boot(
                "/tmp/pvh.log",
                &format!(
                    "--kernel /l2/vmlinux --initrd /l2/initramfs.cpio --cpus 2 --mem 256M \
                     --console --cmdline {} --disk /l2/random.img,ro --disk /dev/vda \
                     --disk /dev/vdb,ro --vsock /tmp/v.sock",
                    shell_quote(&pvh_cmdline)
                )
            ),
            seeds.0,
            finish("/tmp/server.out /tmp/client.out /tmp/pvh.log")
        );
        // The bzImage run: one vCPU, Linux resets by triple fault (reboot=t).
        let bzimage = format!(
            "{}\nstatus=$?\n{}",
            vm_boot(
                "/tmp/bzimage.log",
                &format!(
                    "--kernel /l2/bzImage --initrd /l2/initramfs.cpio --console --cmdline {}",
                    shell_quote(&format!("{CMDLINE} reboot=t twinbox.check=uname,cpus"))
                ),
            ),
            finish("/tmp/bzimage.log")
        );
        // The snapshot run: the guest asks for a snapshot with an empty vdb; the restore
        // gives it the random disk there.
        let snapshot_args = "--cpus 2 --mem 256M --console --disk /l2/random.img,ro";
        let snapshot = format!(
            "truncate -s 0 /tmp/empty.img\n\
             {}\n\
             echo SNAPSHOT_STATUS=$?\n\
             {}\n\
             status=$?\n\
             {}",
            vm_boot(
                "/tmp/snapshot.log",
                &format!(
                    "--kernel /l2/vmlinux --initrd /l2/initramfs.cpio {snapshot_args} \
                     --disk /tmp/empty.img,ro --snapshot-to /tmp/snapshot --cmdline {}",
                    shell_quote(&format!("{CMDLINE} reboot=k twinbox.check=snapshot"))
                )
            ),
            vm_boot(
                "/tmp/restore.log",
                &format!("--restore /tmp/snapshot {snapshot_args} --disk /l2/random.img,ro")
            ),
            finish("/tmp/snapshot.log /tmp/restore.log")
        );
        let crash = format!(
            "{}\nstatus=$?\n{}",
            vm_boot("/tmp/crash.log", "--kernel /l2/crash.elf"),
            finish("/tmp/crash.log")
        );

        let script = StepScript::new()
            .step("pvh", STEP_TIMEOUT, &pvh)
            .step("bzimage", STEP_TIMEOUT, &bzimage)
            .step("snapshot", STEP_TIMEOUT, &snapshot)
            .step("crash", STEP_TIMEOUT, &crash);
        let job = Job::new(script.script())
            .file(&twinbox, "/bin/twinbox")
            .file(&vsock_echo, "/bin/vsock-echo")
            .file(&kernel.vmlinux, "/l2/vmlinux")
            .file(&kernel.bzimage, "/l2/bzImage")
            .file(crashing_guest(dir.path()), "/l2/crash.elf")
            .file(&random_path, "/l2/random.img")
            .data("/l2/initramfs.cpio", initramfs, 0o644)
            .disk(&writable, false)
            .disk(&read_only, false)
            .timeout(4 * STEP_TIMEOUT);
        let run = kvm_host().run(&job).unwrap_or_else(|e| panic!("{e}"));
        Batch {
            run,
            random_disk,
            written_disk: std::fs::read(&writable).unwrap(),
            read_only_disk: (read_only_before, std::fs::read(&read_only).unwrap()),
            seeds,
        }
    })
}

/// The output of a step that ended with status 0 and whose guest ran its init to the end.
fn guest_output(step: &str) -> String {
    batch().run.completed_step(step, &["L2-INIT-OK", "L2-DONE"])
}

/// The values of the `KEY=value` lines for `key`.
fn values<'a>(output: &'a str, key: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The summary `twinbox vm boot` logged for a step.
fn summary(output: &str) -> VmSummary {
    VmSummary::find(output).unwrap_or_else(|| panic!("no `vm boot` summary in:\n{output}"))
}

#[test]
fn pvh_vmlinux_boots_to_init_with_two_vcpus_and_exits_cleanly() {
    let output = guest_output("pvh");
    assert_eq!(values(&output, "UNAME"), [guest_kernel().release.as_str()]);
    assert_eq!(values(&output, "CPUS_ONLINE"), ["0-1"]);
    assert_eq!(values(&output, "VM_STATUS"), ["0"]);
    let summary = summary(&output);
    assert_eq!(summary.reason, "Reboot");
    let boot = summary
        .boot_timer_ms
        .expect("the init wrote the boot timer");
    assert!(boot > 0.0 && boot < summary.ran_ms, "{summary:?}");
    eprintln!(
        "PVH, 2 vCPUs (TCG L2, figures only comparable as ratios): boot timer {boot:.1} ms, VMM start to exit {:.1} ms",
        summary.ran_ms
    );
}

#[test]
fn bzimage_boots_to_init_and_its_triple_fault_reset_is_a_clean_exit() {
    let output = guest_output("bzimage");
    assert_eq!(values(&output, "UNAME"), [guest_kernel().release.as_str()]);
    assert_eq!(values(&output, "CPUS_ONLINE"), ["0"]);
    assert_eq!(values(&output, "VM_STATUS"), ["0"]);
    let summary = summary(&output);
    assert_eq!(summary.reason, "Reboot");
    assert!(summary.boot_timer_ms.is_some(), "{summary:?}");
}

#[test]
fn virtio_blk_reads_the_host_image_and_guest_writes_reach_the_host() {
    let batch = batch();
    let output = guest_output("pvh");
    assert_eq!(
        values(&output, "VDA_SHA256"),
        [Transfer::of(&batch.random_disk).sha256.as_str()]
    );
    assert_eq!(values(&output, "VDB_WRITE"), ["done"]);
    // The guest copied the start of the random disk onto the writable one (with fsync, so
    // through virtio-blk flushes), and the rest stayed as it was.
    assert!(
        batch.written_disk[..COPIED_BYTES] == batch.random_disk[..COPIED_BYTES],
        "the writable disk does not hold what the guest wrote"
    );
    assert!(batch.written_disk[COPIED_BYTES..].iter().all(|&b| b == 0));
}

#[test]
fn a_read_only_disk_refuses_guest_writes() {
    let batch = batch();
    let output = guest_output("pvh");
    assert_eq!(values(&output, "VDC_RO"), ["1"]);
    assert_eq!(values(&output, "VDC_WRITE"), ["refused"]);
    let (before, after) = &batch.read_only_disk;
    assert!(before == after, "the read-only disk changed on the host");
}

#[test]
fn vsock_round_trips_in_both_directions_through_the_unix_socket() {
    let batch = batch();
    let output = guest_output("pvh");
    for (label, seed, who) in [
        (
            "host-to-guest",
            batch.seeds.0,
            "L1 connecting with CONNECT to the guest's listener",
        ),
        (
            "guest-to-host",
            batch.seeds.1,
            "the guest connecting to <socket>_<port> in L1",
        ),
    ] {
        let expected = Transfer::of(&payload(seed, VSOCK_BYTES));
        let find = |direction| {
            Transfer::find(&output, label, direction)
                .unwrap_or_else(|| panic!("{label}: no {direction} report ({who}):\n{output}"))
        };
        assert_eq!(find("sent"), expected, "{label}: what the sender sent");
        assert_eq!(
            find("echoed"),
            expected,
            "{label}: what the echo server got"
        );
        assert_eq!(
            find("received"),
            expected,
            "{label}: the echo the sender got"
        );
    }
}

#[test]
fn a_snapshot_restores_with_its_vcpus_and_another_disk_in_place() {
    let batch = batch();
    let output = guest_output("snapshot");
    assert_eq!(values(&output, "SNAPSHOT_VDB_SIZE"), ["0"], "{output}");
    assert_eq!(values(&output, "SNAPSHOT_STATUS"), ["0"], "{output}");
    let summaries: Vec<_> = output.lines().filter_map(VmSummary::find).collect();
    let reasons: Vec<_> = summaries.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(reasons, ["Snapshotted", "Reboot"], "{output}");
    // The init ran once, up to its snapshot request, and went on in the restored VM.
    assert_eq!(output.matches("L2-INIT-OK").count(), 1, "{output}");
    assert_eq!(
        values(&output, "RESTORED_VDB_SHA256"),
        [Transfer::of(&batch.random_disk).sha256.as_str()]
    );
    assert_eq!(values(&output, "RESTORED_CPUS_ONLINE"), ["0-1"]);
    assert_eq!(values(&output, "VM_STATUS"), ["0"]);
}

#[test]
fn an_unexpected_guest_triple_fault_is_reported_as_a_crash() {
    let step = batch().run.step("crash").unwrap();
    assert_eq!(step.exit_code, 1, "{}", step.output);
    assert!(
        step.output.contains(
            "twinbox: vm boot: the VM stopped with an error: vcpu0: the guest triple-faulted"
        ),
        "{}",
        step.output
    );
    assert!(
        step.output.contains("its kernel crashed"),
        "{}",
        step.output
    );
    assert!(
        step.output.contains(r#""level":"error""#),
        "the crash is in the log too:\n{}",
        step.output
    );
}
