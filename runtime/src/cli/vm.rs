//! `twinbox vm ...`: low-level microVM commands for people debugging guest kernels.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// `twinbox vm`.
#[derive(Debug, Args)]
pub struct VmCommand {
    #[command(subcommand)]
    pub action: VmAction,
}

/// The `twinbox vm` subcommands.
#[derive(Debug, Subcommand)]
pub enum VmAction {
    /// Boot a kernel in a microVM with twinbox's VMM and wait for it to stop.
    ///
    /// Exits 0 when the guest reboots or powers off (use `reboot=t` or the default
    /// `reboot=k` with `reboot -f` in the guest), non-zero with a message otherwise.
    Boot(VmBootArgs),
}

/// Options of `twinbox vm boot`.
#[derive(Debug, Args)]
pub struct VmBootArgs {
    /// Kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    pub kernel: Option<PathBuf>,

    /// Initramfs to load.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line (twinbox appends its virtio device entries and, with
    /// --console, console=ttyS0).
    #[arg(long, value_name = "ARGS", default_value = vmm::config::DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Guest memory, e.g. 128M or 1G.
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = vmm::parse_mem_size)]
    pub mem: u64,

    /// How guest memory is backed: `auto` picks the fastest the host offers (a shared
    /// memfd when shared memory gets transparent huge pages, else private memory, which
    /// does); `memfd` and `shared` are shareable with other processes; `private` is what
    /// Firecracker and QEMU use by default.
    #[arg(long, value_name = "KIND", value_enum, default_value_t = MemBacking::Auto)]
    pub mem_backing: MemBacking,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u8,

    /// A raw disk image as virtio-blk (/dev/vda, /dev/vdb, ... in order); append `,ro` for
    /// read-only. Repeatable.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    pub disks: Vec<String>,

    /// Host Unix socket for virtio-vsock (Firecracker's hybrid vsock: host programs connect
    /// and send `CONNECT <port>`; guest connections to port P go to `<SOCK>_<P>`).
    #[arg(long, value_name = "SOCK")]
    pub vsock: Option<PathBuf>,

    /// The guest's vsock context id.
    #[arg(long, value_name = "CID", default_value_t = 3, requires = "vsock")]
    pub vsock_cid: u32,

    /// Attach the serial console to stdin/stdout (off by default: faster boots).
    #[arg(long)]
    pub console: bool,

    /// Do not install the VMM's seccomp filters (only for debugging the VMM itself).
    #[arg(long)]
    pub no_seccomp: bool,

    /// When the guest asks for a snapshot (it writes 0x73 to the boot timer's first byte:
    /// `devmem 0xd0000000 8 0x73`), write the VM's snapshot into DIR and stop.
    #[arg(long, value_name = "DIR", conflicts_with = "restore")]
    pub snapshot_to: Option<PathBuf>,

    /// Restore the snapshot in DIR instead of booting the kernel: the guest goes on from its
    /// snapshot request. Memory, vCPUs, the disks' number and modes and vsock must match the
    /// snapshot's; the disks may be other files.
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
}

/// `--mem-backing` values (see [`vmm::MemoryBacking`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemBacking {
    /// The fastest backing the host offers.
    Auto,
    /// A shared memfd.
    Memfd,
    /// Shared anonymous memory.
    Shared,
    /// Private anonymous memory.
    Private,
}

impl From<MemBacking> for vmm::MemoryBacking {
    fn from(backing: MemBacking) -> Self {
        match backing {
            MemBacking::Auto => Self::Auto,
            MemBacking::Memfd => Self::Memfd,
            MemBacking::Shared => Self::Anonymous,
            MemBacking::Private => Self::Private,
        }
    }
}
