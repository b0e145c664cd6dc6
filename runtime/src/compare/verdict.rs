//! Host-side verdicts: the probe's raw observations plus what the host knows -> one row per
//! check, each with the observed text and whether it counts as isolated.
//!
//! One principle runs through the rows: a finding that only concerns the kernel the sandbox
//! runs on (capabilities, syscalls, kernel files, host-trigger files, devices) is contained
//! when that kernel is not the host's (different boot id: a VM, or gVisor's Sentry), and the
//! observed text then says "guest kernel". Network and identity rows get no such exemption.
//! A check the probe could not run never counts as isolated.

use std::collections::BTreeMap;

use twinbox_probe::observations::{
    AllocationOutcome, KernelIdentity, MountEntry, Observations, OpenAttempt, Probed, Resources,
    RouteCheck, SyscallOutcome,
};

use super::CompareError;

/// The capabilities a default container keeps (Docker's and podman's default set). Anything
/// beyond them in the bounding set counts as elevated.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// Filesystems whose mount `root` says nothing about host paths (runc masks files with
/// binds of `/dev/null`, re-binds `/proc/sys` read-only, binds the container's own cgroup).
/// tmpfs is not among them: a fresh tmpfs has root `/`, a bind out of the host's `/run` has
/// not.
const PSEUDO_FILESYSTEMS: [&str; 19] = [
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "configfs",
    "fusectl",
    "pstore",
    "bpf",
    "hugetlbfs",
    "binfmt_misc",
    "autofs",
    "efivarfs",
    "nsfs",
];

/// Every check, in table order: (stable id, row title).
pub const CHECKS: [(&str, &str); 31] = [
    ("kernel.identity", "Kernel"),
    ("pids.host_visible", "Host PIDs visible"),
    ("resources.memtotal", "MemTotal"),
    ("resources.cpus", "CPUs (nproc)"),
    ("user.host_root", "Root is host root"),
    ("capabilities", "Capabilities (CapEff/CapBnd)"),
    ("no_new_privs", "NoNewPrivs"),
    ("seccomp", "Seccomp"),
    ("syscall.keyctl", "keyctl"),
    ("syscall.bpf", "bpf"),
    ("syscall.userfaultfd", "userfaultfd"),
    ("syscall.perf_event_open", "perf_event_open"),
    ("syscall.unshare", "unshare (user ns)"),
    ("syscall.mount", "mount"),
    ("syscall.kexec_load", "kexec_load"),
    ("syscall.io_uring_setup", "io_uring_setup"),
    ("kernel_info.kcore", "/proc/kcore readable"),
    ("kernel_info.kallsyms", "/proc/kallsyms addresses"),
    ("kernel_info.kmsg", "/dev/kmsg readable"),
    ("host_trigger.core_pattern", "core_pattern writable"),
    ("host_trigger.sysrq_trigger", "sysrq-trigger writable"),
    ("host_trigger.release_agent", "release_agent writable"),
    ("mounts.host_paths", "Mounts reveal host paths"),
    ("devices.block", "Block devices visible"),
    ("devices.kvm", "/dev/kvm visible"),
    ("limits.memory", "Memory limit enforced"),
    ("limits.pids", "PIDs limit enforced"),
    ("network.interfaces", "Network interfaces"),
    ("network.external", "External address routable"),
    ("identity.boot_id", "boot_id unique"),
    ("identity.machine_id", "machine-id unique"),
];

/// The row title of a check id.
pub fn check_title(id: &str) -> Option<&'static str> {
    CHECKS
        .iter()
        .find(|(check, _)| *check == id)
        .map(|(_, title)| *title)
}

/// What the host knows about itself, to compare the sandbox's view with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The host kernel (release, version, boot id).
    pub kernel: KernelIdentity,
    /// The host's machine id.
    pub machine_id: Option<String>,
    /// The host's memory and CPUs.
    pub resources: Resources,
    /// The host's namespaces (`/proc/self/ns/*` of the orchestrator), by kind.
    pub namespaces: BTreeMap<String, String>,
}

impl HostFacts {
    /// Reads this host's facts with the probe's own collectors (so both sides read them the
    /// same way). Call it from a process in the host's namespaces.
    pub fn collect() -> Result<Self, CompareError> {
        use twinbox_probe::checks::{kernel, procfs};
        let fact = |what: &'static str| move |message| CompareError::HostFacts { what, message };
        Ok(HostFacts {
            kernel: kernel::identity().map_err(fact("kernel identity"))?,
            machine_id: kernel::clone_identity()
                .map_err(fact("machine id"))?
                .machine_id,
            resources: procfs::resources().map_err(fact("memory and CPUs"))?,
            namespaces: kernel::namespaces().map_err(fact("namespaces"))?,
        })
    }
}

/// A host process the probe was asked about (`--host-pid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostProcess {
    /// Its pid on the host.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/<pid>/stat`) on the host.
    pub start_time_ticks: u64,
}

impl HostProcess {
    /// Describes a live host process (for `--host-pid`); `None` if it does not exist.
    pub fn of(pid: u32) -> Option<Self> {
        Some(HostProcess {
            pid,
            start_time_ticks: twinbox_probe::checks::procfs::start_time_ticks(pid)?,
        })
    }
}

/// Identities seen in another sandbox of the same column (for the clone rows).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SiblingIdentity {
    /// Its boot id.
    pub boot_id: Option<String>,
    /// Its machine id.
    pub machine_id: Option<String>,
}

/// What the sandbox was configured with, and what the orchestration arranged for the probe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expectation {
    /// The configured memory limit (container: cgroup; VM: guest RAM).
    pub memory_limit_bytes: Option<u64>,
    /// The configured pids limit.
    pub pids_limit: Option<u64>,
    /// The capabilities the sandbox was configured with; when set, any capability in
    /// effect beyond them also fails the capabilities row.
    pub configured_capabilities: Option<Vec<String>>,
    /// The host process passed to the probe as `--host-pid`.
    pub host_process: Option<HostProcess>,
    /// Host paths whose appearance in the sandbox's mount table reveals the host layout
    /// (bundle directory, image store, ...).
    pub host_paths: Vec<String>,
    /// Identities observed in other sandboxes of the same column.
    pub siblings: Vec<SiblingIdentity>,
}

/// One judged row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The check's stable id (see [`CHECKS`]).
    pub id: &'static str,
    /// What was observed, short enough for a table cell.
    pub observed: String,
    /// Whether it counts as isolated.
    pub isolated: bool,
}

/// Judges every check of `observations` (from a sandbox) against the host's facts and the
/// sandbox's expectation. Returns one verdict per entry of [`CHECKS`], in that order.
pub fn assess(observations: &Observations, host: &HostFacts, expect: &Expectation) -> Vec<Verdict> {
    let judge = Judge {
        obs: observations,
        host,
        expect,
        own_kernel: own_kernel(observations, host),
    };
    CHECKS
        .iter()
        .map(|(id, _)| {
            let (observed, isolated) = judge.row(id);
            Verdict {
                id,
                observed,
                isolated,
            }
        })
        .collect()
}

/// Whether the sandbox runs on a kernel other than the host's: boot ids differ (or, without
/// boot ids, release or version differ).
fn own_kernel(obs: &Observations, host: &HostFacts) -> bool {
    match (obs.kernel.ok(), &host.kernel.boot_id) {
        (Some(seen), Some(host_boot)) if seen.boot_id.is_some() => {
            seen.boot_id.as_deref() != Some(host_boot.as_str())
        }
        (Some(seen), _) => {
            seen.release != host.kernel.release || seen.version != host.kernel.version
        }
        (None, _) => false,
    }
}

/// "1.5 GiB", "64 MiB", "512 KiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What an open attempt shows, and whether the file was opened.
fn describe_open(attempt: &OpenAttempt, verb: &str) -> (String, bool) {
    match (attempt.opened, attempt.errno.as_deref()) {
        (true, _) => (verb.to_string(), true),
        (false, Some("ENOENT")) => ("absent".to_string(), false),
        (false, Some(errno)) => (format!("denied ({errno})"), false),
        (false, None) => ("not opened".to_string(), false),
    }
}

/// A row's (observed text, isolated).
type Cell = (String, bool);

/// A row, or the cell that says why it could not be judged.
type Row = Result<Cell, Cell>;

struct Judge<'a> {
    obs: &'a Observations,
    host: &'a HostFacts,
    expect: &'a Expectation,
    own_kernel: bool,
}

impl Judge<'_> {
    /// (observed, isolated) of one check id.
    fn row(&self, id: &str) -> Cell {
        let row = match id {
            "kernel.identity" => self.kernel_identity(),
            "pids.host_visible" => self.host_pids(),
            "resources.memtotal" => self.memtotal(),
            "resources.cpus" => self.cpus(),
            "user.host_root" => self.host_root(),
            "capabilities" => self.capabilities(),
            "no_new_privs" => self.no_new_privs(),
            "seccomp" => self.seccomp(),
            "kernel_info.kcore" => Ok(self.kcore()),
            "kernel_info.kallsyms" => Ok(self.kallsyms()),
            "kernel_info.kmsg" => {
                let (text, readable) = describe_open(&self.obs.kernel_info.kmsg, "readable");
                Ok(self.kernel_bound(text, !readable))
            }
            "host_trigger.core_pattern" => self.trigger("/proc/sys/kernel/core_pattern"),
            "host_trigger.sysrq_trigger" => self.trigger("/proc/sysrq-trigger"),
            "host_trigger.release_agent" => Ok(self.release_agent()),
            "mounts.host_paths" => self.mounts(),
            "devices.block" => self.block_devices(),
            "devices.kvm" => self.kvm(),
            "limits.memory" => Ok(self.memory_limit()),
            "limits.pids" => self.pids_limit(),
            "network.interfaces" => self.interfaces(),
            "network.external" => self.external(),
            "identity.boot_id" => Ok(self.boot_id()),
            "identity.machine_id" => self.machine_id(),
            other => match other.strip_prefix("syscall.") {
                Some(name) => self.syscall(name),
                None => Err((format!("unknown check {other}"), false)),
            },
        };
        row.unwrap_or_else(|not_judged| not_judged)
    }

    /// A finding that only matters on the host kernel: contained in a guest kernel.
    fn kernel_bound(&self, observed: String, isolated: bool) -> Cell {
        if self.own_kernel {
            (format!("{observed} (guest kernel)"), true)
        } else {
            (observed, isolated)
        }
    }

    /// A section's value, or the "not observed" cell.
    fn section<'s, T>(&self, probed: &'s Probed<T>) -> Result<&'s T, Cell> {
        match probed {
            Probed::Ok(value) => Ok(value),
            Probed::Error(message) => Err((format!("not observed: {message}"), false)),
        }
    }

    fn shares_namespace(&self, kind: &str) -> bool {
        let seen = self.obs.namespaces.ok().and_then(|ns| ns.get(kind));
        seen.is_some() && seen == self.host.namespaces.get(kind)
    }

    fn kernel_identity(&self) -> Row {
        let kernel = self.section(&self.obs.kernel)?;
        Ok(if self.own_kernel {
            (format!("{} (own kernel)", kernel.release), true)
        } else {
            (format!("{} (host kernel)", kernel.release), false)
        })
    }

    fn host_pids(&self) -> Row {
        let pids = self.section(&self.obs.pids)?;
        let count = format!("{} pids, self {}", pids.visible_pids, pids.self_pid);
        let visible = match (&pids.host_pid, &self.expect.host_process) {
            (Some(seen), Some(host)) if seen.pid == host.pid => {
                seen.present && seen.start_time_ticks == Some(host.start_time_ticks)
            }
            // Without a marker process: sharing the host's pid namespace on the host kernel.
            _ => !self.own_kernel && self.shares_namespace("pid"),
        };
        Ok(if visible {
            (format!("visible ({count})"), false)
        } else {
            (format!("hidden ({count})"), true)
        })
    }

    /// A resource as seen inside: own (a guest's, or virtualized) or the host's.
    fn resource_cell(&self, text: String, same_as_host: bool) -> Cell {
        if self.own_kernel || !same_as_host {
            (format!("{text} (own)"), true)
        } else {
            (format!("{text} (host's)"), false)
        }
    }

    fn memtotal(&self) -> Row {
        let resources = self.section(&self.obs.resources)?;
        Ok(self.resource_cell(
            human_bytes(resources.mem_total_kib * 1024),
            resources.mem_total_kib == self.host.resources.mem_total_kib,
        ))
    }

    fn cpus(&self) -> Row {
        let resources = self.section(&self.obs.resources)?;
        Ok(self.resource_cell(
            format!(
                "{} online, nproc {}",
                resources.online_cpus, resources.affinity_cpus
            ),
            resources.online_cpus == self.host.resources.online_cpus,
        ))
    }

    fn host_root(&self) -> Row {
        let user = self.section(&self.obs.user)?;
        let identity_map = user.uid_map.len() == 1 && user.uid_map[0] == "0 0 4294967295";
        Ok(if !identity_map {
            let map = user.uid_map.first().map_or("", String::as_str);
            (format!("uid {}, own user ns ({map})", user.euid), true)
        } else if user.euid == 0 {
            self.kernel_bound("uid 0 = host root".to_string(), false)
        } else {
            (format!("uid {} (host user ns)", user.euid), true)
        })
    }

    fn capabilities(&self) -> Row {
        let creds = self.section(&self.obs.credentials)?;
        let elevated: Vec<&str> = creds
            .cap_bnd
            .names
            .iter()
            .map(String::as_str)
            .filter(|cap| !DEFAULT_CAPABILITIES.contains(cap))
            .collect();
        let unexpected: Vec<&str> = match &self.expect.configured_capabilities {
            Some(configured) => creds
                .cap_eff
                .names
                .iter()
                .map(String::as_str)
                .filter(|cap| !configured.iter().any(|c| c == cap))
                .collect(),
            None => Vec::new(),
        };
        let short = |caps: &[&str]| {
            let names: Vec<&str> = caps.iter().map(|c| c.trim_start_matches("CAP_")).collect();
            if names.len() > 3 {
                format!("{} and {} more", names[..3].join(","), names.len() - 3)
            } else {
                names.join(",")
            }
        };
        let mut text = format!(
            "eff {}, bnd {}",
            creds.cap_eff.names.len(),
            creds.cap_bnd.names.len()
        );
        if !elevated.is_empty() {
            text.push_str(&format!("; +{}", short(&elevated)));
        }
        if !unexpected.is_empty() {
            text.push_str(&format!("; unexpected {}", short(&unexpected)));
        }
        Ok(self.kernel_bound(text, elevated.is_empty() && unexpected.is_empty()))
    }

    fn no_new_privs(&self) -> Row {
        let creds = self.section(&self.obs.credentials)?;
        Ok(if creds.no_new_privs {
            ("set".to_string(), true)
        } else {
            self.kernel_bound("not set".to_string(), false)
        })
    }

    fn seccomp(&self) -> Row {
        let creds = self.section(&self.obs.credentials)?;
        Ok(match (creds.seccomp_mode, creds.seccomp_filters) {
            (2, Some(n)) => (format!("filter ({n})"), true),
            (2, None) => ("filter".to_string(), true),
            (1, _) => ("strict".to_string(), true),
            _ => self.kernel_bound("disabled".to_string(), false),
        })
    }

    fn syscall(&self, name: &str) -> Row {
        let attempt = self
            .obs
            .syscalls
            .iter()
            .find(|a| a.syscall == name)
            .ok_or(("not tried".to_string(), false))?;
        let errno = attempt
            .errno
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        Ok(match attempt.outcome {
            SyscallOutcome::Denied => (format!("denied{errno}"), true),
            SyscallOutcome::Permitted => self.kernel_bound(format!("permitted{errno}"), false),
        })
    }

    fn kcore(&self) -> Cell {
        let kcore = &self.obs.kernel_info.kcore;
        let (text, readable) = match (kcore.opened, kcore.bytes_read) {
            (true, Some(0)) => ("masked (empty)".to_string(), false),
            _ => describe_open(kcore, "readable"),
        };
        self.kernel_bound(text, !readable)
    }

    fn kallsyms(&self) -> Cell {
        match &self.obs.kernel_info.kallsyms {
            // Not readable at all: nothing leaks.
            Probed::Error(message) => (format!("unreadable ({message})"), true),
            Probed::Ok(view) if view.nonzero_addresses > 0 => self.kernel_bound(
                format!(
                    "real addresses ({}/{})",
                    view.nonzero_addresses, view.symbols_read
                ),
                false,
            ),
            Probed::Ok(view) => (format!("zeroed ({} symbols)", view.symbols_read), true),
        }
    }

    fn trigger(&self, path: &str) -> Row {
        let attempt = self
            .obs
            .host_triggers
            .iter()
            .find(|a| a.path == path)
            .ok_or(("not tried".to_string(), false))?;
        let (text, writable) = describe_open(attempt, "writable");
        Ok(self.kernel_bound(text, !writable))
    }

    fn release_agent(&self) -> Cell {
        let agents: Vec<&OpenAttempt> = self
            .obs
            .host_triggers
            .iter()
            .filter(|a| a.path.ends_with("/release_agent"))
            .collect();
        let writable = agents.iter().filter(|a| a.opened).count();
        let text = match (agents.len(), writable) {
            (0, _) => "none visible".to_string(),
            (n, 0) => format!("{n} visible, none writable"),
            (n, w) => format!("{w} of {n} writable"),
        };
        self.kernel_bound(text, writable == 0)
    }

    /// Mount entries that show host paths: binds of a host subdirectory, overlayfs layer
    /// directories, and any configured host path.
    fn revealing_mounts<'m>(&self, mounts: &'m [MountEntry]) -> Vec<&'m MountEntry> {
        let mentions_host_path = |text: &str| {
            self.expect
                .host_paths
                .iter()
                .any(|host| !host.is_empty() && text.contains(host.as_str()))
        };
        mounts
            .iter()
            // The probe itself, when the orchestration bind-mounts it in.
            .filter(|m| m.mount_point != super::probe::IN_SANDBOX_PATH)
            .filter(|m| {
                let bind_of_subdir =
                    m.root != "/" && !PSEUDO_FILESYSTEMS.contains(&m.fstype.as_str());
                let overlay_dirs = ["lowerdir=/", "upperdir=/", "workdir=/"]
                    .iter()
                    .any(|option| m.super_options.contains(option));
                bind_of_subdir
                    || overlay_dirs
                    || mentions_host_path(&m.root)
                    || mentions_host_path(&m.source)
                    || mentions_host_path(&m.super_options)
            })
            .collect()
    }

    fn mounts(&self) -> Row {
        let mounts = self.section(&self.obs.mounts)?;
        if !self.own_kernel && self.shares_namespace("mnt") {
            return Ok((format!("host mount ns ({} mounts)", mounts.len()), false));
        }
        let revealing = self.revealing_mounts(mounts);
        Ok(match revealing.first() {
            None => (format!("none ({} mounts)", mounts.len()), true),
            Some(first) => {
                let shown = if first.root != "/" {
                    &first.root
                } else {
                    &first.super_options
                };
                (format!("{} mounts, e.g. {shown}", revealing.len()), false)
            }
        })
    }

    fn block_devices(&self) -> Row {
        let devices = self.section(&self.obs.devices)?;
        let visible = devices.block.len();
        let readable = devices.block.iter().filter(|d| d.opened).count();
        Ok(if visible == 0 {
            ("none".to_string(), true)
        } else {
            self.kernel_bound(format!("{visible} visible, {readable} readable"), false)
        })
    }

    fn kvm(&self) -> Row {
        let devices = self.section(&self.obs.devices)?;
        let (text, usable) = describe_open(&devices.kvm, "openable");
        Ok(self.kernel_bound(text, !usable))
    }

    fn memory_limit(&self) -> Cell {
        let cgroup = self.obs.limits.memory.ok().and_then(|limit| limit.limit);
        let guest_ram = self
            .obs
            .resources
            .ok()
            .filter(|_| self.own_kernel)
            .map(|r| r.mem_total_kib * 1024);
        // The tightest bound: the cgroup's, and in a guest also its RAM.
        let bound = [cgroup, guest_ram].into_iter().flatten().min();
        let mut text = match (cgroup, guest_ram) {
            (Some(limit), _) => format!("cgroup {}", human_bytes(limit)),
            (None, Some(ram)) => format!("guest RAM {}", human_bytes(ram)),
            (None, None) => "no cgroup limit".to_string(),
        };
        let within_config = match self.expect.memory_limit_bytes {
            Some(configured) => {
                text.push_str(&format!(", configured {}", human_bytes(configured)));
                bound.is_some_and(|bound| bound <= configured)
            }
            // Nothing configured: only a guest's RAM bounds the sandbox.
            None => guest_ram.is_some(),
        };
        let allocation_stopped = match &self.obs.limits.allocation {
            None => true,
            Some(test) => {
                let (outcome, stopped) = match &test.outcome {
                    AllocationOutcome::Completed => ("completed".to_string(), false),
                    AllocationOutcome::Killed { signal } => {
                        (format!("killed (signal {signal})"), true)
                    }
                    AllocationOutcome::Refused { errno } => (format!("refused ({errno})"), true),
                    AllocationOutcome::Error { message } => (format!("error: {message}"), false),
                };
                text.push_str(&format!("; {} MiB alloc {outcome}", test.requested_mib));
                stopped
            }
        };
        (text, within_config && allocation_stopped)
    }

    fn pids_limit(&self) -> Row {
        let limit = self.section(&self.obs.limits.pids)?.limit;
        let mut text = match limit {
            Some(limit) => format!("pids.max {limit}"),
            None => "no pids limit".to_string(),
        };
        let enforced = match self.expect.pids_limit {
            Some(configured) => {
                text.push_str(&format!(", configured {configured}"));
                limit.is_some_and(|limit| limit <= configured)
            }
            None => false,
        };
        // A fork bomb in a guest exhausts only the guest.
        Ok(self.kernel_bound(text, enforced))
    }

    fn interfaces(&self) -> Row {
        let network = self.section(&self.obs.network)?;
        let others: Vec<&str> = network
            .interfaces
            .iter()
            .map(String::as_str)
            .filter(|name| *name != "lo")
            .collect();
        Ok(if others.is_empty() {
            ("loopback only".to_string(), true)
        } else {
            (format!("lo + {}", others.join(",")), false)
        })
    }

    fn external(&self) -> Row {
        let network = self.section(&self.obs.network)?;
        let describe = |check: &RouteCheck| {
            if check.routable {
                "routable".to_string()
            } else {
                check.errno.clone().unwrap_or_else(|| "unreachable".into())
            }
        };
        let text = format!(
            "v4 {}, v6 {}",
            describe(&network.external_ipv4),
            describe(&network.external_ipv6)
        );
        Ok((
            text,
            !network.external_ipv4.routable && !network.external_ipv6.routable,
        ))
    }

    /// An identity that clones must not share: the host's, a sibling's, or its own.
    fn identity_cell(
        &self,
        seen: &str,
        host: Option<&str>,
        sibling: impl Fn(&SiblingIdentity) -> Option<&str>,
    ) -> Cell {
        let short: String = seen.chars().take(8).collect();
        if Some(seen) == host {
            (format!("{short}… (host's)"), false)
        } else if self
            .expect
            .siblings
            .iter()
            .any(|s| sibling(s) == Some(seen))
        {
            (format!("{short}… (shared by clones)"), false)
        } else {
            (format!("{short}… (own)"), true)
        }
    }

    fn boot_id(&self) -> Cell {
        match self.obs.kernel.ok().and_then(|k| k.boot_id.as_deref()) {
            None => ("unreadable".to_string(), true),
            Some(seen) => self.identity_cell(seen, self.host.kernel.boot_id.as_deref(), |s| {
                s.boot_id.as_deref()
            }),
        }
    }

    fn machine_id(&self) -> Row {
        let identity = self.section(&self.obs.identity)?;
        Ok(match identity.machine_id.as_deref() {
            None => ("absent".to_string(), true),
            Some(seen) => self.identity_cell(seen, self.host.machine_id.as_deref(), |s| {
                s.machine_id.as_deref()
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinbox_probe::observations::*;

    const HOST_BOOT: &str = "9bb46e3d-2514-4473-b140-16d3355d83e4";
    const HOST_MACHINE: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";
    const HOST_MEM_KIB: u64 = 24_684_084;

    fn caps(names: &[&str]) -> CapSet {
        let mask = names
            .iter()
            .map(|name| {
                twinbox_probe::caps::NAMES
                    .iter()
                    .position(|n| n == name)
                    .unwrap()
            })
            .fold(0u64, |mask, bit| mask | 1 << bit);
        CapSet {
            mask: format!("{mask:016x}"),
            names: twinbox_probe::caps::decode(mask),
        }
    }

    fn open(path: &str, mode: AccessMode, errno: Option<&str>) -> OpenAttempt {
        OpenAttempt {
            path: path.into(),
            mode,
            opened: errno.is_none(),
            bytes_read: (errno.is_none() && mode == AccessMode::Read).then_some(0),
            errno: errno.map(str::to_string),
        }
    }

    fn namespaces(base: u64) -> Probed<BTreeMap<String, String>> {
        Probed::Ok(
            ["mnt", "net", "pid", "user"]
                .iter()
                .enumerate()
                .map(|(i, kind)| (kind.to_string(), format!("{kind}:[{}]", base + i as u64)))
                .collect(),
        )
    }

    fn host() -> HostFacts {
        HostFacts {
            kernel: KernelIdentity {
                release: "6.1.0-18-amd64".into(),
                version: "#1 SMP Debian".into(),
                machine: "x86_64".into(),
                proc_version: None,
                boot_id: Some(HOST_BOOT.into()),
            },
            machine_id: Some(HOST_MACHINE.into()),
            resources: Resources {
                mem_total_kib: HOST_MEM_KIB,
                online_cpus: 2,
                affinity_cpus: 2,
            },
            namespaces: namespaces(4026531830).ok().unwrap().clone(),
        }
    }

    /// What the probe reports in a `runc spec` container (root, default caps, no seccomp)
    /// with a 64 MiB memory limit and pids.max 64.
    fn runc_default() -> Observations {
        let syscall = |name: &str, outcome, errno: Option<&str>| SyscallAttempt {
            syscall: name.into(),
            tried: "harmless".into(),
            outcome,
            errno: errno.map(str::to_string),
        };
        use SyscallOutcome::{Denied, Permitted};
        Observations {
            schema: SCHEMA_VERSION,
            probe_version: "0.1.0".into(),
            kernel: Probed::Ok(KernelIdentity {
                boot_id: Some(HOST_BOOT.into()),
                ..host().kernel
            }),
            identity: Probed::Ok(CloneIdentity {
                hostname: "runc".into(),
                machine_id: None,
            }),
            namespaces: namespaces(4026532200),
            user: Probed::Ok(UserView {
                uid: 0,
                euid: 0,
                uid_map: vec!["0 0 4294967295".into()],
            }),
            pids: Probed::Ok(PidView {
                self_pid: 1,
                visible_pids: 1,
                host_pid: Some(HostPidView {
                    pid: 4242,
                    present: false,
                    start_time_ticks: None,
                }),
            }),
            resources: Probed::Ok(Resources {
                mem_total_kib: HOST_MEM_KIB,
                online_cpus: 2,
                affinity_cpus: 2,
            }),
            credentials: Probed::Ok(Credentials {
                cap_eff: caps(&["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]),
                cap_bnd: caps(&["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]),
                no_new_privs: true,
                seccomp_mode: 0,
                seccomp_filters: Some(0),
            }),
            syscalls: vec![
                syscall("keyctl", Permitted, Some("ENOKEY")),
                syscall("bpf", Denied, Some("EPERM")),
                syscall("userfaultfd", Denied, Some("EPERM")),
                syscall("perf_event_open", Permitted, None),
                syscall("unshare", Permitted, None),
                syscall("mount", Denied, Some("EPERM")),
                syscall("kexec_load", Denied, Some("EPERM")),
                syscall("io_uring_setup", Permitted, None),
            ],
            kernel_info: KernelInfo {
                kcore: open("/proc/kcore", AccessMode::Read, None),
                kallsyms: Probed::Ok(KallsymsView {
                    symbols_read: 300,
                    nonzero_addresses: 0,
                }),
                kmsg: open("/dev/kmsg", AccessMode::Read, Some("ENOENT")),
            },
            host_triggers: vec![
                open(
                    "/proc/sys/kernel/core_pattern",
                    AccessMode::Write,
                    Some("EROFS"),
                ),
                open("/proc/sysrq-trigger", AccessMode::Write, Some("EROFS")),
                open(
                    "/sys/fs/cgroup/memory/release_agent",
                    AccessMode::Write,
                    Some("EROFS"),
                ),
            ],
            mounts: Probed::Ok(vec![MountEntry {
                mount_point: "/".into(),
                root: "/tmp/probe-test/bundle/rootfs".into(),
                fstype: "ext4".into(),
                source: "/dev/vda1".into(),
                options: "rw".into(),
                super_options: "rw".into(),
            }]),
            devices: Probed::Ok(Devices {
                block: vec![],
                kvm: open("/dev/kvm", AccessMode::Write, Some("ENOENT")),
            }),
            limits: Limits {
                memory: Probed::Ok(CgroupLimit {
                    limit: Some(64 << 20),
                    files: vec![],
                }),
                pids: Probed::Ok(CgroupLimit {
                    limit: Some(64),
                    files: vec![],
                }),
                allocation: None,
            },
            network: Probed::Ok(Network {
                interfaces: vec!["lo".into()],
                ipv4_default_route: false,
                ipv6_default_route: false,
                external_ipv4: RouteCheck {
                    address: "203.0.113.1".into(),
                    routable: false,
                    errno: Some("ENETUNREACH".into()),
                },
                external_ipv6: RouteCheck {
                    address: "2001:db8::1".into(),
                    routable: false,
                    errno: Some("ENETUNREACH".into()),
                },
            }),
        }
    }

    fn expectation() -> Expectation {
        Expectation {
            memory_limit_bytes: Some(64 << 20),
            pids_limit: Some(64),
            host_process: Some(HostProcess {
                pid: 4242,
                start_time_ticks: 777,
            }),
            ..Expectation::default()
        }
    }

    fn verdicts(obs: &Observations, expect: &Expectation) -> BTreeMap<&'static str, Verdict> {
        assess(obs, &host(), expect)
            .into_iter()
            .map(|verdict| (verdict.id, verdict))
            .collect()
    }

    fn isolated(verdicts: &BTreeMap<&'static str, Verdict>) -> Vec<&'static str> {
        verdicts
            .values()
            .filter(|v| v.isolated)
            .map(|v| v.id)
            .collect()
    }

    #[test]
    fn one_verdict_per_check_in_order() {
        let all = assess(&runc_default(), &host(), &expectation());
        let ids: Vec<&str> = all.iter().map(|v| v.id).collect();
        let expected: Vec<&str> = CHECKS.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn runc_default_container() {
        let rows = verdicts(&runc_default(), &expectation());
        let not_isolated: Vec<&str> = rows
            .values()
            .filter(|v| !v.isolated)
            .map(|v| v.id)
            .collect();
        assert_eq!(
            not_isolated,
            [
                "identity.boot_id",
                "kernel.identity",
                "mounts.host_paths",
                "resources.cpus",
                "resources.memtotal",
                "seccomp",
                "syscall.io_uring_setup",
                "syscall.keyctl",
                "syscall.perf_event_open",
                "syscall.unshare",
                "user.host_root",
            ]
        );
        assert_eq!(rows["capabilities"].observed, "eff 3, bnd 3");
        assert_eq!(rows["kernel_info.kcore"].observed, "masked (empty)");
        assert_eq!(
            rows["limits.memory"].observed,
            "cgroup 64 MiB, configured 64 MiB"
        );
        assert!(
            rows["mounts.host_paths"]
                .observed
                .contains("/tmp/probe-test/bundle/rootfs")
        );
    }

    #[test]
    fn cap_add_sys_admin_loses_the_capabilities_row_only() {
        let mut obs = runc_default();
        let Probed::Ok(creds) = &mut obs.credentials else {
            unreachable!()
        };
        let elevated = [
            "CAP_AUDIT_WRITE",
            "CAP_KILL",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_ADMIN",
        ];
        creds.cap_eff = caps(&elevated);
        creds.cap_bnd = caps(&elevated);
        let before = verdicts(&runc_default(), &expectation());
        let after = verdicts(&obs, &expectation());
        assert!(before["capabilities"].isolated);
        assert!(!after["capabilities"].isolated);
        assert!(
            after["capabilities"].observed.contains("+SYS_ADMIN"),
            "{:?}",
            after["capabilities"]
        );
        let mut changed: Vec<&str> = isolated(&before);
        changed.retain(|id| !isolated(&after).contains(id));
        assert_eq!(changed, ["capabilities"]);

        // Configured with SYS_ADMIN it is still elevated; capabilities beyond the
        // configured ones are called out too.
        let configured = Expectation {
            configured_capabilities: Some(vec!["CAP_KILL".into()]),
            ..expectation()
        };
        let row = &verdicts(&runc_default(), &configured)["capabilities"];
        assert!(!row.isolated);
        assert!(
            row.observed
                .contains("unexpected NET_BIND_SERVICE,AUDIT_WRITE"),
            "{row:?}"
        );
    }

    #[test]
    fn limits_need_a_configured_limit_that_holds() {
        let unconfigured = Expectation {
            memory_limit_bytes: None,
            pids_limit: None,
            ..expectation()
        };
        let rows = verdicts(&runc_default(), &unconfigured);
        assert!(!rows["limits.memory"].isolated && !rows["limits.pids"].isolated);

        let mut obs = runc_default();
        obs.limits.pids = Probed::Ok(CgroupLimit {
            limit: None,
            files: vec![],
        });
        obs.limits.allocation = Some(AllocationTest {
            requested_mib: 96,
            outcome: AllocationOutcome::Completed,
            elapsed_ms: 20,
        });
        let rows = verdicts(&obs, &expectation());
        assert_eq!(rows["limits.pids"].observed, "no pids limit, configured 64");
        assert!(!rows["limits.pids"].isolated);
        // The cgroup says 64 MiB but the allocation went through: not enforced.
        assert!(
            !rows["limits.memory"].isolated,
            "{:?}",
            rows["limits.memory"]
        );
        obs.limits.allocation.as_mut().unwrap().outcome = AllocationOutcome::Killed { signal: 9 };
        assert!(verdicts(&obs, &expectation())["limits.memory"].isolated);
    }

    #[test]
    fn host_network_and_visible_host_pid() {
        let mut obs = runc_default();
        let Probed::Ok(network) = &mut obs.network else {
            unreachable!()
        };
        network.interfaces.push("eth0".into());
        network.external_ipv4.routable = true;
        network.external_ipv4.errno = None;
        let Probed::Ok(pids) = &mut obs.pids else {
            unreachable!()
        };
        pids.host_pid = Some(HostPidView {
            pid: 4242,
            present: true,
            start_time_ticks: Some(777),
        });
        let rows = verdicts(&obs, &expectation());
        assert!(!rows["network.interfaces"].isolated);
        assert_eq!(
            rows["network.external"].observed,
            "v4 routable, v6 ENETUNREACH"
        );
        assert!(!rows["network.external"].isolated);
        assert!(!rows["pids.host_visible"].isolated);
        // Same pid number, another process (other start time): not the host's.
        let Probed::Ok(pids) = &mut obs.pids else {
            unreachable!()
        };
        pids.host_pid.as_mut().unwrap().start_time_ticks = Some(5);
        assert!(verdicts(&obs, &expectation())["pids.host_visible"].isolated);
    }

    #[test]
    fn guest_kernel_contains_kernel_findings_but_not_network_or_clones() {
        let mut vm = runc_default();
        let Probed::Ok(kernel) = &mut vm.kernel else {
            unreachable!()
        };
        kernel.release = "6.12.9-twinbox".into();
        kernel.boot_id = Some("0f0e0d0c-0000-4000-8000-000000000001".into());
        let Probed::Ok(creds) = &mut vm.credentials else {
            unreachable!()
        };
        creds.cap_eff = caps(&twinbox_probe::caps::NAMES);
        creds.cap_bnd = caps(&twinbox_probe::caps::NAMES);
        creds.no_new_privs = false;
        vm.syscalls
            .iter_mut()
            .for_each(|s| s.outcome = SyscallOutcome::Permitted);
        vm.resources = Probed::Ok(Resources {
            mem_total_kib: 120 * 1024,
            online_cpus: 1,
            affinity_cpus: 1,
        });
        vm.mounts = Probed::Ok(vec![MountEntry {
            mount_point: "/".into(),
            root: "/".into(),
            fstype: "ext4".into(),
            source: "/dev/vda".into(),
            options: "rw".into(),
            super_options: "rw".into(),
        }]);
        vm.limits.memory = Probed::Ok(CgroupLimit {
            limit: None,
            files: vec![],
        });
        let Probed::Ok(network) = &mut vm.network else {
            unreachable!()
        };
        network.interfaces.push("eth0".into());
        let siblings = Expectation {
            siblings: vec![SiblingIdentity {
                boot_id: kernel_boot(&vm),
                machine_id: None,
            }],
            memory_limit_bytes: Some(128 << 20),
            ..expectation()
        };
        let rows = verdicts(&vm, &siblings);
        let not_isolated: Vec<&str> = rows
            .values()
            .filter(|v| !v.isolated)
            .map(|v| v.id)
            .collect();
        assert_eq!(not_isolated, ["identity.boot_id", "network.interfaces"]);
        assert_eq!(
            rows["capabilities"].observed,
            "eff 41, bnd 41; +DAC_READ_SEARCH,LINUX_IMMUTABLE,NET_BROADCAST and 24 more (guest kernel)"
        );
        assert_eq!(
            rows["identity.boot_id"].observed,
            "0f0e0d0c… (shared by clones)"
        );
        assert_eq!(
            rows["limits.memory"].observed,
            "guest RAM 120 MiB, configured 128 MiB"
        );
        assert_eq!(
            rows["kernel.identity"].observed,
            "6.12.9-twinbox (own kernel)"
        );
    }

    fn kernel_boot(obs: &Observations) -> Option<String> {
        obs.kernel.ok().and_then(|k| k.boot_id.clone())
    }

    #[test]
    fn unobserved_sections_never_count_as_isolated() {
        let mut obs = runc_default();
        obs.credentials = Probed::Error("/proc/self/status: EACCES".into());
        obs.network = Probed::Error("/proc/net/dev: ENOENT".into());
        let rows = verdicts(&obs, &expectation());
        for id in [
            "capabilities",
            "seccomp",
            "no_new_privs",
            "network.external",
        ] {
            assert!(!rows[id].isolated, "{id}");
            assert!(
                rows[id].observed.starts_with("not observed: "),
                "{:?}",
                rows[id]
            );
        }
    }

    #[test]
    fn human_bytes_picks_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(HOST_MEM_KIB * 1024), "23.5 GiB");
    }
}
