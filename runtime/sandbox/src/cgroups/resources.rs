//! Writing `linux.resources` to cgroup v1 and v2 control files.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::{Cgroup, CgroupError, write};

/// Devices every container may use whatever its rules say (as runc's AllowedDevices): the
/// default device nodes, /dev/pts/* and /dev/ptmx.
const ALWAYS_ALLOWED: [(char, i64, Option<i64>); 9] = [
    ('c', 1, Some(3)),
    ('c', 1, Some(5)),
    ('c', 1, Some(7)),
    ('c', 1, Some(8)),
    ('c', 1, Some(9)),
    ('c', 5, Some(0)),
    ('c', 5, Some(1)),
    ('c', 5, Some(2)),
    ('c', 136, None),
];

struct Writer<'a> {
    cgroup: &'a Cgroup,
}

impl Writer<'_> {
    /// The directory for `controller`, or an error naming what is missing.
    fn dir(&self, controller: &str, what: &str) -> Result<PathBuf, CgroupError> {
        self.cgroup.controller_dir(controller).ok_or_else(|| {
            CgroupError::Unsupported(format!(
                "the config sets {what}, but the {controller} cgroup controller is not \
                 available on this host; remove the limit or enable the controller"
            ))
        })
    }

    fn set(&self, controller: &str, file: &str, value: impl ToString) -> Result<(), CgroupError> {
        let dir = self.dir(controller, file)?;
        write(&dir.join(file), &value.to_string())
    }
}

fn device_rule(rule: &LinuxDeviceCgroup) -> String {
    let kind = match rule.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => "a",
        LinuxDeviceType::B => "b",
        LinuxDeviceType::C | LinuxDeviceType::U => "c",
        LinuxDeviceType::P => "p",
    };
    let number = |n: Option<i64>| {
        n.filter(|n| *n >= 0)
            .map_or("*".to_string(), |n| n.to_string())
    };
    let access = rule
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    format!(
        "{kind} {}:{} {access}",
        number(rule.major()),
        number(rule.minor())
    )
}

/// Applies resources on cgroup v1.
pub(super) fn apply_v1(cgroup: &Cgroup, resources: &LinuxResources) -> Result<(), CgroupError> {
    let w = Writer { cgroup };
    if let Some(memory) = resources.memory() {
        if let Some(limit) = memory.limit() {
            w.set("memory", "memory.limit_in_bytes", limit)?;
        }
        if let Some(swap) = memory.swap() {
            // OCI's swap is memory+swap, exactly v1's memsw.
            let dir = w.dir("memory", "memory.swap")?;
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if !memsw.exists() {
                return Err(CgroupError::Unsupported(
                    "the config sets memory.swap, but this kernel has no swap accounting \
                     (memory.memsw.limit_in_bytes is missing); boot with swapaccount=1 or \
                     remove the swap limit"
                        .into(),
                ));
            }
            write(&memsw, &swap.to_string())?;
        }
        if let Some(reservation) = memory.reservation() {
            w.set("memory", "memory.soft_limit_in_bytes", reservation)?;
        }
        if let Some(swappiness) = memory.swappiness() {
            if swappiness > 100 {
                return Err(CgroupError::Unsupported(format!(
                    "memory.swappiness {swappiness} is out of range 0-100"
                )));
            }
            w.set("memory", "memory.swappiness", swappiness)?;
        }
        if memory.disable_oom_killer() == Some(true) {
            w.set("memory", "memory.oom_control", 1)?;
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares() {
            w.set("cpu", "cpu.shares", shares)?;
        }
        if let Some(period) = cpu.period() {
            w.set("cpu", "cpu.cfs_period_us", period)?;
        }
        if let Some(quota) = cpu.quota() {
            w.set("cpu", "cpu.cfs_quota_us", quota)?;
        }
        if let Some(period) = cpu.realtime_period() {
            w.set("cpu", "cpu.rt_period_us", period)?;
        }
        if let Some(runtime) = cpu.realtime_runtime() {
            w.set("cpu", "cpu.rt_runtime_us", runtime)?;
        }
    }
    apply_cpuset_and_pids(&w, resources)?;
    if let Some(block_io) = resources.block_io()
        && let Some(weight) = block_io.weight()
    {
        w.set("blkio", "blkio.weight", weight)?;
    }
    if let Some(rules) = resources.devices()
        && let Some(dir) = cgroup.controller_dir("devices")
    {
        apply_device_rules(&dir, rules)?;
    }
    Ok(())
}

fn apply_device_rules(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    for rule in rules {
        let file = if rule.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(&dir.join(file), &device_rule(rule))?;
    }
    for (kind, major, minor) in ALWAYS_ALLOWED {
        let minor = minor.map_or("*".to_string(), |m| m.to_string());
        write(
            &dir.join("devices.allow"),
            &format!("{kind} {major}:{minor} rwm"),
        )?;
    }
    Ok(())
}

/// cpuset and pids files have the same names and formats on v1 and v2.
fn apply_cpuset_and_pids(w: &Writer<'_>, resources: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(cpu) = resources.cpu() {
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            w.set("cpuset", "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            w.set("cpuset", "cpuset.mems", mems)?;
        }
    }
    if let Some(pids) = resources.pids() {
        w.set("pids", "pids.max", pids_max(pids.limit()))?;
    }
    Ok(())
}

fn pids_max(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".to_string()
    }
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), as runc and crun convert.
pub(super) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// Applies resources on cgroup v2.
pub(super) fn apply_v2(cgroup: &Cgroup, resources: &LinuxResources) -> Result<(), CgroupError> {
    let w = Writer { cgroup };
    let max = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if let Some(memory) = resources.memory() {
        if let Some(limit) = memory.limit() {
            w.set("memory", "memory.max", max(limit))?;
        }
        if let Some(swap) = memory.swap() {
            // OCI's swap is memory+swap; v2 limits swap alone.
            let value = match (swap, memory.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(limit)) if limit >= 0 => {
                    if s < limit {
                        return Err(CgroupError::Unsupported(format!(
                            "memory.swap ({s}) must be at least memory.limit ({limit})"
                        )));
                    }
                    (s - limit).to_string()
                }
                (s, _) => s.to_string(),
            };
            w.set("memory", "memory.swap.max", value)?;
        }
        if let Some(reservation) = memory.reservation() {
            w.set("memory", "memory.low", max(reservation))?;
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares() {
            w.set("cpu", "cpu.weight", shares_to_weight(shares))?;
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let quota = cpu
                .quota()
                .filter(|q| *q > 0)
                .map_or("max".into(), |q| q.to_string());
            w.set(
                "cpu",
                "cpu.max",
                format!("{quota} {}", cpu.period().unwrap_or(100_000)),
            )?;
        }
    }
    apply_cpuset_and_pids(&w, resources)?;
    if let Some(block_io) = resources.block_io()
        && let Some(weight) = block_io.weight()
    {
        // blkio weight 10..1000 -> io.weight 1..10000
        let io_weight = 1 + (u64::from(weight).saturating_sub(10) * 9999) / 990;
        w.set("io", "io.weight", format!("default {io_weight}"))?;
    }
    if let Some(unified) = resources.unified() {
        let dir = w.dir("", "linux.resources.unified")?;
        for (file, value) in unified {
            if file.contains('/') || file.starts_with('.') {
                return Err(CgroupError::Unsupported(format!(
                    "linux.resources.unified key {file:?} is not a cgroup file name"
                )));
            }
            write(&dir.join(file), value)?;
        }
    }
    Ok(())
}
