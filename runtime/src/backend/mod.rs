//! The isolation backends behind one trait, and choosing one per container.
//!
//! A backend turns a bundle into a live *init* process blocked on the exec fifo (see the
//! process model in docs/DESIGN.md) and later signals, inspects, pauses and tears it down.
//! Everything around that (state, fifo, pid file, console socket, hooks) is backend-neutral
//! and lives in [`crate::lifecycle`] and [`crate::state`].

use std::os::fd::OwnedFd;
use std::path::Path;

use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};
use twinbox_sandbox::launch::SetupObserver;

use crate::state::ContainerRecord;

/// The bundle annotation that selects the backend.
pub const ISOLATION_ANNOTATION: &str = "io.twinbox.isolation";

/// The name the binary is invoked by to select the VM backend (a symlink to twinbox).
pub const VM_ARGV0: &str = "twinbox-vm";

/// Which isolation a container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Namespaces, cgroups, capabilities and seccomp on the host kernel.
    #[default]
    Container,
    /// A KVM microVM with its own kernel.
    Vm,
}

impl std::str::FromStr for BackendKind {
    type Err = BackendError;
    fn from_str(value: &str) -> Result<Self, BackendError> {
        match value {
            "container" => Ok(BackendKind::Container),
            "vm" => Ok(BackendKind::Vm),
            other => Err(BackendError::InvalidIsolation(other.to_string())),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Container => "container",
            BackendKind::Vm => "vm",
        })
    }
}

/// Errors of the backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The VM backend failed.
    #[error(transparent)]
    Vm(Box<crate::vm::VmError>),
    /// An unknown isolation value.
    #[error("unknown isolation {0:?}: use \"container\" or \"vm\"")]
    InvalidIsolation(String),
    /// Starting or joining the container failed.
    #[error(transparent)]
    Launch(#[from] twinbox_sandbox::launch::LaunchError),
    /// cgroup management failed.
    #[error(transparent)]
    Cgroup(#[from] twinbox_sandbox::cgroups::CgroupError),
    /// The operation does not apply.
    #[error("{0}")]
    Unsupported(String),
}

impl BackendError {
    /// Exit code for a failure (127/126 for a program that is missing/not executable).
    pub fn exit_code(&self) -> i32 {
        match self {
            BackendError::Launch(err) => err.exit_code(),
            BackendError::Vm(err) => err.exit_code(),
            _ => 1,
        }
    }
}

/// Chooses the backend: an explicit choice (`--isolation`), then the binary's name
/// (`twinbox-vm`), then the bundle annotation `io.twinbox.isolation`, else containers.
pub fn select(
    explicit: Option<BackendKind>,
    argv0: Option<&str>,
    spec: &Spec,
) -> Result<(BackendKind, String), BackendError> {
    if let Some(kind) = explicit {
        return Ok((kind, format!("--isolation {kind}")));
    }
    if argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|name| name == VM_ARGV0)
    {
        return Ok((BackendKind::Vm, format!("invoked as {VM_ARGV0}")));
    }
    if let Some(value) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ISOLATION_ANNOTATION))
    {
        let kind: BackendKind = value.parse()?;
        return Ok((kind, format!("annotation {ISOLATION_ANNOTATION}={value}")));
    }
    Ok((BackendKind::Container, "default".into()))
}

/// The backend implementation for `kind`; `reason` says how it was chosen, for the log.
pub fn for_kind(kind: BackendKind, reason: &str) -> Result<Box<dyn Backend>, BackendError> {
    tracing::debug!(backend = %kind, reason, "backend chosen");
    match kind {
        BackendKind::Container => Ok(Box::new(crate::container::ContainerBackend)),
        BackendKind::Vm => Ok(Box::new(crate::vm::VmBackend)),
    }
}

/// Options of `create` that are not in the spec.
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Keep the caller's session keyring.
    pub no_new_keyring: bool,
    /// Connected console socket (for process.terminal).
    pub console_socket: Option<OwnedFd>,
    /// Keep fds 3..3+n in the container.
    pub preserve_fds: u32,
    /// stdin, stdout, stderr for the container (default: the caller's).
    pub stdio: Option<[OwnedFd; 3]>,
    /// The caller starts the container right after creating it (`run`): a backend may let
    /// the workload run as soon as it is created, provided `start` still succeeds after.
    pub start_on_create: bool,
}

/// Everything a backend needs to create a container.
#[derive(Debug)]
pub struct CreateRequest<'a> {
    /// Container id.
    pub id: &'a str,
    /// The parsed config.
    pub spec: &'a Spec,
    /// Absolute rootfs path.
    pub rootfs: &'a Path,
    /// The container's cgroup path (resolved from linux.cgroupsPath).
    pub cgroup_path: Option<&'a Path>,
    /// O_PATH handle of the exec fifo the init must block on.
    pub exec_fifo: OwnedFd,
    /// The container's state directory (the backend may keep its own files there).
    pub state_dir: &'a Path,
    /// The rest.
    pub options: CreateOptions,
}

/// Options of exec that are not in the process.
#[derive(Debug, Default)]
pub struct ExecOptions {
    /// Connected console socket (for process.terminal).
    pub console_socket: Option<OwnedFd>,
    /// Keep fds 3..3+n.
    pub preserve_fds: u32,
    /// stdin, stdout, stderr for the process (default: the caller's).
    pub stdio: Option<[OwnedFd; 3]>,
}

/// One isolation mode.
pub trait Backend {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Creates the container and returns the init's host pid once it is blocked on the exec
    /// fifo. `observer` is told the pid as soon as the process exists and runs the runtime
    /// hooks when the backend reaches that point. On error nothing of the container remains
    /// but the state directory (the caller removes it).
    fn create(
        &self,
        request: CreateRequest<'_>,
        observer: &mut dyn SetupObserver,
    ) -> Result<i32, BackendError>;

    /// Sends `signal` to the init, or with `all` to every process of the container.
    fn signal(&self, record: &ContainerRecord, signal: i32, all: bool) -> Result<(), BackendError>;

    /// Kills whatever is left of the container and releases its resources (cgroup). Safe to
    /// call on a half-created container and more than once.
    fn destroy(&self, record: &ContainerRecord) -> Result<(), BackendError>;

    /// Starts `process` inside the running container; returns its host pid.
    fn exec(
        &self,
        record: &ContainerRecord,
        spec: &Spec,
        process: &Process,
        options: ExecOptions,
    ) -> Result<i32, BackendError>;

    /// Host pids of the container's processes.
    fn processes(&self, record: &ContainerRecord) -> Result<Vec<i32>, BackendError>;

    /// Freezes the container.
    fn pause(&self, record: &ContainerRecord) -> Result<(), BackendError>;

    /// Thaws the container.
    fn resume(&self, record: &ContainerRecord) -> Result<(), BackendError>;

    /// Whether the container is frozen.
    fn is_paused(&self, record: &ContainerRecord) -> bool;

    /// Whether the kernel OOM-killed a process of the container.
    fn oom_killed(&self, record: &ContainerRecord) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotation: Option<&str>) -> Spec {
        let mut spec = Spec::default();
        let mut map = std::collections::HashMap::new();
        if let Some(value) = annotation {
            map.insert(ISOLATION_ANNOTATION.to_string(), value.to_string());
        }
        spec.set_annotations(Some(map));
        spec
    }

    #[test]
    fn selection_order_is_flag_argv0_annotation_default() {
        let vm = spec(Some("vm"));
        assert_eq!(
            select(None, Some("/usr/bin/twinbox"), &spec(None))
                .unwrap()
                .0,
            BackendKind::Container
        );
        assert_eq!(
            select(None, Some("/usr/bin/twinbox"), &vm).unwrap().0,
            BackendKind::Vm
        );
        assert_eq!(
            select(None, Some("/usr/local/bin/twinbox-vm"), &spec(None))
                .unwrap()
                .0,
            BackendKind::Vm
        );
        assert_eq!(
            select(Some(BackendKind::Container), Some("twinbox-vm"), &vm)
                .unwrap()
                .0,
            BackendKind::Container
        );
        let err = select(None, None, &spec(Some("kata"))).unwrap_err();
        assert!(err.to_string().contains("\"kata\""));
    }

    #[test]
    fn each_kind_gets_its_backend() {
        let (kind, reason) = select(None, Some("twinbox-vm"), &spec(None)).unwrap();
        assert_eq!(for_kind(kind, &reason).unwrap().kind(), BackendKind::Vm);
        let (kind, reason) = select(None, Some("twinbox"), &spec(None)).unwrap();
        assert_eq!(
            for_kind(kind, &reason).unwrap().kind(),
            BackendKind::Container
        );
    }
}
