//! L2 guests: a busybox initramfs with the test's init, and QEMU microvm command lines.

use super::steps::shell_quote;
use crate::cpio::{CpioError, CpioWriter};
use std::path::Path;

/// An uncompressed initramfs for an L2 guest: static busybox with its applets in `/bin`,
/// `/dev/console`, empty `/proc`, `/sys`, `/dev`, `/tmp`, and `init` as `/init`.
///
/// `init` is the whole script, e.g. `"#!/bin/sh\nmount -t proc proc /proc\n...reboot -f\n"`.
/// With `reboot=t` on the kernel command line, `reboot -f` makes the L2 VMM exit; without
/// ACPI, `poweroff -f` only halts the guest.
pub fn l2_initramfs(init: &str) -> Result<Vec<u8>, CpioError> {
    l2_initramfs_with(init, &[])
}

/// [`l2_initramfs`] plus host files at guest paths, e.g. a static test tool at
/// `/bin/vsock-echo`.
pub fn l2_initramfs_with(init: &str, files: &[(&str, &Path)]) -> Result<Vec<u8>, CpioError> {
    let mut cpio = CpioWriter::new(Vec::new());
    cpio.char_device("/dev/console", 0o600, 5, 1)?;
    for dir in ["/proc", "/sys", "/tmp", "/mnt"] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.host_file("/bin/busybox", Path::new(crate::BUSYBOX))?;
    let applets = crate::busybox_applets().map_err(|source| CpioError::ReadHostFile {
        path: crate::BUSYBOX.to_string(),
        source,
    })?;
    for applet in applets {
        cpio.symlink(&format!("/bin/{applet}"), "busybox")?;
    }
    cpio.file("/init", 0o755, init.as_bytes())?;
    for (guest_path, host) in files {
        cpio.host_file(guest_path, host)?;
    }
    cpio.finish()
}

/// A QEMU microvm L2 run, as a shell command for a job script (the job needs
/// [`super::Job::qemu`]). The guest's console is QEMU's stdout; QEMU exits when the guest
/// reboots (`-no-reboot`, `reboot=t`).
#[derive(Debug, Clone)]
pub struct QemuMicrovm {
    kernel: String,
    initrd: Option<String>,
    cmdline: String,
    cpus: u32,
    memory_mib: u32,
    disks: Vec<(String, bool)>,
    vsock_cid: Option<u32>,
}

impl QemuMicrovm {
    /// Boots `kernel` (an L1 path; a bzImage, or a vmlinux with the PVH note) with one vCPU,
    /// 256 MiB and the command line `console=ttyS0 reboot=t panic=-1 quiet`.
    pub fn new(kernel: &str) -> Self {
        Self {
            kernel: kernel.to_string(),
            initrd: None,
            cmdline: "console=ttyS0 reboot=t panic=-1 quiet".to_string(),
            cpus: 1,
            memory_mib: 256,
            disks: Vec::new(),
            vsock_cid: None,
        }
    }

    /// The initramfs (an L1 path).
    pub fn initrd(mut self, path: &str) -> Self {
        self.initrd = Some(path.to_string());
        self
    }

    /// Appends words to the kernel command line.
    pub fn append(mut self, words: &str) -> Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(words);
        self
    }

    /// The kernel command line (without the device entries QEMU appends), e.g. to give
    /// another VMM the same one.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Number of vCPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Guest memory.
    pub fn memory_mib(mut self, memory_mib: u32) -> Self {
        self.memory_mib = memory_mib;
        self
    }

    /// A raw disk image (an L1 path) as a `virtio-blk-device` (virtio-mmio); the first is
    /// `/dev/vda` in the guest.
    pub fn disk(mut self, path: &str, read_only: bool) -> Self {
        self.disks.push((path.to_string(), read_only));
        self
    }

    /// A vsock device (`vhost-vsock-device`, served by L1's vhost_vsock) with this guest CID.
    pub fn vsock(mut self, guest_cid: u32) -> Self {
        self.vsock_cid = Some(guest_cid);
        self
    }

    /// The shell command line.
    pub fn command(&self) -> String {
        // No ACPI in the guest kernel: without ACPI tables QEMU lists the virtio-mmio devices
        // on the kernel command line, and qboot's MP table describes the vCPUs.
        let mut words = vec![
            "qemu-system-x86_64".to_string(),
            "-M microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=off".to_string(),
            "-enable-kvm -cpu host".to_string(),
            format!("-smp {} -m {}", self.cpus, self.memory_mib),
            "-nodefaults -no-user-config -display none -serial stdio -no-reboot".to_string(),
            format!("-kernel {}", shell_quote(&self.kernel)),
        ];
        if let Some(initrd) = &self.initrd {
            words.push(format!("-initrd {}", shell_quote(initrd)));
        }
        for (index, (path, read_only)) in self.disks.iter().enumerate() {
            let drive = format!(
                "id=disk{index},file={path},format=raw,if=none{}",
                if *read_only { ",readonly=on" } else { "" }
            );
            words.push(format!(
                "-drive {} -device virtio-blk-device,drive=disk{index}",
                shell_quote(&drive)
            ));
        }
        if let Some(cid) = self.vsock_cid {
            words.push(format!("-device vhost-vsock-device,guest-cid={cid}"));
        }
        words.push(format!("-append {}", shell_quote(&self.cmdline)));
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_has_busybox_init_and_console() {
        let archive = l2_initramfs("#!/bin/sh\necho hi\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(child.wait().unwrap().success());
        let out = std::process::Command::new("chroot")
            .arg(dir.path())
            .arg("/init")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    }

    #[test]
    fn command_quotes_paths_and_lists_devices() {
        let command = QemuMicrovm::new("/l2/vmlinux")
            .initrd("/l2/init.cpio")
            .cpus(2)
            .memory_mib(128)
            .disk("/l2/disk.img", true)
            .vsock(3)
            .append("init=/init")
            .command();
        assert!(command.contains("-smp 2 -m 128"), "{command}");
        assert!(command.contains("-kernel '/l2/vmlinux' -initrd '/l2/init.cpio'"));
        assert!(command.contains(
            "-drive 'id=disk0,file=/l2/disk.img,format=raw,if=none,readonly=on' -device virtio-blk-device,drive=disk0"
        ));
        assert!(command.contains("vhost-vsock-device,guest-cid=3"));
        assert!(command.ends_with("-append 'console=ttyS0 reboot=t panic=-1 quiet init=/init'"));
    }
}
