//! The docker/podman-style container engine: `run IMAGE`, `ps`, `stop`, `kill`, `rm`, `logs`,
//! `exec`, `wait` and named volumes, on top of the image store ([`crate::image`]), the runtime
//! spec generator ([`crate::spec`]) and the backend-neutral lifecycle ([`crate::lifecycle`]).
//!
//! There is no daemon. A container made by `run IMAGE` is an ordinary runtime container in the
//! run root (so `twinbox state ID` works on it) whose config carries the engine's annotations
//! (`io.twinbox.name`, `io.twinbox.image`, ...). Its writable layer, bundle config and log live
//! in the store under `containers/<id>/`. The process that waits for the container's init (the
//! foreground `twinbox run`, or the small monitor a detached run leaves behind) is the
//! container's recorded creator; it writes `exit.json` next to `state.json` when the init
//! exits, so `ps -a`, `wait` and `inspect` report the exit code. Everything else is derived
//! from the live system, so a twinbox or monitor killed at any point leaves a container that
//! `ps -a` shows truthfully and `rm -f` removes completely.

pub mod inspect;
pub mod logs;
pub mod monitor;
mod names;
mod options;
mod run;
mod status;
pub mod volumes;

pub use names::{generate_name, validate_name};
pub use options::{
    MountSource, NetworkMode, Resources, VolumeSpec, complete_env, parse_cpus, parse_env_file,
    parse_memory, parse_tmpfs, parse_volume,
};
pub use run::{RunOutcome, RunRequest};
pub use status::{ContainerSummary, ago, human_duration};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::image::{ImageError, ImageStore};
use crate::lifecycle::{Container, LifecycleError};
use crate::spec::SpecError;
use crate::state::{RunRoot, StateError, Status, write_atomic};

/// Annotations the engine puts on the containers it makes (visible in `twinbox state`).
pub mod annotations {
    /// The container's unique name.
    pub const NAME: &str = "io.twinbox.name";
    /// The image as the user named it.
    pub const IMAGE: &str = "io.twinbox.image";
    /// The image id (config digest).
    pub const IMAGE_ID: &str = "io.twinbox.image.id";
    /// The command (entrypoint + cmd) as a JSON array.
    pub const COMMAND: &str = "io.twinbox.command";
    /// The image store holding the container's root filesystem.
    pub const STORE: &str = "io.twinbox.store";
    /// "true" when the container is removed once it exits (`--rm`).
    pub const AUTO_REMOVE: &str = "io.twinbox.auto-remove";
    /// Seconds `stop` waits before SIGKILL.
    pub const STOP_TIMEOUT: &str = "io.twinbox.stop-timeout";
    /// The signal `stop` sends first (the image's StopSignal or `--stop-signal`).
    pub const STOP_SIGNAL: &str = "org.opencontainers.image.stopSignal";
    /// The log file of a detached container.
    pub const LOG_PATH: &str = "io.twinbox.log-path";
    /// Named volumes the container mounts, comma-separated.
    pub const VOLUMES: &str = "io.twinbox.volumes";
    /// Anonymous volumes the container created, comma-separated (removed with `--rm`/`rm -v`).
    pub const ANONYMOUS_VOLUMES: &str = "io.twinbox.volumes.anonymous";
    /// "true" when stdin stays open (`-i`): `exec` then keeps its stdin too.
    pub const INTERACTIVE: &str = "io.twinbox.interactive";
}

/// Default seconds `stop` waits for a container before SIGKILL (docker's).
pub const DEFAULT_STOP_TIMEOUT: u64 = 10;

/// Environment variable overriding the run root of the docker-style commands.
pub const RUN_ROOT_ENV: &str = "TWINBOX_RUN_ROOT";

/// The exit status file the waiter writes next to `state.json`.
const EXIT_FILE: &str = "exit.json";

/// The log file of a detached container, in its store directory.
const LOG_FILE: &str = "container.log";

/// Errors of the engine. [`EngineError::exit_code`] gives docker's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The image store failed (missing image, ...).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The runtime spec could not be built (bad user, env, capability, ...).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Creating, starting or managing the container failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// No container matches.
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    /// An id prefix that matches several containers.
    #[error("container id prefix {0:?} matches several containers; give more characters")]
    Ambiguous(String),
    /// The name is taken.
    #[error(
        "the container name {name:?} is already in use by container {id}; remove that container \
         (`twinbox rm {name}`) or choose another --name"
    )]
    NameInUse {
        /// The name.
        name: String,
        /// The container that has it.
        id: String,
    },
    /// A name that docker would refuse.
    #[error("invalid {what} name {name:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]* (at least 2 characters)")]
    InvalidName {
        /// "container" or "volume".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A command-line value that cannot be used.
    #[error("invalid {option} {value:?}: {reason}")]
    InvalidOption {
        /// The option, e.g. "--memory".
        option: &'static str,
        /// The value given.
        value: String,
        /// What is expected.
        reason: String,
    },
    /// The operation needs a stopped container.
    #[error(
        "container {0} is running: stop it first (`twinbox stop {0}`) or remove it with `rm -f`"
    )]
    Running(String),
    /// No process is left that could report the exit code.
    #[error(
        "the exit code of container {0} is unknown: the process that waited for it (its \
         monitor, or the foreground `twinbox run`) was killed before the container exited"
    )]
    ExitUnknown(String),
    /// A volume problem.
    #[error("volume {name}: {reason}")]
    Volume {
        /// The volume.
        name: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A detached container's monitor failed.
    #[error("the container monitor {0}")]
    Monitor(String),
    /// Starting a detached container failed; its monitor reported why.
    #[error("{message}")]
    Detached {
        /// The exit code for the failure.
        code: i32,
        /// What went wrong.
        message: String,
    },
}

impl EngineError {
    /// The exit code docker gives: 127/126 when the container's program is missing or not
    /// executable, 125 for every other failure of the engine itself.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Lifecycle(err) if matches!(err.exit_code(), 126 | 127) => err.exit_code(),
            EngineError::Detached { code, .. } => *code,
            _ => 125,
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| EngineError::Io {
            action,
            path,
            source,
        }
    }
}

impl From<StateError> for EngineError {
    fn from(err: StateError) -> Self {
        EngineError::Lifecycle(err.into())
    }
}

/// How a container ended, as its waiter recorded it (`exit.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// The exit code (128+signal when killed by a signal).
    pub exit_code: i32,
    /// When the init exited (RFC 3339).
    pub finished_at: String,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// The engine over one image store and one run root.
#[derive(Debug, Clone)]
pub struct Engine {
    store_root: PathBuf,
    run_root: RunRoot,
}

/// A held lock on a container's run-root directory (flock(2) on the directory itself):
/// removal takes it exclusive, `wait` shared, so a waiter reads the exit code before an
/// auto-removing container disappears.
pub(crate) struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn take(dir: &Path, exclusive: bool) -> Option<DirLock> {
        let file = File::open(dir).ok()?;
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.ok().map(|()| DirLock(file))
    }
}

impl Engine {
    /// The engine for the store at `store_root` and containers under `run_root`.
    pub fn new(store_root: impl Into<PathBuf>, run_root: RunRoot) -> Engine {
        Engine {
            store_root: store_root.into(),
            run_root,
        }
    }

    /// The store root.
    pub fn store_root(&self) -> &Path {
        &self.store_root
    }

    /// The run root.
    pub fn run_root(&self) -> &RunRoot {
        &self.run_root
    }

    /// Opens the image store.
    pub fn store(&self) -> Result<ImageStore, EngineError> {
        Ok(ImageStore::open(&self.store_root)?)
    }

    fn names(&self) -> names::Names {
        names::Names::new(&self.run_root)
    }

    /// Finds a container by name, full id or unique id prefix (in that order, as docker).
    pub fn resolve(&self, query: &str) -> Result<String, EngineError> {
        if query.is_empty() {
            return Err(EngineError::NoSuchContainer(query.to_string()));
        }
        if let Some(id) = self.names().lookup(query) {
            return Ok(id);
        }
        if crate::state::validate_id(query).is_ok() && self.run_root.container_dir(query).is_dir() {
            return Ok(query.to_string());
        }
        let ids = self.run_root.ids()?;
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(query)).collect();
        match matches.as_slice() {
            [id] => Ok((*id).clone()),
            [] => Err(EngineError::NoSuchContainer(query.to_string())),
            _ => Err(EngineError::Ambiguous(query.to_string())),
        }
    }

    /// Loads the container `query` names (see [`Engine::resolve`]).
    pub fn load(&self, query: &str) -> Result<Container, EngineError> {
        let id = self.resolve(query)?;
        Container::load(self.run_root.clone(), &id).map_err(|err| match err {
            LifecycleError::State(StateError::NotFound(_)) => {
                EngineError::NoSuchContainer(query.to_string())
            }
            other => other.into(),
        })
    }

    /// The exit record of container `id`, once its waiter wrote it.
    pub fn exit_record(&self, id: &str) -> Option<ExitRecord> {
        let bytes = std::fs::read(self.run_root.container_dir(id).join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records how container `id` ended (called by its waiter only). Waits while a removal
    /// holds the container's directory, and does nothing once it is removed.
    pub fn record_exit(&self, id: &str, record: &ExitRecord) -> Result<(), EngineError> {
        let dir = self.run_root.container_dir(id);
        let _lock = DirLock::take(&dir, false);
        if !dir.join("state.json").exists() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(record).expect("exit records serialize");
        Ok(write_atomic(&dir.join(EXIT_FILE), &bytes)?)
    }

    /// The directory of container `id`'s /etc/hosts, /etc/hostname and /etc/resolv.conf.
    fn etc_dir(&self, id: &str) -> PathBuf {
        self.run_root.path().join(".etc").join(id)
    }

    /// Removes what a container `id` that has no run-root state (any more) may have left:
    /// its root filesystem in the store at `store_root` and its /etc files.
    fn discard_leftovers(&self, id: &str, store_root: &Path) -> Result<(), EngineError> {
        if store_root.join("containers").join(id).exists() {
            ImageStore::open(store_root)?.remove_rootfs(id)?;
        }
        let etc = self.etc_dir(id);
        match std::fs::remove_dir_all(&etc) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(EngineError::io("removing", &etc)(err))
            }
            _ => Ok(()),
        }
    }

    /// The log file a detached container `id` writes in the store.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.store_root.join("containers").join(id).join(LOG_FILE)
    }

    /// Stops a container: `signal`, then SIGKILL to every process after `timeout`. Returns once
    /// the init is gone and its waiter recorded the exit (or is gone too).
    pub fn stop(
        &self,
        container: &Container,
        signal: i32,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let status = container.status();
        if matches!(status, Status::Running | Status::Paused) {
            container.kill(signal, false)?;
            if status == Status::Paused {
                // A frozen process cannot handle the signal: let it run.
                let _ = container.resume();
            }
            if !wait_until_gone(container.record().init, timeout) {
                tracing::debug!(id = container.id(), "stop timeout: killing every process");
                if container.status() != Status::Stopped {
                    container.kill(libc::SIGKILL, true)?;
                }
                wait_until_gone(container.record().init, Duration::from_secs(10));
            }
        }
        self.wait_for_exit_record(container.id(), &container.record().creator);
        Ok(())
    }

    /// Waits (a few seconds at most) until the waiter recorded the exit of `id`, removed it, or
    /// is gone.
    fn wait_for_exit_record(&self, id: &str, waiter: &crate::state::ProcessIdentity) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while waiter.is_alive()
            && self.exit_record(id).is_none()
            && self.run_root.container_dir(id).is_dir()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Blocks until container `query` exits and returns its exit code.
    pub fn wait(&self, query: &str) -> Result<i32, EngineError> {
        let id = self.resolve(query)?;
        // Held while waiting: an auto-removing waiter removes the container only after this
        // has read the exit code.
        let _lock = DirLock::take(&self.run_root.container_dir(&id), false);
        loop {
            if let Some(record) = self.exit_record(&id) {
                return Ok(record.exit_code);
            }
            let container = match Container::load(self.run_root.clone(), &id) {
                Ok(container) => container,
                Err(LifecycleError::State(StateError::NotFound(_))) => {
                    return Err(EngineError::NoSuchContainer(query.to_string()));
                }
                Err(err) => return Err(err.into()),
            };
            let record = container.record();
            if container.status() != Status::Stopped {
                if record.init.pid > 0 {
                    wait_until_gone(record.init, Duration::from_millis(500));
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            } else if !record.creator.is_alive() {
                // The waiter may have written the record just before exiting.
                return self
                    .exit_record(&id)
                    .map(|r| r.exit_code)
                    .ok_or_else(|| EngineError::ExitUnknown(display_name(&container).into()));
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Removes every trace of container `id`: its processes (with `force`), root filesystem,
    /// cgroup, run-root state, name and (with `volumes`) its anonymous volumes. Safe to repeat
    /// and to run on half-created containers: what is already gone is skipped.
    pub fn remove(&self, id: &str, force: bool, volumes: bool) -> Result<(), EngineError> {
        let dir = self.run_root.container_dir(id);
        let container = match Container::load(self.run_root.clone(), id) {
            Ok(container) => Some(container),
            Err(LifecycleError::State(StateError::NotFound(_))) if !dir.exists() => {
                return Err(EngineError::NoSuchContainer(id.to_string()));
            }
            Err(err) => {
                tracing::warn!("container {id} has damaged state ({err}); removing what is left");
                None
            }
        };
        let annotations = container
            .as_ref()
            .map(|c| c.record().annotations.clone())
            .unwrap_or_default();
        if let Some(container) = &container {
            let status = container.status();
            let alive = matches!(
                status,
                Status::Running | Status::Paused | Status::Created | Status::Creating
            );
            if alive && !force && status != Status::Created {
                return Err(EngineError::Running(display_name(container).to_string()));
            }
            if alive {
                let _ = container.kill(libc::SIGKILL, true);
                if status == Status::Paused {
                    let _ = container.resume();
                }
                wait_until_gone(container.record().init, Duration::from_secs(10));
            }
        }
        // Only now, with the container stopped: a `wait` holds the lock until it has read the
        // exit code.
        let _lock = DirLock::take(&dir, true);
        if !dir.exists() {
            // Removed meanwhile by its own waiter (--rm).
            return Ok(());
        }
        // Processes, cgroup and state first, then the root filesystem and /etc files, then the
        // name: a removal interrupted after the state is gone leaves a name whose container
        // does not exist, which `collect_stale_names` finishes.
        match container {
            Some(container) => container.delete(true)?,
            None => self.run_root.remove(id)?,
        }
        let store_root = annotations
            .get(annotations::STORE)
            .map(PathBuf::from)
            .unwrap_or_else(|| self.store_root.clone());
        self.discard_leftovers(id, &store_root)?;
        if let Some(name) = annotations.get(annotations::NAME) {
            self.names().release(name, id);
        }
        if volumes && let Some(list) = annotations.get(annotations::ANONYMOUS_VOLUMES) {
            let store = volumes::VolumeStore::open(&store_root)?;
            for name in list.split(',').filter(|n| !n.is_empty()) {
                if let Err(err) = store.remove(name) {
                    tracing::warn!("removing anonymous volume {name}: {err}");
                }
            }
        }
        Ok(())
    }

    /// Containers made by the engine under the run root (with their live status). One that
    /// is being removed right now is left out.
    pub fn containers(&self) -> Result<Vec<Container>, EngineError> {
        let mut containers = Vec::new();
        for id in self.run_root.ids()? {
            match Container::load(self.run_root.clone(), &id) {
                Ok(c) if c.record().annotations.contains_key(annotations::NAME) => {
                    containers.push(c)
                }
                Ok(_) | Err(LifecycleError::State(StateError::NotFound(_))) => {}
                Err(err) => tracing::warn!("skipping {id}: {err}"),
            }
        }
        Ok(containers)
    }

    /// Names of the containers that mount named volume `volume`.
    pub fn volume_users(&self, volume: &str) -> Result<Vec<String>, EngineError> {
        Ok(self
            .containers()?
            .iter()
            .filter(|c| {
                c.record()
                    .annotations
                    .get(annotations::VOLUMES)
                    .is_some_and(|list| list.split(',').any(|v| v == volume))
            })
            .map(|c| display_name(c).to_string())
            .collect())
    }
}

/// The name of a container (its id when it has none).
pub fn display_name(container: &Container) -> &str {
    container
        .record()
        .annotations
        .get(annotations::NAME)
        .map(String::as_str)
        .unwrap_or(container.id())
}

/// Waits up to `timeout` for process `identity` to exit; true when it is gone.
pub fn wait_until_gone(identity: crate::state::ProcessIdentity, timeout: Duration) -> bool {
    if !identity.is_alive() {
        return true;
    }
    // A pidfd becomes readable when the process exits (it need not be our child).
    // SAFETY: pidfd_open with a pid and no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, identity.pid, 0) };
    let deadline = Instant::now() + timeout;
    if fd >= 0 {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pid may have been reused between the check above and pidfd_open.
        if !identity.is_alive() {
            return true;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready > 0 || !identity.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
    while identity.is_alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// `n` random bytes as lower-case hex (container ids, generated names).
pub(crate) fn random_hex(bytes: usize) -> String {
    hex::encode(random_bytes(bytes))
}

/// `n` random bytes from the kernel's generator.
pub(crate) fn random_bytes(bytes: usize) -> Vec<u8> {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < bytes {
        // SAFETY: getrandom writes at most the remaining length into our buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), bytes - filled, 0) };
        // n < 0 is EINTR (getrandom(2) cannot fail otherwise for these sizes): try again.
        if n > 0 {
            filled += n as usize;
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex() {
        let a = random_hex(32);
        let b = random_hex(32);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn exit_codes_follow_docker() {
        assert_eq!(
            EngineError::NoSuchContainer("x".into()).exit_code(),
            125,
            "the engine's own errors"
        );
        let missing = LifecycleError::Backend(crate::backend::BackendError::Launch(
            twinbox_sandbox::launch::LaunchError::Child {
                failure: twinbox_sandbox::sync::Failure::NotFound,
                message: "nope".into(),
            },
        ));
        assert_eq!(EngineError::Lifecycle(missing).exit_code(), 127);
    }

    #[test]
    fn resolution_by_name_id_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let root = RunRoot::new(Some(dir.path()));
        let engine = Engine::new(dir.path().join("store"), root.clone());
        root.create_container_dir("abc123").unwrap();
        root.create_container_dir("abd456").unwrap();
        engine.names().reserve("web", "abc123").unwrap();
        assert_eq!(engine.resolve("web").unwrap(), "abc123");
        assert_eq!(engine.resolve("abd456").unwrap(), "abd456");
        assert_eq!(engine.resolve("abd").unwrap(), "abd456");
        assert!(matches!(
            engine.resolve("ab"),
            Err(EngineError::Ambiguous(_))
        ));
        assert!(matches!(
            engine.resolve("zzz"),
            Err(EngineError::NoSuchContainer(_))
        ));
        assert!(matches!(
            engine.resolve(""),
            Err(EngineError::NoSuchContainer(_))
        ));
    }
}
