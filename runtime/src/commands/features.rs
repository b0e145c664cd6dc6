//! What this runtime supports (`twinbox features`, OCI runtime spec features.md) and the
//! default config (`twinbox spec`).

use oci_spec::runtime::Spec;
use serde_json::{Value, json};
use twinbox_sandbox::seccomp;

/// The features document.
pub fn features() -> Value {
    let mount_options: Vec<&str> = vec![
        "async",
        "atime",
        "bind",
        "defaults",
        "dev",
        "diratime",
        "dirsync",
        "exec",
        "lazytime",
        "mand",
        "noatime",
        "nodev",
        "nodiratime",
        "noexec",
        "nolazytime",
        "nomand",
        "norelatime",
        "nostrictatime",
        "nosuid",
        "private",
        "rbind",
        "relatime",
        "remount",
        "ro",
        "rprivate",
        "rshared",
        "rslave",
        "runbindable",
        "rw",
        "shared",
        "slave",
        "strictatime",
        "suid",
        "sync",
        "unbindable",
    ];
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": oci_spec::runtime::VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": mount_options,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": twinbox_sandbox::process::known_capabilities(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": seccomp::ACTIONS,
                "operators": seccomp::OPERATORS,
                "archs": seccomp::ARCHITECTURES,
                "knownFlags": seccomp::FLAGS,
                "supportedFlags": seccomp::FLAGS,
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}},
        },
        "annotations": {
            crate::backend::ISOLATION_ANNOTATION: "container|vm (vm: not available in this build yet)",
            "io.twinbox.version": env!("CARGO_PKG_VERSION"),
        },
    })
}

/// The config `twinbox spec` writes: runc's defaults (pid, network, ipc, uts, mount and cgroup
/// namespaces, the default mounts, masked and read-only paths, three capabilities), with
/// `sh` as the process and no terminal.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = if rootless {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Spec::rootless(uid, gid)
    } else {
        Spec::default()
    };
    spec.set_version(oci_spec::runtime::VERSION.to_string());
    spec.set_hostname(Some("twinbox".to_string()));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_round_trips_and_has_the_usual_namespaces() {
        let spec = default_spec(false);
        let text = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&text).unwrap();
        let namespaces = back.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(namespaces.len(), 6);
        assert_eq!(
            back.root().as_ref().unwrap().path(),
            std::path::Path::new("rootfs")
        );
        assert_eq!(
            back.process().as_ref().unwrap().args().as_ref().unwrap()[0],
            "sh"
        );
    }

    #[test]
    fn features_lists_hooks_and_seccomp() {
        let f = features();
        assert_eq!(f["hooks"].as_array().unwrap().len(), 6);
        assert_eq!(f["linux"]["seccomp"]["enabled"], true);
        assert!(
            f["linux"]["capabilities"]
                .as_array()
                .unwrap()
                .contains(&json!("CAP_SYS_ADMIN"))
        );
    }
}
