//! Which namespaces a container creates and which it joins, from `linux.namespaces`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::{Linux, LinuxNamespaceType};

use crate::syscall::Syscall;

/// Errors in the namespace configuration or while entering namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The configuration is inconsistent or unsupported.
    #[error("linux.namespaces: {0}")]
    Invalid(String),
    /// A namespace file could not be opened.
    #[error("opening {kind} namespace {path}: {source}")]
    Open {
        /// Namespace type.
        kind: &'static str,
        /// The path from the config.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// setns/unshare failed.
    #[error("{action} {kind} namespace: {source}")]
    Enter {
        /// "joining" or "creating".
        action: &'static str,
        /// Namespace type.
        kind: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The clone flag of a namespace type.
pub fn clone_flag(kind: LinuxNamespaceType) -> CloneFlags {
    match kind {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The /proc/PID/ns file name of a namespace clone flag.
pub fn proc_name(flag: CloneFlags) -> &'static str {
    match flag {
        f if f == CloneFlags::CLONE_NEWNS => "mnt",
        f if f == CloneFlags::CLONE_NEWCGROUP => "cgroup",
        f if f == CloneFlags::CLONE_NEWUTS => "uts",
        f if f == CloneFlags::CLONE_NEWIPC => "ipc",
        f if f == CloneFlags::CLONE_NEWUSER => "user",
        f if f == CloneFlags::CLONE_NEWPID => "pid",
        f if f == CloneFlags::CLONE_NEWNET => "net",
        _ => "time",
    }
}

/// Namespaces that exec joins, in the order it joins them (user first: it grants the rights
/// to join the others).
pub const JOIN_ORDER: [CloneFlags; 6] = [
    CloneFlags::CLONE_NEWUSER,
    CloneFlags::CLONE_NEWIPC,
    CloneFlags::CLONE_NEWUTS,
    CloneFlags::CLONE_NEWNET,
    CloneFlags::CLONE_NEWCGROUP,
    CloneFlags::CLONE_NEWNS,
];

/// A namespace to join, opened by the runtime before the container process exists.
#[derive(Debug)]
pub struct JoinNamespace {
    /// Which namespace.
    pub flag: CloneFlags,
    /// The open namespace file.
    pub fd: OwnedFd,
}

/// What the container's namespaces are.
#[derive(Debug)]
pub struct NamespacePlan {
    /// New namespaces created by clone(2) (the cgroup namespace is created later, once the
    /// process is in its cgroup).
    pub clone_flags: CloneFlags,
    /// A new cgroup namespace is wanted.
    pub new_cgroup: bool,
    /// Namespaces joined by path (other than pid), in config order.
    pub join: Vec<JoinNamespace>,
    /// The pid namespace to join by path (entered by the runtime before clone).
    pub join_pid: Option<JoinNamespace>,
}

impl NamespacePlan {
    /// Builds the plan from `linux.namespaces`, opening the namespaces to join.
    pub fn from_spec(linux: &Linux) -> Result<Self, NamespaceError> {
        let mut plan = NamespacePlan {
            clone_flags: CloneFlags::empty(),
            new_cgroup: false,
            join: Vec::new(),
            join_pid: None,
        };
        let mut seen = HashMap::new();
        for ns in linux.namespaces().iter().flatten() {
            let flag = clone_flag(ns.typ());
            let kind = proc_name(flag);
            if seen.insert(kind, ()).is_some() {
                return Err(NamespaceError::Invalid(format!(
                    "the {kind} namespace is listed twice"
                )));
            }
            if ns.typ() == LinuxNamespaceType::Time {
                return Err(NamespaceError::Invalid(
                    "time namespaces are not supported by twinbox yet; remove it".into(),
                ));
            }
            match ns.path() {
                Some(path) if !path.as_os_str().is_empty() => {
                    if ns.typ() == LinuxNamespaceType::User {
                        return Err(NamespaceError::Invalid(
                            "joining an existing user namespace by path is not supported by \
                             twinbox yet; let the container create its own (no path)"
                                .into(),
                        ));
                    }
                    let fd = crate::open_fd(path).map_err(|source| NamespaceError::Open {
                        kind,
                        path: path.clone(),
                        source,
                    })?;
                    let join = JoinNamespace { flag, fd };
                    if ns.typ() == LinuxNamespaceType::Pid {
                        plan.join_pid = Some(join);
                    } else {
                        plan.join.push(join);
                    }
                }
                _ if ns.typ() == LinuxNamespaceType::Cgroup => plan.new_cgroup = true,
                _ => plan.clone_flags |= flag,
            }
        }
        if plan.clone_flags.contains(CloneFlags::CLONE_NEWUSER) && !plan.join.is_empty() {
            return Err(NamespaceError::Invalid(
                "a new user namespace cannot be combined with joining other namespaces by path \
                 (they belong to the host's user namespace); drop the paths or the user namespace"
                    .into(),
            ));
        }
        if !plan.clone_flags.contains(CloneFlags::CLONE_NEWNS)
            && !plan.join.iter().any(|j| j.flag == CloneFlags::CLONE_NEWNS)
        {
            return Err(NamespaceError::Invalid(
                "the container needs a mount namespace: add {\"type\": \"mount\"}".into(),
            ));
        }
        Ok(plan)
    }

    /// Whether the container gets a new namespace of this kind.
    pub fn creates(&self, flag: CloneFlags) -> bool {
        self.clone_flags.contains(flag) || (flag == CloneFlags::CLONE_NEWCGROUP && self.new_cgroup)
    }

    /// Whether the container has its own namespace of this kind (new or joined).
    pub fn isolates(&self, flag: CloneFlags) -> bool {
        self.creates(flag)
            || self.join.iter().any(|j| j.flag == flag)
            || (flag == CloneFlags::CLONE_NEWPID && self.join_pid.is_some())
    }

    /// In the container process: joins the namespaces given by path, then creates the cgroup
    /// namespace (after the runtime moved the process into its cgroup), and sets the loopback
    /// interface of a new network namespace up (as runc does), so that a container without
    /// other networking still reaches 127.0.0.1.
    pub fn enter(&self, sys: &dyn Syscall) -> Result<(), NamespaceError> {
        use std::os::fd::AsFd;
        for join in &self.join {
            sys.setns(join.fd.as_fd(), join.flag)
                .map_err(|source| NamespaceError::Enter {
                    action: "joining",
                    kind: proc_name(join.flag),
                    source,
                })?;
        }
        if self.new_cgroup {
            sys.unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|source| NamespaceError::Enter {
                    action: "creating",
                    kind: "cgroup",
                    source,
                })?;
        }
        if self.clone_flags.contains(CloneFlags::CLONE_NEWNET) {
            sys.loopback_up().map_err(|source| NamespaceError::Enter {
                action: "setting the loopback interface up in the new",
                kind: "network",
                source,
            })?;
        }
        Ok(())
    }
}

/// Checks that every sysctl is namespaced by a namespace the container owns (runc's rule):
/// anything else would change the host.
pub fn validate_sysctls(
    sysctls: &HashMap<String, String>,
    plan: &NamespacePlan,
) -> Result<(), NamespaceError> {
    const IPC: [&str; 6] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
    ];
    for key in sysctls.keys() {
        let (flag, what) = if IPC.contains(&key.as_str())
            || key == "kernel.shmmni"
            || key == "kernel.shm_rmid_forced"
            || key.starts_with("fs.mqueue.")
        {
            (CloneFlags::CLONE_NEWIPC, "ipc")
        } else if key.starts_with("net.") {
            (CloneFlags::CLONE_NEWNET, "network")
        } else if key == "kernel.hostname" || key == "kernel.domainname" {
            (CloneFlags::CLONE_NEWUTS, "uts")
        } else {
            return Err(NamespaceError::Invalid(format!(
                "sysctl {key} is not namespaced: setting it would change the host"
            )));
        };
        if !plan.isolates(flag) {
            return Err(NamespaceError::Invalid(format!(
                "sysctl {key} needs the container's own {what} namespace"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::fake::{Call, RecordingSyscall};

    fn linux(json: &str) -> Linux {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn new_namespaces_are_clone_flags_and_cgroup_comes_later() {
        let plan = NamespacePlan::from_spec(&linux(
            r#"{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"network"},{"type":"cgroup"},{"type":"user"}]}"#,
        ))
        .unwrap();
        assert_eq!(
            plan.clone_flags,
            CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWUSER
        );
        assert!(plan.new_cgroup);
        let sys = RecordingSyscall::default();
        plan.enter(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            vec![Call::Unshare(CloneFlags::CLONE_NEWCGROUP), Call::LoopbackUp]
        );
    }

    #[test]
    fn paths_are_joined_in_order() {
        let plan = NamespacePlan::from_spec(&linux(
            r#"{"namespaces":[{"type":"mount"},{"type":"network","path":"/proc/self/ns/net"},{"type":"ipc","path":"/proc/self/ns/ipc"},{"type":"pid","path":"/proc/self/ns/pid"}]}"#,
        ))
        .unwrap();
        assert!(plan.join_pid.is_some());
        assert!(plan.isolates(CloneFlags::CLONE_NEWPID));
        let sys = RecordingSyscall::default();
        plan.enter(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Setns(CloneFlags::CLONE_NEWNET),
                Call::Setns(CloneFlags::CLONE_NEWIPC)
            ]
        );
    }

    #[test]
    fn bad_configs_are_explained() {
        let err = |json| {
            NamespacePlan::from_spec(&linux(json))
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"namespaces":[{"type":"pid"}]}"#).contains("mount namespace"));
        assert!(err(r#"{"namespaces":[{"type":"mount"},{"type":"mount"}]}"#).contains("twice"));
        assert!(
            err(r#"{"namespaces":[{"type":"mount"},{"type":"network","path":"/nonexistent"}]}"#)
                .contains("/nonexistent")
        );
        assert!(
            err(r#"{"namespaces":[{"type":"mount"},{"type":"user","path":"/proc/self/ns/user"}]}"#)
                .contains("not supported")
        );
    }

    #[test]
    fn sysctls_must_belong_to_an_owned_namespace() {
        let plan = NamespacePlan::from_spec(&linux(
            r#"{"namespaces":[{"type":"mount"},{"type":"network"}]}"#,
        ))
        .unwrap();
        let ok = HashMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        validate_sysctls(&ok, &plan).unwrap();
        let ipc = HashMap::from([("kernel.shmmax".to_string(), "1".to_string())]);
        assert!(
            validate_sysctls(&ipc, &plan)
                .unwrap_err()
                .to_string()
                .contains("ipc namespace")
        );
        let host = HashMap::from([("vm.swappiness".to_string(), "1".to_string())]);
        assert!(
            validate_sysctls(&host, &plan)
                .unwrap_err()
                .to_string()
                .contains("not namespaced")
        );
    }
}
