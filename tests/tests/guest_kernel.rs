//! The guest kernel build (guest/kernel/): its config keeps every option of the fragment, the
//! check catches dropped options, the cache works, and the artifacts are bootable kinds.
//! Booting it is tested in kvm_host.rs.

use std::process::Command;
use twinbox_tests::guest_kernel::GuestKernel;
use twinbox_tests::{guest_kernel, repo_root, target_dir};

fn kernel_dir_file(name: &str) -> std::path::PathBuf {
    repo_root().join("guest/kernel").join(name)
}

fn check_config(config: &std::path::Path) -> std::process::Output {
    Command::new(kernel_dir_file("check-config.sh"))
        .arg(kernel_dir_file("twinbox.config"))
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn built_config_keeps_every_option_of_the_fragment() {
    let out = check_config(&guest_kernel().config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_check_names_every_dropped_option() {
    let built = std::fs::read_to_string(&guest_kernel().config).unwrap();
    assert!(built.contains("\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n"));
    assert!(built.contains("\n# CONFIG_PCI is not set\n"));
    let doctored = built
        .replace(
            "\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n",
            "\n# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\n",
        )
        .replace("\n# CONFIG_PCI is not set\n", "\nCONFIG_PCI=y\n");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), doctored).unwrap();
    let out = check_config(file.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y (got: # CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("# CONFIG_PCI is not set (got: CONFIG_PCI=y)"),
        "{stderr}"
    );
}

#[test]
fn a_cached_build_is_returned_as_is_and_current_points_to_it() {
    let kernel = guest_kernel();
    let cache = target_dir().join("guest-kernel");
    let again = GuestKernel::build(&cache).unwrap();
    assert_eq!(again.dir, kernel.dir);
    assert_eq!(again.release, kernel.release);
    let current = std::fs::read_link(cache.join("current")).unwrap();
    assert_eq!(cache.join(current), kernel.dir);
}

#[test]
fn vmlinux_has_the_pvh_entry_note_and_release_says_twinbox() {
    let kernel = guest_kernel();
    let out = Command::new("readelf")
        .arg("--notes")
        .arg(&kernel.vmlinux)
        .output()
        .unwrap();
    assert!(out.status.success());
    // XEN_ELFNOTE_PHYS32_ENTRY (18): the PVH entry point that VMMs look for.
    let notes = String::from_utf8_lossy(&out.stdout);
    assert!(
        notes
            .lines()
            .any(|l| l.trim_start().starts_with("Xen") && l.contains("(0x00000012)")),
        "{notes}"
    );
    let bzimage = std::fs::read(&kernel.bzimage).unwrap();
    // The boot protocol header: "HdrS" at 0x202.
    assert_eq!(&bzimage[0x202..0x206], b"HdrS");
    assert!(kernel.release.ends_with("-twinbox"), "{}", kernel.release);
}

#[test]
fn a_missing_kernel_source_fails_with_the_package_to_install() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(kernel_dir_file("build.sh"))
        .arg("--cache")
        .arg(cache.path())
        .env("KERNEL_TARBALL", cache.path().join("no-such-source.tar.xz"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-source.tar.xz not found")
            && stderr.contains("apt-get install linux-source-6.12"),
        "{stderr}"
    );
}
