//! What a VM is made of: the public configuration the CLI and the VM backend fill in.

use std::path::PathBuf;

use crate::vstate::memory::MemoryBacking;

/// Command line used when the caller gives none: reboot via the i8042 (which ends the
/// VMM cleanly), reboot on panic, no PCI, no module loading. The VMM appends what its
/// devices need (virtio-mmio entries, i8042 and serial settings).
pub const DEFAULT_CMDLINE: &str = "reboot=k panic=1 pci=off nomodule";

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Open read-only and tell the guest so.
    pub read_only: bool,
}

/// A virtio-vsock device in Firecracker's hybrid style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Host Unix socket: host programs connect here and send `CONNECT <port>\n`; guest
    /// connections to port P go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConsoleConfig {
    /// No serial port at all (fastest boot).
    #[default]
    Off,
    /// Guest output to the VMM's stdout, the VMM's stdin to the guest.
    Stdio,
    /// Guest output appended to a file, no input.
    File(PathBuf),
}

/// Everything needed to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line; twinbox appends its device entries.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// virtio-blk disks, in order (/dev/vda, /dev/vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Optional vsock device.
    pub vsock: Option<VsockConfig>,
    /// Serial console.
    pub console: ConsoleConfig,
    /// Install the per-thread seccomp filters (on by default; off only to debug the VMM).
    pub seccomp: bool,
    /// The KVM device.
    pub kvm_device: PathBuf,
    /// How guest RAM is backed.
    pub memory_backing: MemoryBacking,
    /// Directory the VM snapshots itself into when the guest asks (see
    /// [`crate::devices::legacy::SNAPSHOT_MAGIC`]).
    pub snapshot_to: Option<PathBuf>,
    /// Restore this snapshot directory instead of loading the kernel (kernel, initrd and
    /// cmdline are then ignored: they are in the snapshot's memory).
    pub restore_from: Option<PathBuf>,
}

impl VmConfig {
    /// A configuration for `kernel` with the defaults: 128 MiB, one vCPU, no devices.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            mem_size: 128 << 20,
            vcpus: 1,
            disks: Vec::new(),
            vsock: None,
            console: ConsoleConfig::Off,
            seccomp: true,
            kvm_device: PathBuf::from("/dev/kvm"),
            memory_backing: MemoryBacking::Auto,
            snapshot_to: None,
            restore_from: None,
        }
    }
}

/// Parses a memory size such as `128M`, `1G`, `512K` or a plain byte count.
pub fn parse_mem_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size; use a number with K, M or G, e.g. 128M"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_mem_size("128M"), Ok(128 << 20));
        assert_eq!(parse_mem_size("1g"), Ok(1 << 30));
        assert_eq!(parse_mem_size("64k"), Ok(64 << 10));
        assert_eq!(parse_mem_size("4096"), Ok(4096));
        assert!(parse_mem_size("lots").is_err());
        assert!(parse_mem_size("M").is_err());
        assert!(parse_mem_size("99999999999999G").is_err());
    }
}
