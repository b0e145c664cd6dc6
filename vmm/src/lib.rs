//! twinbox's microVM monitor.
//!
//! One process per VM: it creates a KVM VM, loads a Linux kernel and runs it with a minimal
//! device set (serial console, i8042, boot timer, virtio-mmio block and vsock). The layout
//! follows Firecracker's `src/vmm`: `arch` (x86_64 boot structures and vCPU state),
//! `vstate` (VM, vCPUs, memory), `devices` (legacy and virtio), plus the kernel loader, the
//! seccomp filters and the builder that ties them together.
//!
//! [`Vmm::run`] may be called from any thread of a process that does other work: the
//! vCPUs and the device event loop run on threads of their own, each under its seccomp
//! filter. Two process-wide signal handlers are installed once: the first real-time signal
//! (`SIGRTMIN`) kicks vCPU threads out of `KVM_RUN`, and `SIGSYS` reports a seccomp
//! violation and exits; the host program should use neither for itself.
//!
//! ```no_run
//! let mut config = vmm::VmConfig::new("/path/to/vmlinux");
//! config.initrd = Some("/path/to/initrd.cpio".into());
//! let exit = vmm::Vmm::build(config)?.run()?;
//! println!("guest stopped: {:?}, booted in {:?}", exit.reason, exit.boot_time);
//! # Ok::<(), vmm::VmmError>(())
//! ```

pub mod arch;
mod builder;
pub mod config;
pub mod devices;
pub mod exit;
pub mod guest_image;
pub mod loader;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;

#[cfg(test)]
mod testutil;

pub use builder::{VmHandle, Vmm, VmmError};
pub use config::{ConsoleConfig, DiskConfig, VmConfig, VsockConfig, parse_mem_size};
pub use exit::{ExitReason, VmExit};
pub use vstate::memory::MemoryBacking;
