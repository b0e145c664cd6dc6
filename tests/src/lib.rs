//! Fixtures for twinbox's end-to-end tests: locating the built binaries and building test
//! root filesystems. Area-specific fixtures (registry, emulated KVM host, ...) live in their
//! own modules.

pub mod chromium;
pub mod docker;
pub mod engines;
pub mod guest_kernel;
pub mod kvm_compare;
pub mod kvm_host;
pub mod oci;
pub mod registry;
pub mod runc;
pub mod runtime;
pub mod store;
pub mod vm;
pub mod vm_boot;
pub mod vsock_echo;

pub use guest_kernel::{GuestKernel, guest_kernel};
pub use kvm_host::kvm_host;
/// The initramfs writer (twinbox's own, which builds the QEMU peer's initramfs).
pub use twinbox::vm::cpio;

use std::path::{Path, PathBuf};

/// Directory holding the workspace's built binaries (the profile directory of the running
/// test executable or fixture binary: `target/<triple>/<profile>/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    // target/<triple>/<profile>/deps/<test-binary>, or target/<triple>/<profile>/<binary>
    // for this crate's own binaries (kvm-host, kvm-compare).
    let dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Directory of the build caches shared with `make kernel` and `guest/kernel/build.sh` (the
/// guest kernel, the emulated KVM host's image): `$CARGO_TARGET_DIR`, or `target/` in the
/// repository, by the same rule as `build.sh`. It does not depend on what cargo created first:
/// on a fresh clone `make kernel` creates `target/` before cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target"),
    }
}

/// Root of the twinbox source tree.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the repository root")
        .to_path_buf()
}

/// Path of a workspace binary, e.g. `workspace_bin("twinbox")`.
///
/// Panics with the command to run when the binary was not built: integration tests of this
/// crate drive binaries of other packages, which `cargo test` alone does not build.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (`make test` does)",
        path.display()
    );
    path
}

/// The `twinbox` binary under test.
pub fn twinbox_bin() -> PathBuf {
    workspace_bin("twinbox")
}

/// Path of the host's static busybox (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Fills `root` with a minimal busybox root filesystem: the static busybox binary, a symlink
/// per applet in /bin, /etc/passwd and /etc/group with root, nobody and a test user (uid 1000),
/// and the empty directories a container runtime mounts over.
pub fn busybox_rootfs(root: &Path) -> std::io::Result<()> {
    use std::fs;
    for dir in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/tester",
        "var",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    for applet in busybox_applets()? {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         tester:x:1000:1000:tester:/home/tester:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(
        root.join("etc/group"),
        "root:x:0:\ntester:x:1000:\nwheel:x:10:tester\nnogroup:x:65534:\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// The applet names of the host's busybox (without `busybox` itself), for `/bin` symlinks.
pub fn busybox_applets() -> std::io::Result<Vec<String>> {
    let listing = std::process::Command::new(BUSYBOX).arg("--list").output()?;
    if !listing.status.success() {
        return Err(std::io::Error::other(format!(
            "`{BUSYBOX} --list` failed ({}): install busybox-static",
            listing.status
        )));
    }
    Ok(String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|applet| *applet != "busybox" && !applet.is_empty())
        .map(str::to_string)
        .collect())
}

/// Polls `ready` every 20 ms until it holds; fails the test with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (waited {timeout:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
