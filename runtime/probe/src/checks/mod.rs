//! The isolation checks. Each collector returns raw facts; none of them writes anything
//! outside the probe's own memory and child processes.

pub mod cgroups;
pub mod devices;
pub mod files;
pub mod kernel;
pub mod mounts;
pub mod network;
pub mod procfs;
pub mod syscalls;

use crate::observations::{KernelInfo, Limits, Observations, SCHEMA_VERSION};

/// What the orchestration tells the probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// A pid that exists only on the host (e.g. the orchestrating process): the probe
    /// reports whether it can see it.
    pub host_pid: Option<u32>,
    /// Run the allocation test with this many MiB (set it above the configured memory
    /// limit); capped at [`cgroups::MAX_ALLOCATION_TEST_MIB`].
    pub allocation_test_mib: Option<u64>,
}

/// Runs every check and gathers the observations.
pub fn collect(options: &Options) -> Observations {
    let mounts = mounts::read_mountinfo("/proc/self/mountinfo");
    let mount_entries = mounts.clone().unwrap_or_default();
    Observations {
        schema: SCHEMA_VERSION,
        probe_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: kernel::identity().into(),
        identity: kernel::clone_identity().into(),
        namespaces: kernel::namespaces().into(),
        user: kernel::user().into(),
        pids: procfs::pids(options.host_pid).into(),
        resources: procfs::resources().into(),
        credentials: procfs::credentials().into(),
        syscalls: syscalls::try_all(),
        kernel_info: KernelInfo {
            kcore: files::try_open("/proc/kcore", files::READ),
            kallsyms: files::kallsyms().into(),
            kmsg: files::try_open("/dev/kmsg", files::READ),
        },
        host_triggers: files::host_triggers(&mount_entries),
        mounts: mounts.into(),
        devices: devices::devices().into(),
        limits: Limits {
            memory: cgroups::limit(&mount_entries, cgroups::MEMORY).into(),
            pids: cgroups::limit(&mount_entries, cgroups::PIDS).into(),
            allocation: options.allocation_test_mib.map(cgroups::allocation_test),
        },
        network: network::network().into(),
    }
}

/// Reads a small text file, trimmed; the error names the file.
pub(crate) fn read_trimmed(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .map_err(|e| format!("{path}: {}", crate::errno::io_error_name(&e)))
}
