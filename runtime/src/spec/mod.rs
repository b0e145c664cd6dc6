//! Image config -> OCI runtime spec (`config.json`), with the defaults serious runtimes
//! apply. The same spec feeds both backends; `twinbox-sandbox` enforces it.
//!
//! Follows the image spec's conversion rules: `Entrypoint` + `Cmd` become `process.args`
//! (a command given on the command line replaces `Cmd`), `Env` is merged with overrides,
//! `WorkingDir` becomes `process.cwd`, `User` is resolved through the image's own
//! /etc/passwd and /etc/group, and `Labels` (plus `StopSignal`) become annotations.

pub mod bundle;
pub mod defaults;
pub mod profile;
pub mod seccomp;
pub mod user;

use std::collections::HashMap;
use std::path::Path;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

pub use bundle::{BundleError, write_bundle};
pub use user::{ResolvedUser, resolve_user};

/// Errors building a runtime spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the image nor the command line gives a command.
    #[error("the image has no Entrypoint or Cmd; give the command to run after the image name")]
    NoCommand,
    /// The user cannot be resolved in the image.
    #[error("{0}")]
    User(String),
    /// A capability name that does not exist.
    #[error("unknown capability {0:?} (expected e.g. NET_ADMIN or CAP_NET_ADMIN)")]
    Capability(String),
    /// A bad `--env` or `--ulimit` value.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which option.
        what: &'static str,
        /// The value.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// A seccomp profile file that cannot be used.
    #[error("seccomp profile {path}: {reason}")]
    Profile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A spec field that the builder rejected.
    #[error("building the runtime spec: {0}")]
    Build(String),
}

impl SpecError {
    fn build(e: impl std::fmt::Display) -> SpecError {
        SpecError::Build(e.to_string())
    }
}

/// Command-line overrides of the image config (all optional).
#[derive(Debug, Clone, Default)]
pub struct SpecOptions {
    /// Replaces the image's `Cmd` (the entrypoint stays), as `docker run IMAGE CMD...`.
    pub command: Vec<String>,
    /// Replaces the image's `Entrypoint`; `Some(vec![])` clears it.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries added to (or replacing in) the image's environment.
    pub env: Vec<String>,
    /// `user[:group]`, names resolved in the image.
    pub user: Option<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// Hostname (default `twinbox`).
    pub hostname: Option<String>,
    /// Allocate a terminal for the process.
    pub terminal: bool,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Capabilities to add to Docker's default set.
    pub cap_add: Vec<String>,
    /// Capabilities to drop from it (`ALL` drops all).
    pub cap_drop: Vec<String>,
    /// No seccomp filter (`--security-opt seccomp=unconfined`).
    pub seccomp_unconfined: bool,
    /// A seccomp profile file (OCI or Docker JSON) instead of the default profile
    /// (`--security-opt seccomp=PROFILE.json`).
    pub seccomp_profile: Option<std::path::PathBuf>,
    /// `no_new_privileges` of the process (default: true, unlike Docker).
    pub no_new_privileges: Option<bool>,
    /// Resource limits, `TYPE=SOFT[:HARD]` (e.g. `nofile=1024:2048`), replacing defaults.
    pub ulimits: Vec<String>,
    /// Extra annotations.
    pub annotations: HashMap<String, String>,
}

/// The search path used when the image sets none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the runtime spec for running an image whose root filesystem is at `rootfs`
/// (read for user resolution only). `root.path` in the spec is `rootfs`, relative to the
/// bundle, as `twinbox bundle` lays it out; callers with another layout set it after.
pub fn from_image(
    image: &ImageConfiguration,
    rootfs: &Path,
    options: &SpecOptions,
) -> Result<Spec, SpecError> {
    let config = image.config().clone().unwrap_or_default();

    let entrypoint = options
        .entrypoint
        .clone()
        .unwrap_or_else(|| config.entrypoint().clone().unwrap_or_default());
    let cmd = if !options.command.is_empty() {
        options.command.clone()
    } else if options.entrypoint.is_some() {
        // docker: overriding the entrypoint drops the image's Cmd.
        Vec::new()
    } else {
        config.cmd().clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }

    let user_spec = options
        .user
        .clone()
        .or_else(|| config.user().clone())
        .unwrap_or_default();
    let user = resolve_user(rootfs, &user_spec)?;

    let mut env = config.env().clone().unwrap_or_default();
    for entry in &options.env {
        if !entry.contains('=') || entry.starts_with('=') {
            return Err(SpecError::Invalid {
                what: "environment variable",
                value: entry.clone(),
                reason: "expected KEY=VALUE",
            });
        }
        set_env(&mut env, entry);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if options.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            user.home
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "/".into())
        ));
    }
    let hostname = options.hostname.clone().unwrap_or_else(|| "twinbox".into());
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={hostname}"));
    }

    let cwd = options
        .workdir
        .clone()
        .or_else(|| config.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let cwd = if cwd.starts_with('/') {
        cwd
    } else {
        format!("/{cwd}")
    };

    let caps = capabilities(&options.cap_add, &options.cap_drop)?;
    // A non-root process starts without effective/permitted capabilities (as Docker does);
    // the bounding set still limits what setuid binaries can gain.
    let effective = if user.uid == 0 {
        caps.clone()
    } else {
        Vec::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(
            caps.iter()
                .cloned()
                .collect::<oci_spec::runtime::Capabilities>(),
        )
        .effective(
            effective
                .iter()
                .cloned()
                .collect::<oci_spec::runtime::Capabilities>(),
        )
        .permitted(
            effective
                .iter()
                .cloned()
                .collect::<oci_spec::runtime::Capabilities>(),
        )
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(SpecError::build)?;

    let process = ProcessBuilder::default()
        .terminal(options.terminal)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()
                .map_err(SpecError::build)?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(rlimits(&options.ulimits)?)
        .no_new_privileges(options.no_new_privileges.unwrap_or(true))
        .build()
        .map_err(SpecError::build)?;

    let mut linux = LinuxBuilder::default()
        .namespaces(defaults::namespaces()?)
        .devices(defaults::devices()?)
        .resources(defaults::device_cgroup()?)
        .masked_paths(defaults::masked_paths())
        .readonly_paths(defaults::readonly_paths());
    if !options.seccomp_unconfined {
        linux = linux.seccomp(match &options.seccomp_profile {
            Some(path) => profile::load(path, &caps)?,
            None => seccomp::default_profile(&caps)?,
        });
    }

    let mut annotations: HashMap<String, String> = config.labels().clone().unwrap_or_default();
    if let Some(signal) = config.stop_signal() {
        annotations.insert("org.opencontainers.image.stopSignal".into(), signal.clone());
    }
    annotations.extend(options.annotations.clone());

    SpecBuilder::default()
        .version(oci_spec::runtime::VERSION)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(options.read_only)
                .build()
                .map_err(SpecError::build)?,
        )
        .hostname(hostname)
        .mounts(defaults::mounts()?)
        .process(process)
        .linux(linux.build().map_err(SpecError::build)?)
        .annotations(annotations)
        .build()
        .map_err(SpecError::build)
}

/// Sets `KEY=VALUE` in an environment list, replacing an existing `KEY`.
fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split_once('=').map(|(k, _)| k).unwrap_or(entry);
    env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
    env.push(entry.to_string());
}

/// Docker's default capability set with `add` and `drop` applied.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<Capability>, SpecError> {
    // oci-spec's deserializer accepts both `SYS_ADMIN` and `CAP_SYS_ADMIN`, any case.
    let parse = |name: &String| {
        serde_json::from_value::<Capability>(serde_json::Value::String(name.clone()))
            .map_err(|_| SpecError::Capability(name.clone()))
    };
    let mut caps: Vec<Capability> = if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        Vec::new()
    } else {
        let dropped: Vec<Capability> = drop.iter().map(parse).collect::<Result<_, _>>()?;
        defaults::CAPABILITIES
            .iter()
            .filter(|c| !dropped.contains(c))
            .cloned()
            .collect()
    };
    for name in add {
        if name.eq_ignore_ascii_case("ALL") {
            return Err(SpecError::Capability(
                "ALL (add capabilities by name)".into(),
            ));
        }
        let cap = parse(name)?;
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    Ok(caps)
}

/// Default rlimits (open files: soft 1024, hard as high as this host allows up to 1M),
/// replaced per type by `--ulimit TYPE=SOFT[:HARD]`.
pub fn rlimits(ulimits: &[String]) -> Result<Vec<oci_spec::runtime::PosixRlimit>, SpecError> {
    let host_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024);
    let mut limits: Vec<(PosixRlimitType, u64, u64)> = vec![(
        PosixRlimitType::RlimitNofile,
        1024.min(host_hard),
        host_hard.min(1 << 20),
    )];
    for spec in ulimits {
        let invalid = |reason| SpecError::Invalid {
            what: "ulimit",
            value: spec.clone(),
            reason,
        };
        let (name, values) = spec
            .split_once('=')
            .ok_or_else(|| invalid("expected TYPE=SOFT[:HARD], e.g. nofile=1024:2048"))?;
        let typ = rlimit_type(name)
            .ok_or_else(|| invalid("unknown type (nofile, nproc, core, memlock, stack, ...)"))?;
        let number = |v: &str| -> Result<u64, SpecError> {
            if v == "-1" || v == "unlimited" {
                Ok(u64::MAX)
            } else {
                v.parse()
                    .map_err(|_| invalid("limits are numbers, -1 or unlimited"))
            }
        };
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (number(s)?, number(h)?),
            None => (number(values)?, number(values)?),
        };
        if soft > hard {
            return Err(invalid("the soft limit is above the hard limit"));
        }
        limits.retain(|(t, _, _)| *t != typ);
        limits.push((typ, soft, hard));
    }
    limits
        .into_iter()
        .map(|(typ, soft, hard)| {
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()
                .map_err(SpecError::build)
        })
        .collect()
}

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    Some(
        match name.to_ascii_lowercase().trim_start_matches("rlimit_") {
            "cpu" => PosixRlimitType::RlimitCpu,
            "fsize" => PosixRlimitType::RlimitFsize,
            "data" => PosixRlimitType::RlimitData,
            "stack" => PosixRlimitType::RlimitStack,
            "core" => PosixRlimitType::RlimitCore,
            "rss" => PosixRlimitType::RlimitRss,
            "nproc" => PosixRlimitType::RlimitNproc,
            "nofile" => PosixRlimitType::RlimitNofile,
            "memlock" => PosixRlimitType::RlimitMemlock,
            "as" => PosixRlimitType::RlimitAs,
            "locks" => PosixRlimitType::RlimitLocks,
            "sigpending" => PosixRlimitType::RlimitSigpending,
            "msgqueue" => PosixRlimitType::RlimitMsgqueue,
            "nice" => PosixRlimitType::RlimitNice,
            "rtprio" => PosixRlimitType::RlimitRtprio,
            "rttime" => PosixRlimitType::RlimitRttime,
            _ => return None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompAction;
    use serde_json::json;

    fn image(config: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap()
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nweb:x:33:\n").unwrap();
        dir
    }

    fn allowed(spec: &Spec, name: &str) -> bool {
        let seccomp = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        seccomp.syscalls().as_ref().unwrap().iter().any(|rule| {
            rule.action() == LinuxSeccompAction::ScmpActAllow
                && rule.args().is_none()
                && rule.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn entrypoint_cmd_and_overrides_follow_docker_rules() {
        let root = rootfs();
        let config = image(
            json!({"Entrypoint": ["/entry"], "Cmd": ["default"], "Env": ["A=1", "PATH=/bin"], "WorkingDir": "srv", "User": "web"}),
        );
        let spec = from_image(&config, root.path(), &SpecOptions::default()).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["/entry", "default"]);
        assert_eq!(process.cwd(), Path::new("/srv"));
        assert_eq!((process.user().uid(), process.user().gid()), (33, 33));
        let env = process.env().as_ref().unwrap();
        assert!(
            env.contains(&"PATH=/bin".into()) && env.contains(&"HOME=/var/www".into()),
            "{env:?}"
        );
        assert!(process.no_new_privileges().unwrap());
        // A non-root user starts without effective capabilities; the bounding set stays.
        let caps = process.capabilities().as_ref().unwrap();
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert_eq!(
            caps.bounding().as_ref().unwrap().len(),
            defaults::CAPABILITIES.len()
        );

        let options = SpecOptions {
            command: vec!["override".into()],
            env: vec!["A=2".into()],
            user: Some("0:0".into()),
            ..Default::default()
        };
        let spec = from_image(&config, root.path(), &options).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["/entry", "override"]);
        assert!(process.env().as_ref().unwrap().contains(&"A=2".into()));
        assert_eq!(
            process
                .capabilities()
                .as_ref()
                .unwrap()
                .effective()
                .as_ref()
                .unwrap()
                .len(),
            14
        );

        let cleared = SpecOptions {
            entrypoint: Some(vec![]),
            ..Default::default()
        };
        assert!(matches!(
            from_image(&config, root.path(), &cleared),
            Err(SpecError::NoCommand)
        ));
        let bad_env = SpecOptions {
            env: vec!["NOVALUE".into()],
            ..Default::default()
        };
        assert!(from_image(&config, root.path(), &bad_env).is_err());
    }

    #[test]
    fn defaults_harden_the_container() {
        let root = rootfs();
        let config =
            image(json!({"Cmd": ["/bin/sh"], "Labels": {"a.b": "c"}, "StopSignal": "SIGINT"}));
        let spec = from_image(&config, root.path(), &SpecOptions::default()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".into())
        );
        assert!(
            linux
                .readonly_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/sys".into())
        );
        let destinations: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        for wanted in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(
                destinations.contains(&wanted.to_string()),
                "{wanted} missing: {destinations:?}"
            );
        }
        assert_eq!(
            linux.devices().as_ref().unwrap().len(),
            defaults::STANDARD_DEVICES.len()
        );
        assert!(allowed(&spec, "read") && allowed(&spec, "execve"));
        assert!(
            !allowed(&spec, "mount") && !allowed(&spec, "unshare") && !allowed(&spec, "ptrace")
        );
        let annotations = spec.annotations().as_ref().unwrap();
        assert_eq!(annotations["a.b"], "c");
        assert_eq!(annotations["org.opencontainers.image.stopSignal"], "SIGINT");

        let privileged = SpecOptions {
            cap_add: vec!["SYS_ADMIN".into(), "CAP_SYS_PTRACE".into()],
            ..Default::default()
        };
        let spec = from_image(&config, root.path(), &privileged).unwrap();
        assert!(allowed(&spec, "mount") && allowed(&spec, "ptrace"));
        let unconfined = SpecOptions {
            seccomp_unconfined: true,
            cap_drop: vec!["ALL".into()],
            ..Default::default()
        };
        let spec = from_image(&config, root.path(), &unconfined).unwrap();
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(caps.bounding().as_ref().unwrap().is_empty());
        assert!(capabilities(&["NOT_A_CAP".into()], &[]).is_err());
    }

    #[test]
    fn rlimits_stay_within_what_the_host_grants() {
        let (_, host_hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let limits = rlimits(&[]).unwrap();
        let nofile = limits
            .iter()
            .find(|l| l.typ() == PosixRlimitType::RlimitNofile)
            .unwrap();
        assert!(nofile.hard() <= host_hard && nofile.soft() <= nofile.hard());
        let limits = rlimits(&["nofile=100:200".into(), "nproc=50".into()]).unwrap();
        let nofile = limits
            .iter()
            .find(|l| l.typ() == PosixRlimitType::RlimitNofile)
            .unwrap();
        assert_eq!((nofile.soft(), nofile.hard()), (100, 200));
        assert!(
            limits
                .iter()
                .any(|l| l.typ() == PosixRlimitType::RlimitNproc && l.soft() == 50)
        );
        for bad in ["nofile", "bogus=1", "nofile=2:1", "nofile=x"] {
            assert!(rlimits(&[bad.into()]).is_err(), "{bad} accepted");
        }
    }
}
