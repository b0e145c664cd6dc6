//! The raw observations document that `twinbox-probe isolation` prints.
//!
//! Facts only: the probe records what it saw (values, errno names, which files opened) and
//! never decides what is isolated; the host does that with its own knowledge. Every section
//! that can fail on its own is a [`Probed`], so one broken check leaves the others intact.
//! Unknown fields are rejected when the host reads a document, so a probe and a host built
//! from different schemas fail loudly instead of silently losing checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of this document's layout; bumped on every incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The outcome of one check section: its value, or why it could not be observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Probed<T> {
    /// The section was observed.
    Ok(T),
    /// The section could not be observed; the text says why.
    Error(String),
}

impl<T> Probed<T> {
    /// The observed value, if any.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Probed::Ok(value) => Some(value),
            Probed::Error(_) => None,
        }
    }
}

impl<T> From<Result<T, String>> for Probed<T> {
    fn from(result: Result<T, String>) -> Self {
        match result {
            Ok(value) => Probed::Ok(value),
            Err(message) => Probed::Error(message),
        }
    }
}

/// Everything `twinbox-probe isolation` observed, in one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observations {
    /// [`SCHEMA_VERSION`] of the probe that wrote the document.
    pub schema: u32,
    /// Version of the probe binary.
    pub probe_version: String,
    /// Which kernel the probe runs on.
    pub kernel: Probed<KernelIdentity>,
    /// Host name and machine id, for clone uniqueness.
    pub identity: Probed<CloneIdentity>,
    /// `/proc/self/ns/*` link targets (`"pid:[4026531836]"`), keyed by namespace kind.
    pub namespaces: Probed<BTreeMap<String, String>>,
    /// Who the probe runs as, and its user namespace mapping.
    pub user: Probed<UserView>,
    /// The process ids the probe can see.
    pub pids: Probed<PidView>,
    /// Memory and CPUs as the sandbox sees them.
    pub resources: Probed<Resources>,
    /// Capabilities, no_new_privs and seccomp from `/proc/self/status`.
    pub credentials: Probed<Credentials>,
    /// The dangerous syscalls tried, in a fixed order.
    pub syscalls: Vec<SyscallAttempt>,
    /// `/proc/kcore`, `/proc/kallsyms` and `/dev/kmsg`.
    pub kernel_info: KernelInfo,
    /// Host-trigger files opened for writing (nothing is written).
    pub host_triggers: Vec<OpenAttempt>,
    /// `/proc/self/mountinfo`, parsed.
    pub mounts: Probed<Vec<MountEntry>>,
    /// Block devices and `/dev/kvm`.
    pub devices: Probed<Devices>,
    /// Resource limits that apply to the probe.
    pub limits: Limits,
    /// Network interfaces and reachability of outside addresses.
    pub network: Probed<Network>,
}

/// The kernel the probe runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelIdentity {
    /// `uname -r`.
    pub release: String,
    /// `uname -v`.
    pub version: String,
    /// `uname -m`.
    pub machine: String,
    /// First line of `/proc/version`, if readable.
    pub proc_version: Option<String>,
    /// `/proc/sys/kernel/random/boot_id`: unique per booted kernel, so equal boot ids mean
    /// the same running kernel.
    pub boot_id: Option<String>,
}

/// Identities that clones of one machine must not share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneIdentity {
    /// `uname -n`.
    pub hostname: String,
    /// `/etc/machine-id` (or `/var/lib/dbus/machine-id`), absent in most images.
    pub machine_id: Option<String>,
}

/// Who the probe runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserView {
    /// Real uid.
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
    /// `/proc/self/uid_map`, one mapping per line (`inside outside count`).
    pub uid_map: Vec<String>,
}

/// Process ids visible to the probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PidView {
    /// The probe's own pid (1 or small in a fresh pid namespace).
    pub self_pid: u32,
    /// How many processes `/proc` lists.
    pub visible_pids: u32,
    /// The host-only process the orchestration asked about (`--host-pid`), if any.
    pub host_pid: Option<HostPidView>,
}

/// What the probe sees at a pid that, on the host, belongs to a host-only process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPidView {
    /// The pid asked about.
    pub pid: u32,
    /// Whether `/proc/<pid>` exists for the probe.
    pub present: bool,
    /// Field 22 of `/proc/<pid>/stat` (start time in clock ticks after boot) when present:
    /// the host compares it with the real process's, so a different process that merely
    /// has the same pid number in another namespace is not mistaken for the host's.
    pub start_time_ticks: Option<u64>,
}

/// Memory and CPUs as the sandbox sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `MemTotal` from `/proc/meminfo`, in KiB.
    pub mem_total_kib: u64,
    /// Online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`).
    pub online_cpus: u32,
    /// CPUs in the probe's affinity mask (what `nproc` prints).
    pub affinity_cpus: u32,
}

/// A capability set from `/proc/self/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapSet {
    /// The mask as the kernel prints it (16 hex digits).
    pub mask: String,
    /// Decoded capability names (`CAP_SYS_ADMIN`, ...).
    pub names: Vec<String>,
}

/// Privilege state from `/proc/self/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// `CapEff`: capabilities in effect now.
    pub cap_eff: CapSet,
    /// `CapBnd`: the bounding set, the most the process can ever gain.
    pub cap_bnd: CapSet,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
    /// `Seccomp`: 0 disabled, 1 strict, 2 filter.
    pub seccomp_mode: u32,
    /// `Seccomp_filters` (Linux 5.9+): how many filters are attached.
    pub seccomp_filters: Option<u32>,
}

/// Whether a dangerous syscall got past the kernel's permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyscallOutcome {
    /// The kernel performed it (or failed only on the harmless arguments).
    Permitted,
    /// Refused (`EPERM`/`EACCES`), filtered, or not available (`ENOSYS`).
    Denied,
}

/// One dangerous syscall tried with harmless arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallAttempt {
    /// The syscall's name (`keyctl`, `bpf`, ...).
    pub syscall: String,
    /// What the call was (arguments and why they are harmless).
    pub tried: String,
    /// Permitted or denied.
    pub outcome: SyscallOutcome,
    /// The errno it returned, if it failed.
    pub errno: Option<String>,
}

/// How a file was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessMode {
    /// `O_RDONLY`, then one read.
    Read,
    /// `O_WRONLY`, closed again without writing.
    Write,
}

/// One file opened (and, for reads, read once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAttempt {
    /// The file.
    pub path: String,
    /// How it was opened.
    pub mode: AccessMode,
    /// Whether `open` succeeded.
    pub opened: bool,
    /// For reads that opened: how many bytes the first read returned (0 for a file masked
    /// with `/dev/null`).
    pub bytes_read: Option<u64>,
    /// The errno of the failed open or read (`ENOENT` when the file is absent).
    pub errno: Option<String>,
}

/// Kernel information leaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// `/proc/kcore`, read once.
    pub kcore: OpenAttempt,
    /// `/proc/kallsyms` symbol addresses.
    pub kallsyms: Probed<KallsymsView>,
    /// `/dev/kmsg`, read once without blocking.
    pub kmsg: OpenAttempt,
}

/// What `/proc/kallsyms` gives away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KallsymsView {
    /// Symbols read (the first page or so of the file).
    pub symbols_read: u32,
    /// How many of them had a non-zero address: real kernel addresses, a KASLR bypass.
    pub nonzero_addresses: u32,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountEntry {
    /// Where it is mounted, as the probe sees it.
    pub mount_point: String,
    /// The directory of the mounted filesystem that appears at the mount point (field 4):
    /// for bind mounts a path inside the source filesystem, often a host path.
    pub root: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (device, `overlay`, `proc`, ...).
    pub source: String,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: String,
    /// Per-superblock options (overlayfs puts its host `lowerdir=` paths here).
    pub super_options: String,
}

/// Devices the sandbox can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// Block device nodes under `/dev` (at most 64), each opened read-only and read once
    /// (4 KiB, the partition table): readable means the sandbox can read a disk.
    pub block: Vec<OpenAttempt>,
    /// `/dev/kvm` opened for writing, as a VMM would (no ioctl is issued).
    pub kvm: OpenAttempt,
}

/// Resource limits that apply to the probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The cgroup memory limit.
    pub memory: Probed<CgroupLimit>,
    /// The cgroup pids limit.
    pub pids: Probed<CgroupLimit>,
    /// The allocation test, when the orchestration asked for one.
    pub allocation: Option<AllocationTest>,
}

/// The tightest cgroup limit of one kind over the probe's cgroup and its ancestors, in
/// every hierarchy (v1 and v2) the probe can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupLimit {
    /// The smallest limit found (bytes for memory, tasks for pids); `None` when no file
    /// sets one.
    pub limit: Option<u64>,
    /// The limit files read and their raw values.
    pub files: Vec<CgroupFile>,
}

/// One cgroup limit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupFile {
    /// The file, as the probe sees it.
    pub path: String,
    /// Its content (`max`, a number, ...).
    pub value: String,
}

/// A child process that allocated and touched memory to see the limit enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationTest {
    /// MiB the child tried to touch.
    pub requested_mib: u64,
    /// What happened to it.
    pub outcome: AllocationOutcome,
    /// How long the test took.
    pub elapsed_ms: u64,
}

/// The fate of the allocating child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AllocationOutcome {
    /// It touched every page: no limit stopped it.
    Completed,
    /// It was killed by this signal (the OOM killer sends `SIGKILL`).
    Killed {
        /// The signal number.
        signal: i32,
    },
    /// `mmap` refused the allocation.
    Refused {
        /// The errno of `mmap`.
        errno: String,
    },
    /// The test itself could not run.
    Error {
        /// Why.
        message: String,
    },
}

/// Network view of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interface names from `/proc/net/dev` (always the probe's own network namespace).
    pub interfaces: Vec<String>,
    /// Whether `/proc/net/route` has an IPv4 default route.
    pub ipv4_default_route: bool,
    /// Whether `/proc/net/ipv6_route` has an IPv6 default route.
    pub ipv6_default_route: bool,
    /// Route lookup for an IPv4 documentation address.
    pub external_ipv4: RouteCheck,
    /// Route lookup for an IPv6 documentation address.
    pub external_ipv6: RouteCheck,
}

/// Whether the kernel has a route to an outside address: a UDP socket is `connect`ed to it,
/// which only looks the route up and sends no packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCheck {
    /// The address looked up (a TEST-NET / documentation address).
    pub address: String,
    /// Whether a route exists.
    pub routable: bool,
    /// The errno of a failed lookup (`ENETUNREACH` when there is no route).
    pub errno: Option<String>,
}

impl Observations {
    /// Parses a probe's JSON document, rejecting unknown fields and other schema versions.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let observations: Observations = serde_json::from_str(text)
            .map_err(|e| format!("the probe's output is not an observations document: {e}"))?;
        if observations.schema != SCHEMA_VERSION {
            return Err(format!(
                "the probe wrote schema {} but this twinbox reads schema {SCHEMA_VERSION}: \
                 inject the twinbox-probe binary built with this twinbox",
                observations.schema
            ));
        }
        Ok(observations)
    }
}
