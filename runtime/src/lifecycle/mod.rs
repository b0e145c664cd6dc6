//! The OCI lifecycle, backend-neutral: create (state, exec fifo, console socket, pid file,
//! hooks), start, kill, delete, exec, pause/resume, state and wait. The runc-compatible CLI
//! and the docker-style commands both drive containers through [`ContainerBuilder`] and
//! [`Container`].

mod signals;
pub mod tty;

pub use signals::{forward_signals_to, hold_signals, parse_signal, wait_for_exit};

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hooks, Process, Spec};
use twinbox_sandbox::cgroups::resolve_cgroups_path;
use twinbox_sandbox::hooks::{self, HookError};
use twinbox_sandbox::launch::SetupObserver;

use crate::backend::{
    self, Backend, BackendError, BackendKind, CreateOptions, CreateRequest, ExecOptions,
};
use crate::state::{
    ContainerRecord, ExecFifo, ProcessIdentity, RunRoot, StateError, Status, rfc3339_now,
    write_pid_file,
};

/// Errors of lifecycle operations. The wording is what engines look for: "does not exist",
/// "container not running".
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// State or run root problem (includes "does not exist").
    #[error(transparent)]
    State(#[from] StateError),
    /// Backend failure.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The bundle cannot be used.
    #[error("bundle {bundle}: {reason}")]
    Bundle {
        /// The bundle directory.
        bundle: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The operation needs a running container.
    #[error("container not running: {id} is {status}")]
    NotRunning {
        /// Container id.
        id: String,
        /// Its status.
        status: Status,
    },
    /// The operation is not allowed in this status.
    #[error("cannot {operation} container {id}: it is {status}{hint}")]
    WrongStatus {
        /// What was attempted.
        operation: &'static str,
        /// Container id.
        id: String,
        /// Its status.
        status: Status,
        /// What to do instead.
        hint: &'static str,
    },
    /// A hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The console socket or pid file could not be used.
    #[error("{what} {path}: {source}")]
    Io {
        /// What it was.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl LifecycleError {
    /// The exit code for this error (127/126 for a missing/non-executable program).
    pub fn exit_code(&self) -> i32 {
        match self {
            LifecycleError::Backend(err) => err.exit_code(),
            _ => 1,
        }
    }
}

/// Reads and parses `bundle/config.json`.
pub fn load_bundle_spec(bundle: &Path) -> Result<(Spec, Vec<u8>), LifecycleError> {
    let bad = |reason: String| LifecycleError::Bundle {
        bundle: bundle.to_path_buf(),
        reason,
    };
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| bad(format!("cannot read config.json: {e}")))?;
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "config.json is not a valid OCI runtime config: {e}"
        ))
    })?;
    Ok((spec, bytes))
}

/// Builds a new container (runc's `create`).
#[derive(Debug)]
pub struct ContainerBuilder {
    root: RunRoot,
    id: String,
    bundle: PathBuf,
    pid_file: Option<PathBuf>,
    console_socket: Option<PathBuf>,
    isolation: Option<BackendKind>,
    argv0: Option<String>,
    systemd_cgroup: bool,
    spec: Option<Spec>,
    options: CreateOptions,
}

impl ContainerBuilder {
    /// A container `id` from `bundle`, with state under `root`.
    pub fn new(root: RunRoot, id: impl Into<String>, bundle: impl Into<PathBuf>) -> Self {
        ContainerBuilder {
            root,
            id: id.into(),
            bundle: bundle.into(),
            pid_file: None,
            console_socket: None,
            isolation: None,
            argv0: None,
            systemd_cgroup: false,
            spec: None,
            options: CreateOptions::default(),
        }
    }

    /// The container's config, instead of reading `bundle/config.json` (root.path is still
    /// relative to the bundle).
    pub fn spec(mut self, spec: Spec) -> Self {
        self.spec = Some(spec);
        self
    }

    /// Writes the init's pid here once created.
    pub fn pid_file(mut self, path: Option<PathBuf>) -> Self {
        self.pid_file = path;
        self
    }

    /// Sends the pty master to this unix socket (process.terminal).
    pub fn console_socket(mut self, path: Option<PathBuf>) -> Self {
        self.console_socket = path;
        self
    }

    /// A connected console socket (instead of a path).
    pub fn console_socket_fd(mut self, fd: OwnedFd) -> Self {
        self.options.console_socket = Some(fd);
        self
    }

    /// Forces the backend (docker-style `--isolation`).
    pub fn isolation(mut self, kind: Option<BackendKind>) -> Self {
        self.isolation = kind;
        self
    }

    /// The name the binary was invoked by (`twinbox-vm` selects the VM backend).
    pub fn argv0(mut self, argv0: Option<String>) -> Self {
        self.argv0 = argv0;
        self
    }

    /// Interpret cgroupsPath as systemd's slice:prefix:name.
    pub fn systemd_cgroup(mut self, yes: bool) -> Self {
        self.systemd_cgroup = yes;
        self
    }

    /// MS_MOVE + chroot instead of pivot_root.
    pub fn no_pivot(mut self, yes: bool) -> Self {
        self.options.no_pivot = yes;
        self
    }

    /// Keep the caller's session keyring.
    pub fn no_new_keyring(mut self, yes: bool) -> Self {
        self.options.no_new_keyring = yes;
        self
    }

    /// Keep fds 3..3+n open in the container.
    pub fn preserve_fds(mut self, n: u32) -> Self {
        self.options.preserve_fds = n;
        self
    }

    /// stdin, stdout and stderr of the container (default: the caller's).
    pub fn stdio(mut self, stdio: [OwnedFd; 3]) -> Self {
        self.options.stdio = Some(stdio);
        self
    }

    /// Says that `start` follows right after `create` (`run`): the VM backend then starts
    /// the workload in the guest without waiting for `start`'s round trip.
    pub fn start_on_create(mut self, yes: bool) -> Self {
        self.options.start_on_create = yes;
        self
    }

    /// Creates the container: on success its init is alive and blocked before the user
    /// program (or, with [`ContainerBuilder::start_on_create`], possibly already running
    /// it); on failure nothing of it remains.
    pub fn create(mut self) -> Result<Container, LifecycleError> {
        crate::state::validate_id(&self.id)?;
        let bundle = std::path::absolute(&self.bundle).unwrap_or(self.bundle.clone());
        let (spec, config_bytes) = match self.spec.take() {
            Some(spec) => {
                let bytes = serde_json::to_vec(&spec).map_err(|e| LifecycleError::Bundle {
                    bundle: bundle.clone(),
                    reason: format!("the config does not serialize: {e}"),
                })?;
                (spec, bytes)
            }
            None => load_bundle_spec(&bundle)?,
        };
        let root_path = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| LifecycleError::Bundle {
                bundle: bundle.clone(),
                reason: "config.json has no root.path".into(),
            })?;
        let rootfs = bundle
            .join(root_path)
            .canonicalize()
            .map_err(|e| LifecycleError::Bundle {
                bundle: bundle.clone(),
                reason: format!("root.path does not exist or is unreadable: {e}"),
            })?;
        let (kind, reason) = backend::select(self.isolation, self.argv0.as_deref(), &spec)?;
        let backend = backend::for_kind(kind, &reason)?;
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let cgroup = resolve_cgroups_path(cgroups_path.as_deref(), &self.id, self.systemd_cgroup)
            .map_err(BackendError::from)?;
        if cgroup.systemd_style {
            let systemd = Path::new("/run/systemd/system").exists();
            tracing::info!(
                "cgroup {} ({}): managed with cgroupfs{}",
                cgroup.path.display(),
                cgroups_path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                if systemd {
                    " at the path systemd would use (no systemd unit is created)"
                } else {
                    " because systemd is not running on this host"
                }
            );
        }
        let console = match &self.console_socket {
            Some(path) => Some(OwnedFd::from(UnixStream::connect(path).map_err(
                |source| LifecycleError::Io {
                    what: "connecting to the console socket",
                    path: path.clone(),
                    source,
                },
            )?)),
            None => None,
        };
        if console.is_some() {
            self.options.console_socket = console;
        }
        tracing::debug!(id = %self.id, backend = %kind, "creating container");
        self.root.use_seccomp_cache();
        let dir = self.root.create_container_dir(&self.id)?;
        let mut record = ContainerRecord {
            oci_version: spec.version().clone(),
            id: self.id.clone(),
            status: Status::Creating,
            init: ProcessIdentity::default(),
            creator: ProcessIdentity::of(std::process::id() as i32).unwrap_or_default(),
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            created: rfc3339_now(),
            backend: kind,
            cgroup_path: Some(cgroup.path.clone()),
            owner: owner_name(),
            state_dir: dir.clone(),
        };
        let result = self.create_in(
            &dir,
            &mut record,
            &spec,
            &config_bytes,
            &rootfs,
            backend.as_ref(),
        );
        match result {
            Ok(()) => Ok(Container {
                root: self.root,
                record,
                backend,
                spec: Some(spec),
            }),
            Err(err) => {
                if let Err(cleanup) = backend.destroy(&record) {
                    tracing::warn!("cleaning up after the failed create: {cleanup}");
                }
                if matches!(err, LifecycleError::Hook(_)) {
                    run_poststop(&spec, &record);
                }
                let _ = self.root.remove(&self.id);
                Err(err)
            }
        }
    }

    fn create_in(
        &mut self,
        dir: &Path,
        record: &mut ContainerRecord,
        spec: &Spec,
        config_bytes: &[u8],
        rootfs: &Path,
        backend: &dyn Backend,
    ) -> Result<(), LifecycleError> {
        self.root.save_config(&self.id, config_bytes)?;
        self.root.save(record)?;
        let fifo = ExecFifo::in_dir(dir).create()?;
        let options = std::mem::take(&mut self.options);
        let cgroup_path = record.cgroup_path.clone();
        let mut observer = CreateObserver {
            root: &self.root,
            record,
            hooks: spec.hooks().clone().unwrap_or_default(),
            hook_error: None,
        };
        let pid = backend.create(
            CreateRequest {
                id: &self.id,
                spec,
                rootfs,
                cgroup_path: cgroup_path.as_deref(),
                exec_fifo: fifo,
                state_dir: dir,
                options,
            },
            &mut observer,
        );
        let hook_error = observer.hook_error.take();
        let pid = match (pid, hook_error) {
            (Err(_), Some(hook)) => return Err(hook.into()),
            (pid, _) => pid?,
        };
        record.init = ProcessIdentity::of(pid).unwrap_or(record.init);
        record.status = Status::Created;
        self.root.save(record)?;
        if let Some(path) = &self.pid_file {
            write_pid_file(path, pid)?;
        }
        tracing::debug!(id = %self.id, pid, "container created");
        Ok(())
    }
}

/// Records the init as soon as it exists and runs the runtime-namespace hooks.
struct CreateObserver<'a> {
    root: &'a RunRoot,
    record: &'a mut ContainerRecord,
    hooks: Hooks,
    hook_error: Option<HookError>,
}

impl SetupObserver for CreateObserver<'_> {
    fn spawned(&mut self, pid: i32) -> Result<(), String> {
        self.record.init =
            ProcessIdentity::of(pid).unwrap_or(ProcessIdentity { pid, start_time: 0 });
        self.root.save(self.record).map_err(|e| e.to_string())
    }

    fn runtime_hooks(&mut self, _pid: i32) -> Result<String, String> {
        let state = self.record.oci_state(Status::Creating).to_string();
        #[allow(deprecated)]
        let prestart = self.hooks.prestart().clone().unwrap_or_default();
        let create_runtime = self.hooks.create_runtime().clone().unwrap_or_default();
        let result = hooks::run_hooks("prestart", &prestart, &state)
            .and_then(|()| hooks::run_hooks("createRuntime", &create_runtime, &state));
        if let Err(err) = result {
            let text = err.to_string();
            self.hook_error = Some(err);
            return Err(text);
        }
        Ok(self.record.oci_state(Status::Created).to_string())
    }
}

fn run_poststop(spec: &Spec, record: &ContainerRecord) {
    let poststop = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststop().clone())
        .unwrap_or_default();
    if !poststop.is_empty() {
        let state = record.oci_state(Status::Stopped).to_string();
        hooks::run_hooks_warn("poststop", &poststop, &state);
    }
}

fn owner_name() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// An existing container.
pub struct Container {
    root: RunRoot,
    record: ContainerRecord,
    backend: Box<dyn Backend>,
    spec: Option<Spec>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("record", &self.record)
            .finish()
    }
}

impl Container {
    /// Loads container `id` from `root`.
    pub fn load(root: RunRoot, id: &str) -> Result<Self, LifecycleError> {
        let record = root.load(id)?;
        let backend = backend_for_record(&record)?;
        Ok(Container {
            root,
            record,
            backend,
            spec: None,
        })
    }

    /// Every container under `root` (damaged entries are skipped with a warning).
    pub fn list(root: &RunRoot) -> Result<Vec<Container>, LifecycleError> {
        let mut out = Vec::new();
        for id in root.ids()? {
            match Container::load(root.clone(), &id) {
                Ok(c) => out.push(c),
                Err(err) => tracing::warn!("skipping {id}: {err}"),
            }
        }
        Ok(out)
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The recorded state.
    pub fn record(&self) -> &ContainerRecord {
        &self.record
    }

    /// The init's host pid.
    pub fn pid(&self) -> i32 {
        self.record.init.pid
    }

    /// The live status, derived from the system.
    pub fn status(&self) -> Status {
        if self.record.status == Status::Creating {
            return if self.record.creator.is_alive() {
                Status::Creating
            } else {
                Status::Stopped
            };
        }
        if !self.record.init.is_alive() {
            return Status::Stopped;
        }
        if ExecFifo::in_dir(&self.root.container_dir(&self.record.id)).exists() {
            return Status::Created;
        }
        if self.backend.is_paused(&self.record) {
            return Status::Paused;
        }
        Status::Running
    }

    /// The OCI state JSON; a VM's also carries its start milestones as annotations
    /// ([`crate::vm::phases`]).
    pub fn state(&self) -> serde_json::Value {
        let mut state = self.record.oci_state(self.status());
        if self.record.backend == BackendKind::Vm {
            crate::vm::phases::annotate_state(
                &crate::vm::jail::vm_dir(&self.record.state_dir),
                &mut state,
            );
        }
        state
    }

    fn spec(&mut self) -> Result<&Spec, LifecycleError> {
        if self.spec.is_none() {
            self.spec = Some(self.root.load_config(&self.record.id)?);
        }
        Ok(self.spec.as_ref().expect("set above"))
    }

    /// Releases the init to run the user program, then runs the poststart hooks.
    pub fn start(&mut self) -> Result<(), LifecycleError> {
        let status = self.status();
        if status != Status::Created {
            return Err(LifecycleError::WrongStatus {
                operation: "start",
                id: self.record.id.clone(),
                status,
                hint: if status == Status::Stopped {
                    "; delete it and create it again"
                } else {
                    ": only a created container can be started"
                },
            });
        }
        ExecFifo::in_dir(&self.root.container_dir(&self.record.id)).release(self.record.init)?;
        self.record.status = Status::Running;
        self.root.save(&self.record)?;
        let poststart = self
            .spec()?
            .hooks()
            .as_ref()
            .and_then(|h| h.poststart().clone())
            .unwrap_or_default();
        if !poststart.is_empty() {
            let state = self.record.oci_state(Status::Running).to_string();
            hooks::run_hooks_warn("poststart", &poststart, &state);
        }
        Ok(())
    }

    /// Sends `signal` to the init (or all processes). Only created, running or paused
    /// containers can be signalled.
    pub fn kill(&self, signal: i32, all: bool) -> Result<(), LifecycleError> {
        let status = self.status();
        if !matches!(status, Status::Created | Status::Running | Status::Paused) {
            return Err(LifecycleError::NotRunning {
                id: self.record.id.clone(),
                status,
            });
        }
        self.backend.signal(&self.record, signal, all)?;
        Ok(())
    }

    /// Deletes the container: kills what is left, removes its cgroup and state, then runs the
    /// poststop hooks. Running or paused containers need `force`; created ones are killed as
    /// runc does (containerd deletes never-started tasks without --force).
    pub fn delete(mut self, force: bool) -> Result<(), LifecycleError> {
        let status = self.status();
        let allowed = force || matches!(status, Status::Stopped | Status::Created);
        if !allowed {
            return Err(LifecycleError::WrongStatus {
                operation: "delete",
                id: self.record.id.clone(),
                status,
                hint: ": stop it first or use --force",
            });
        }
        self.backend.destroy(&self.record)?;
        tracing::debug!(id = %self.record.id, "container resources released");
        if let Ok(spec) = self.spec() {
            let spec = spec.clone();
            run_poststop(&spec, &self.record);
        }
        self.root.remove(&self.record.id)?;
        Ok(())
    }

    /// Starts `process` in the running container; returns its host pid.
    pub fn exec(&mut self, process: &Process, options: ExecOptions) -> Result<i32, LifecycleError> {
        let status = self.status();
        if !matches!(status, Status::Created | Status::Running) {
            return Err(LifecycleError::NotRunning {
                id: self.record.id.clone(),
                status,
            });
        }
        let spec = self.spec()?.clone();
        self.root.use_seccomp_cache();
        Ok(self.backend.exec(&self.record, &spec, process, options)?)
    }

    /// The process of the container's config (defaults for exec).
    pub fn config_process(&mut self) -> Result<Process, LifecycleError> {
        Ok(self.spec()?.process().clone().unwrap_or_default())
    }

    /// Host pids of the container's processes.
    pub fn processes(&self) -> Result<Vec<i32>, LifecycleError> {
        if self.status() == Status::Stopped {
            return Ok(Vec::new());
        }
        Ok(self.backend.processes(&self.record)?)
    }

    /// Freezes a running container.
    pub fn pause(&self) -> Result<(), LifecycleError> {
        let status = self.status();
        if status != Status::Running {
            return Err(LifecycleError::NotRunning {
                id: self.record.id.clone(),
                status,
            });
        }
        Ok(self.backend.pause(&self.record)?)
    }

    /// Thaws a paused container.
    pub fn resume(&self) -> Result<(), LifecycleError> {
        let status = self.status();
        if status != Status::Paused {
            return Err(LifecycleError::WrongStatus {
                operation: "resume",
                id: self.record.id.clone(),
                status,
                hint: ": only a paused container can be resumed",
            });
        }
        Ok(self.backend.resume(&self.record)?)
    }

    /// Whether the kernel OOM-killed a process of the container.
    pub fn oom_killed(&self) -> bool {
        self.backend.oom_killed(&self.record)
    }
}

fn backend_for_record(record: &ContainerRecord) -> Result<Box<dyn Backend>, LifecycleError> {
    Ok(backend::for_kind(
        record.backend,
        "recorded in the container's state",
    )?)
}
