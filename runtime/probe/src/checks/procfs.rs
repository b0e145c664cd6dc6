//! Checks read from procfs: visible pids, memory and CPUs, and `/proc/self/status`.

use super::read_trimmed;
use crate::caps;
use crate::observations::{CapSet, Credentials, HostPidView, PidView, Resources};

/// The start time (field 22 of `/proc/<pid>/stat`, clock ticks after boot) of a process.
pub fn start_time_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after it follow the
    // last ')'. Field 3 is the first after it, so field 22 is the 20th.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Process ids the probe can see, and whether the host-only `host_pid` is among them.
pub fn pids(host_pid: Option<u32>) -> Result<PidView, String> {
    let entries = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {}", crate::errno::io_error_name(&e)))?;
    let visible_pids = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count() as u32;
    Ok(PidView {
        self_pid: std::process::id(),
        visible_pids,
        host_pid: host_pid.map(|pid| {
            let start_time_ticks = start_time_ticks(pid);
            HostPidView {
                pid,
                present: start_time_ticks.is_some()
                    || std::path::Path::new(&format!("/proc/{pid}")).exists(),
                start_time_ticks,
            }
        }),
    })
}

/// `MemTotal` of a meminfo text, in KiB.
pub fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Memory and CPUs as seen from here.
pub fn resources() -> Result<Resources, String> {
    let meminfo = read_trimmed("/proc/meminfo")?;
    let mem_total_kib = parse_mem_total_kib(&meminfo)
        .ok_or_else(|| "/proc/meminfo has no MemTotal line".to_string())?;
    // SAFETY: sysconf has no memory effects.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    // SAFETY: cpu_set_t is plain old data; all-zero is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let affinity_cpus = if rc == 0 {
        // SAFETY: `set` was filled by sched_getaffinity.
        unsafe { libc::CPU_COUNT(&set) as u32 }
    } else {
        0
    };
    Ok(Resources {
        mem_total_kib,
        online_cpus: online.max(0) as u32,
        affinity_cpus,
    })
}

/// The value of a `Key:\tvalue` line of a `/proc/<pid>/status` text.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == key).then(|| value.trim())
    })
}

/// Parses the capability, no_new_privs and seccomp lines of a `/proc/<pid>/status` text.
pub fn parse_credentials(status: &str) -> Result<Credentials, String> {
    let field = |key: &str| {
        status_field(status, key).ok_or_else(|| format!("/proc/self/status has no {key} line"))
    };
    let cap_set = |key: &str| -> Result<CapSet, String> {
        let mask = field(key)?;
        let bits = u64::from_str_radix(mask, 16)
            .map_err(|_| format!("/proc/self/status: {key} is not hex: {mask:?}"))?;
        Ok(CapSet {
            mask: mask.to_string(),
            names: caps::decode(bits),
        })
    };
    let number = |key: &str| -> Result<u32, String> {
        let value = field(key)?;
        value
            .parse()
            .map_err(|_| format!("/proc/self/status: {key} is not a number: {value:?}"))
    };
    Ok(Credentials {
        cap_eff: cap_set("CapEff")?,
        cap_bnd: cap_set("CapBnd")?,
        no_new_privs: number("NoNewPrivs")? != 0,
        seccomp_mode: number("Seccomp")?,
        seccomp_filters: number("Seccomp_filters").ok(),
    })
}

/// Privilege state of the probe itself.
pub fn credentials() -> Result<Credentials, String> {
    parse_credentials(&read_trimmed("/proc/self/status")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_of_a_runc_container() {
        let status = "Name:\tsh\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n\
                      CapEff:\t0000000020000520\nCapBnd:\t00000000a80425fb\n";
        let creds = parse_credentials(status).unwrap();
        assert_eq!(
            creds.cap_eff.names,
            [
                "CAP_KILL",
                "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE",
                "CAP_AUDIT_WRITE"
            ]
        );
        assert!(creds.cap_bnd.names.contains(&"CAP_MKNOD".to_string()));
        assert!(creds.no_new_privs);
        assert_eq!((creds.seccomp_mode, creds.seccomp_filters), (2, Some(1)));
        let err = parse_credentials("Name:\tsh\n").unwrap_err();
        assert!(err.contains("CapEff"), "{err}");
    }

    #[test]
    fn sees_itself_and_its_parent() {
        let view = pids(Some(std::os::unix::process::parent_id())).unwrap();
        assert_eq!(view.self_pid, std::process::id());
        assert!(view.visible_pids >= 2);
        let parent = view.host_pid.unwrap();
        assert!(parent.present);
        assert_eq!(
            parent.start_time_ticks,
            start_time_ticks(std::os::unix::process::parent_id())
        );
        assert!(parent.start_time_ticks.is_some());
        assert!(!pids(Some(u32::MAX - 1)).unwrap().host_pid.unwrap().present);
    }

    #[test]
    fn reads_memory_and_cpus() {
        assert_eq!(
            parse_mem_total_kib("MemTotal:       24553376 kB\n"),
            Some(24553376)
        );
        let resources = resources().unwrap();
        assert!(resources.mem_total_kib > 0);
        assert!(resources.online_cpus >= resources.affinity_cpus);
        assert!(resources.affinity_cpus >= 1);
    }
}
