//! twinbox's guest agent: PID 1 inside the microVM.
//!
//! It runs from the agent disk, the guest's read-only root. It signals the VMM's boot timer,
//! connects to the host over vsock (the main session, see docs/protocol.md) and mounts the
//! API filesystems.
//! On the host's request it assembles the workload's root filesystem (the image disk
//! read-only under an overlayfs with a tmpfs or disk upper layer), mounts volume disks, and
//! creates the workload with twinbox's own container setup (`twinbox-sandbox`: namespaces,
//! mounts, user, capabilities, seccomp, rlimits, a cgroup) as a second wall inside the VM.
//! It relays the workload's stdio, forwards signals and terminal resizes, reports the exit
//! status and what the workload changed on volumes, serves exec and file copy sessions, reaps
//! orphans, and powers the VM off when the workload is done.

mod boot;
mod copy;
mod init;
mod request;
mod rootfs;
mod session;
mod volumes;
mod workload;

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "twinbox-agent is the init of twinbox's microVMs and runs only as PID 1 there; \
             twinbox boots it from the VM's agent disk (run containers with `twinbox run \
             --isolation vm` or the `twinbox-vm` runtime)"
        );
        std::process::exit(2);
    }
    init::run()
}
