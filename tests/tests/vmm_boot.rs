//! End-to-end tests of `twinbox vm boot` on this machine's /dev/kvm, with tiny guests
//! assembled by the test (nasm).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use twinbox_tests::vm_boot::VmSummary;
use vmm::guest_image::{assemble, elf_image};

/// Assembles `body` (64-bit code at 2 MiB) into a bootable ELF in `dir`.
fn tiny_guest(dir: &Path, body: &str) -> PathBuf {
    let source = format!("bits 64\norg 0x200000\n{body}");
    let code = assemble(&source, dir).expect("nasm assembles the guest");
    let path = dir.join("guest.elf");
    std::fs::write(&path, elf_image(0x20_0000, &code)).unwrap();
    path
}

/// Prints `text` on COM1, writes the boot-timer magic, and resets through the i8042.
fn hello_guest(dir: &Path, text: &str) -> PathBuf {
    let mut body = String::from("mov rbx, 0xd0000000\nmov byte [rbx], 123\nmov dx, 0x3f8\n");
    for byte in text.bytes() {
        body.push_str(&format!("mov al, {byte}\nout dx, al\n"));
    }
    body.push_str("mov al, 0xfe\nout 0x64, al\njmp $\n");
    tiny_guest(dir, &body)
}

fn twinbox(args: &[&str]) -> Output {
    Command::new(twinbox_tests::twinbox_bin())
        .args(args)
        .output()
        .expect("twinbox runs")
}

/// `twinbox vm boot --kernel KERNEL EXTRA...`.
fn boot(kernel: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["vm", "boot", "--kernel", kernel.to_str().unwrap()];
    args.extend_from_slice(extra);
    twinbox(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that a run failed with exit `code` and a message containing `needle`.
fn assert_fails_with(output: &Output, code: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn boots_a_guest_with_console_and_reports_the_boot_timer() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = hello_guest(dir.path(), "hello from L2");
    let out = twinbox(&[
        "--debug",
        "vm",
        "boot",
        "--kernel",
        kernel.to_str().unwrap(),
        "--console",
        "--cpus",
        "2",
        "--mem",
        "64M",
    ]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from L2");
    let err = stderr(&out);
    let summary = VmSummary::find(&err).unwrap_or_else(|| panic!("no summary in: {err}"));
    assert_eq!(summary.reason, "Reboot");
    let timer = summary.boot_timer_ms.unwrap();
    assert!(timer > 0.0 && timer <= summary.ran_ms, "{summary:?}");
}

#[test]
fn log_options_send_the_summary_and_failures_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = hello_guest(dir.path(), "");
    let log = dir.path().join("vm.log");
    let logged = |extra: &[&str]| {
        let mut args = vec!["--log", log.to_str().unwrap(), "--log-format", "json"];
        args.extend_from_slice(&["vm", "boot", "--kernel", kernel.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = twinbox(&args);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (out, lines)
    };

    let (out, lines) = logged(&[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(out.stderr.is_empty(), "stderr: {}", stderr(&out));
    let summary = lines.last().unwrap();
    assert_eq!(summary["level"], "info", "{lines:?}");
    let parsed = VmSummary::find(summary["msg"].as_str().unwrap()).unwrap();
    assert_eq!(parsed.reason, "Reboot");
    assert!(parsed.boot_timer_ms.is_some());

    // A failure: plain text on stderr for the person, an error line in the log.
    let missing = dir.path().join("missing.img");
    let (out, lines) = logged(&["--disk", missing.to_str().unwrap()]);
    assert_fails_with(&out, 1, "twinbox: vm boot: cannot open disk image");
    let error = lines.last().unwrap();
    assert_eq!(error["level"], "error");
    assert!(
        error["msg"].as_str().unwrap().contains("missing.img"),
        "{error}"
    );
}

#[test]
fn without_console_the_guest_output_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = hello_guest(dir.path(), "quiet");
    let out = boot(&kernel, &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn disks_are_attached_and_bad_ones_named() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = hello_guest(dir.path(), "");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let disk_ro = format!("{},ro", disk.display());
    let out = boot(
        &kernel,
        &["--disk", &disk_ro, "--disk", disk.to_str().unwrap()],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));

    let missing = dir.path().join("missing.img");
    let out = boot(&kernel, &["--disk", missing.to_str().unwrap()]);
    assert_fails_with(&out, 1, "missing.img");

    let out = boot(&kernel, &["--disk", "x.img, bogus"]);
    assert_fails_with(&out, 2, "unknown disk option");
}

#[test]
fn vsock_socket_is_removed_when_the_vm_ends() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = hello_guest(dir.path(), "");
    let socket = dir.path().join("v.sock");
    let out = boot(&kernel, &["--vsock", socket.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(!socket.exists(), "the VMM removes its socket on exit");
}

#[test]
fn sigterm_stops_the_vm_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = tiny_guest(dir.path(), "cli\n.h: hlt\njmp .h");
    let socket = dir.path().join("v.sock");
    let child = Command::new(twinbox_tests::twinbox_bin())
        .args(["vm", "boot", "--kernel"])
        .arg(&kernel)
        .arg("--vsock")
        .arg(&socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the VMM never created its socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_fails_with(&out, 128 + libc::SIGTERM, "stopped by signal 15");
    assert!(!socket.exists(), "the socket is removed on a signal stop");
}

#[test]
fn missing_kvm_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = hello_guest(dir.path(), "");
    // Hide /dev/kvm in a private mount namespace.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" vm boot --kernel "$1""#)
        .arg(twinbox_tests::twinbox_bin())
        .arg(&kernel)
        .output()
        .unwrap();
    assert_fails_with(&out, 1, "/dev/kvm does not exist");
}

#[test]
fn kvm_permission_problems_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = hello_guest(dir.path(), "");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&kernel, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(twinbox_tests::twinbox_bin())
        .args(["vm", "boot", "--kernel"])
        .arg(&kernel)
        .output()
        .unwrap();
    assert_fails_with(&out, 1, "permission denied opening /dev/kvm");
}

#[test]
fn stock_linux_kernels_are_refused_on_pvm_hosts() {
    let dir = tempfile::tempdir().unwrap();
    // A bzImage header with nothing behind it: on a PVM host it must be refused before KVM
    // is touched; elsewhere the loader rejects the truncated image.
    let mut image = vec![0u8; 0x1000];
    image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    image[0x202..0x206].copy_from_slice(b"HdrS");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, image).unwrap();
    let out = boot(&kernel, &[]);
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_fails_with(&out, 1, "CONFIG_PVM_GUEST");
    } else {
        assert_fails_with(&out, 1, "cannot load kernel");
    }
}

#[test]
fn unknown_flags_are_rejected() {
    let out = twinbox(&["vm", "boot", "--kernel", "/k", "--frobnicate"]);
    assert_fails_with(&out, 2, "--frobnicate");
}

#[test]
fn every_memory_backing_boots_and_unknown_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = hello_guest(dir.path(), "ok");
    for backing in ["auto", "memfd", "shared", "private"] {
        let out = boot(&kernel, &["--console", "--mem-backing", backing]);
        assert!(out.status.success(), "{backing}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok", "{backing}");
    }
    let out = boot(&kernel, &["--mem-backing", "hugetlb"]);
    assert_fails_with(&out, 2, "--mem-backing");
}
