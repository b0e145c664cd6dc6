//! The container process's identity and limits: user, groups, capabilities, no_new_privs,
//! rlimits, and finding the program to execute. Shared by the container's init and by exec.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, Capability, PosixRlimit, PosixRlimitType, Process};

use crate::syscall::{CapSets, Syscall};

/// Errors while giving the process its identity and limits.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A credential syscall failed.
    #[error("{step}: {source}")]
    Credentials {
        /// What was being done.
        step: String,
        /// The OS error.
        source: io::Error,
    },
    /// An rlimit could not be applied.
    #[error(
        "cannot set {name} to soft {soft} / hard {hard}: {source}{hint}",
        hint = if source.raw_os_error() == Some(libc::EPERM) {
            format!("; the host's hard limit is {host_hard} and raising it needs CAP_SYS_RESOURCE, \
                     which twinbox does not have here: lower the limit in the config (e.g. \
                     --ulimit {}={host_hard}:{host_hard})", ulimit_name(name))
        } else { String::new() }
    )]
    Rlimit {
        /// RLIMIT_NOFILE, ...
        name: String,
        /// Requested soft limit.
        soft: u64,
        /// Requested hard limit.
        hard: u64,
        /// The hard limit the host process has.
        host_hard: String,
        /// The OS error.
        source: io::Error,
    },
    /// The program to run was not found (clients match "executable file not found").
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    /// The program exists but cannot be executed.
    #[error("exec: {0:?}: permission denied")]
    NotExecutable(String),
    /// The process has no args.
    #[error("process.args is empty: the config must name the program to run")]
    NoArgs,
    /// process.cwd is not usable.
    #[error("process.cwd {path:?}: {source}")]
    Cwd {
        /// The configured cwd.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn cred(step: impl Into<String>) -> impl FnOnce(io::Error) -> ProcessError {
    let step = step.into();
    move |source| ProcessError::Credentials { step, source }
}

/// Capability names in kernel numbering order (capability.h).
const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability name twinbox knows, with the CAP_ prefix (for `features`).
pub fn known_capabilities() -> Vec<String> {
    CAPABILITY_NAMES
        .iter()
        .map(|n| format!("CAP_{n}"))
        .collect()
}

/// The kernel number of a capability.
pub fn capability_number(cap: &Capability) -> u8 {
    let name = cap.to_string();
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| unreachable!("oci-spec capability {name} missing from the table"))
        as u8
}

/// A set of capabilities as a bit mask, leaving out those the running kernel does not know.
pub fn capability_mask(caps: Option<&Capabilities>) -> u64 {
    let last = crate::syscall::last_cap();
    caps.into_iter()
        .flatten()
        .map(capability_number)
        .filter(|n| *n <= last)
        .fold(0, |mask, n| mask | (1 << n))
}

/// Who the process runs as and with which privileges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// User id in the container.
    pub uid: u32,
    /// Group id in the container.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// File mode creation mask (default 0022).
    pub umask: u32,
    /// Capability bounding set.
    pub bounding: u64,
    /// Effective, permitted and inheritable sets.
    pub sets: CapSets,
    /// Ambient set.
    pub ambient: u64,
    /// prctl(PR_SET_NO_NEW_PRIVS).
    pub no_new_privileges: bool,
}

impl Identity {
    /// The identity the spec's process asks for.
    pub fn from_process(process: &Process) -> Self {
        let user = process.user();
        let caps = process.capabilities().as_ref();
        Identity {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask().unwrap_or(0o022),
            bounding: capability_mask(caps.and_then(|c| c.bounding().as_ref())),
            sets: CapSets {
                effective: capability_mask(caps.and_then(|c| c.effective().as_ref())),
                permitted: capability_mask(caps.and_then(|c| c.permitted().as_ref())),
                inheritable: capability_mask(caps.and_then(|c| c.inheritable().as_ref())),
            },
            ambient: capability_mask(caps.and_then(|c| c.ambient().as_ref())),
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
        }
    }

    /// Becomes this identity: bounding set, groups, gid, uid (keeping capabilities across the
    /// uid change), then exactly the configured capability sets.
    pub fn apply(&self, sys: &dyn Syscall) -> Result<(), ProcessError> {
        sys.drop_bounding(self.bounding)
            .map_err(cred("dropping capabilities from the bounding set"))?;
        sys.set_keep_caps(true)
            .map_err(cred("prctl(PR_SET_KEEPCAPS)"))?;
        sys.setgroups(&self.additional_gids).map_err(cred(format!(
            "setting supplementary groups {:?}",
            self.additional_gids
        )))?;
        sys.setgid(self.gid).map_err(cred(format!(
            "setting gid {} (is it mapped in the user namespace?)",
            self.gid
        )))?;
        sys.setuid(self.uid).map_err(cred(format!(
            "setting uid {} (is it mapped in the user namespace?)",
            self.uid
        )))?;
        sys.set_keep_caps(false)
            .map_err(cred("prctl(PR_SET_KEEPCAPS)"))?;
        sys.capset(self.sets)
            .map_err(cred("setting capabilities"))?;
        if self.ambient != 0 {
            sys.set_ambient(self.ambient).map_err(cred(
                "raising ambient capabilities (they must also be permitted and inheritable)",
            ))?;
        }
        // SAFETY: umask(2) cannot fail.
        unsafe { libc::umask(self.umask as libc::mode_t) };
        Ok(())
    }
}

fn rlimit_resource(kind: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match kind {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// RLIMIT_NOFILE -> nofile (docker/podman's --ulimit names).
fn ulimit_name(name: &str) -> String {
    name.trim_start_matches("RLIMIT_").to_lowercase()
}

fn rlimit_name(kind: PosixRlimitType) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

/// Applies rlimits to process `pid` (0 for the caller) with prlimit(2). Limits above the
/// host's hard limit fail with an error naming the limit, when the caller lacks
/// CAP_SYS_RESOURCE.
pub fn apply_rlimits(pid: i32, rlimits: &[PosixRlimit]) -> Result<(), ProcessError> {
    for rlimit in rlimits {
        let resource = rlimit_resource(rlimit.typ());
        let new = libc::rlimit {
            rlim_cur: rlimit.soft(),
            rlim_max: rlimit.hard(),
        };
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: new and old are valid rlimit structs for the duration of the call.
        let ret = unsafe { libc::prlimit(pid, resource, &new, &mut old) };
        if ret != 0 {
            let source = io::Error::last_os_error();
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: current is a valid rlimit struct; a null new limit only reads.
            unsafe { libc::prlimit(pid, resource, std::ptr::null(), &mut current) };
            let host_hard = if current.rlim_max == libc::RLIM_INFINITY {
                "unlimited".to_string()
            } else {
                current.rlim_max.to_string()
            };
            return Err(ProcessError::Rlimit {
                name: rlimit_name(rlimit.typ()),
                soft: rlimit.soft(),
                hard: rlimit.hard(),
                host_hard,
                source,
            });
        }
    }
    Ok(())
}

/// Finds `program` as execvp would with the process's PATH (from `env`), checking that the
/// caller may execute it. Relative names with a slash resolve against the current directory.
pub fn find_executable(program: &str, env: &[String]) -> Result<PathBuf, ProcessError> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
            .collect()
    };
    let mut denied = false;
    for candidate in candidates {
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if meta.is_dir() {
            denied = true;
            continue;
        }
        let c = CString::new(candidate.as_os_str().as_bytes())
            .map_err(|_| ProcessError::NotFound(program.to_string()))?;
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(candidate);
        }
        denied = true;
    }
    if denied {
        Err(ProcessError::NotExecutable(program.to_string()))
    } else {
        Err(ProcessError::NotFound(program.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::fake::{Call, RecordingSyscall};
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, ProcessBuilder, UserBuilder};

    #[test]
    fn identity_applies_in_the_order_the_kernel_needs() {
        let caps: Capabilities = [
            Capability::Chown,
            Capability::NetBindService,
            Capability::Kill,
        ]
        .into_iter()
        .collect();
        let ambient: Capabilities = [Capability::NetBindService].into_iter().collect();
        let process = ProcessBuilder::default()
            .user(
                UserBuilder::default()
                    .uid(1000u32)
                    .gid(1000u32)
                    .additional_gids(vec![10u32])
                    .build()
                    .unwrap(),
            )
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(caps.clone())
                    .effective(caps.clone())
                    .permitted(caps.clone())
                    .inheritable(caps.clone())
                    .ambient(ambient)
                    .build()
                    .unwrap(),
            )
            .no_new_privileges(true)
            .cwd("/")
            .build()
            .unwrap();
        let identity = Identity::from_process(&process);
        let mask = (1 << 0) | (1 << 5) | (1 << 10);
        assert_eq!(identity.bounding, mask);
        assert!(identity.no_new_privileges);
        let sys = RecordingSyscall::default();
        identity.apply(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Bounding(mask),
                Call::KeepCaps(true),
                Call::Setgroups(vec![10]),
                Call::Setgid(1000),
                Call::Setuid(1000),
                Call::KeepCaps(false),
                Call::Capset(CapSets {
                    effective: mask,
                    permitted: mask,
                    inheritable: mask
                }),
                Call::Ambient(1 << 10),
            ]
        );
    }

    #[test]
    fn every_capability_has_its_kernel_number() {
        assert_eq!(capability_number(&Capability::Chown), 0);
        assert_eq!(capability_number(&Capability::SysAdmin), 21);
        assert_eq!(capability_number(&Capability::AuditRead), 37);
        assert_eq!(capability_number(&Capability::CheckpointRestore), 40);
        assert_eq!(known_capabilities().len(), 41);
    }

    #[test]
    fn executables_are_found_on_path_or_reported_like_runc() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tool");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let env = vec![format!("PATH=/nonexistent:{}", dir.path().display())];
        assert!(matches!(
            find_executable("tool", &env),
            Err(ProcessError::NotExecutable(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_executable("tool", &env).unwrap(), bin);
        let err = find_executable("no-such-tool", &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"no-such-tool\": executable file not found in $PATH"
        );
    }

    #[test]
    fn rlimits_above_the_host_hard_limit_name_the_limit() {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reading this process's limit into a valid struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
        // Lowering is always allowed: apply to a child so the test process keeps its limits.
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let lower: PosixRlimit =
            serde_json::from_str(r#"{"type":"RLIMIT_NOFILE","soft":512,"hard":512}"#).unwrap();
        apply_rlimits(pid, &[lower]).unwrap();
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        assert!(
            limits
                .lines()
                .any(|l| l.starts_with("Max open files") && l.contains(" 512 "))
        );
        // Raising back above the (now lowered) hard limit needs CAP_SYS_RESOURCE, which this
        // machine's bounding set lacks; on hosts that have it the raise succeeds.
        let raise: PosixRlimit =
            serde_json::from_str(r#"{"type":"RLIMIT_NOFILE","soft":1024,"hard":1024}"#).unwrap();
        match apply_rlimits(pid, &[raise]) {
            Err(err) => {
                let text = err.to_string();
                assert!(
                    text.contains("RLIMIT_NOFILE") && text.contains("--ulimit nofile=512:512"),
                    "{text}"
                );
            }
            Ok(()) => assert!(has_cap_sys_resource()),
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn has_cap_sys_resource() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap();
        u64::from_str_radix(eff.trim(), 16).unwrap() & (1 << 24) != 0
    }
}
