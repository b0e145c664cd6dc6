//! The run root (`/run/twinbox`, runc's `--root`): one directory per container holding
//! `state.json`, a copy of the config, and the exec fifo. Files are written atomically
//! (temp + rename); the status is always derived from the live system (pid + start time,
//! fifo, freezer), never trusted from the file alone, so a twinbox killed at any point leaves
//! a state that `delete --force` can clean up.

mod fifo;
mod time;

pub use fifo::ExecFifo;
pub use time::rfc3339_now;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;

/// Default run root, as runc's /run/runc.
pub const DEFAULT_RUN_ROOT: &str = "/run/twinbox";

/// Errors of the run root.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No container with this id.
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container with id \"{0}\" already exists")]
    Exists(String),
    /// The id cannot be used as a directory name.
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.' (not first)")]
    InvalidId(String),
    /// Reading or writing the run root failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The init died before `start` released it.
    #[error("the container's init process exited before it was started")]
    InitExited,
    /// state.json is damaged.
    #[error("state file {path} is damaged ({source}); `twinbox delete --force` removes it")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

/// Checks a container id (runc's rule: `^[\w+\-.]+$`), not starting with '.' (entries of
/// the run root that start with a dot are twinbox's own, such as the name index).
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let valid = !id.is_empty()
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
        && !id.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

/// The lifecycle status of a container (runtime spec, plus runc's "paused").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, init blocked before the user program.
    Created,
    /// The user program runs.
    Running,
    /// Frozen.
    Paused,
    /// The init is gone.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// A process identified by pid and start time (guards against pid reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcessIdentity {
    /// Host pid.
    pub pid: i32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: u64,
}

impl ProcessIdentity {
    /// The identity of a live process.
    pub fn of(pid: i32) -> Option<Self> {
        let (start_time, _) = read_stat(pid)?;
        Some(ProcessIdentity { pid, start_time })
    }

    /// True while this very process exists and has not exited (zombies count as exited).
    pub fn is_alive(&self) -> bool {
        self.pid > 0
            && matches!(read_stat(self.pid), Some((start, state)) if start == self.start_time && state != 'Z' && state != 'X')
    }
}

/// (start time, state letter) from /proc/PID/stat.
fn read_stat(pid: i32) -> Option<(u64, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

/// What twinbox records about a container (state.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// OCI runtime spec version of the config.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Status when last written (informational: the live status is derived).
    pub status: Status,
    /// The init process (pid 0 until it exists).
    pub init: ProcessIdentity,
    /// The twinbox process that is creating the container.
    pub creator: ProcessIdentity,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// The config's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Which backend runs it.
    pub backend: BackendKind,
    /// The container's cgroup path in every hierarchy (None: no cgroup).
    pub cgroup_path: Option<PathBuf>,
    /// The user who created it.
    pub owner: String,
    /// The container's state directory.
    #[serde(default)]
    pub state_dir: PathBuf,
}

impl ContainerRecord {
    /// The OCI state object (runtime spec "State") for this record with `status`.
    pub fn oci_state(&self, status: Status) -> serde_json::Value {
        let pid = if status == Status::Stopped || self.init.pid <= 0 {
            0
        } else {
            self.init.pid
        };
        serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": status,
            "pid": pid,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
        })
    }
}

/// The run root directory.
#[derive(Debug, Clone)]
pub struct RunRoot {
    dir: PathBuf,
}

const STATE_FILE: &str = "state.json";
const CONFIG_FILE: &str = "config.json";

impl RunRoot {
    /// The run root at `dir` (default [`DEFAULT_RUN_ROOT`]).
    pub fn new(dir: Option<&Path>) -> Self {
        RunRoot {
            dir: dir.unwrap_or(Path::new(DEFAULT_RUN_ROOT)).to_path_buf(),
        }
    }

    /// The run root's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Creates the directory of a new container; fails if the id is taken.
    pub fn create_container_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let dir = self.container_dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_string()))
            }
            Err(e) => Err(io_err("creating", &dir)(e)),
        }
    }

    /// Loads the record of container `id`.
    pub fn load(&self, id: &str) -> Result<ContainerRecord, StateError> {
        validate_id(id).map_err(|_| StateError::NotFound(id.to_string()))?;
        let path = self.container_dir(id).join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()));
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the record atomically.
    pub fn save(&self, record: &ContainerRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StateError::Corrupt {
            path: self.container_dir(&record.id).join(STATE_FILE),
            source,
        })?;
        write_atomic(&self.container_dir(&record.id).join(STATE_FILE), &bytes)
    }

    /// Keeps a copy of the container's config (exec defaults and poststop hooks need it after
    /// the engine may have removed the bundle).
    pub fn save_config(&self, id: &str, config: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.container_dir(id).join(CONFIG_FILE), config)
    }

    /// The config saved by [`RunRoot::save_config`].
    pub fn load_config(&self, id: &str) -> Result<oci_spec::runtime::Spec, StateError> {
        let path = self.container_dir(id).join(CONFIG_FILE);
        let text = fs::read(&path).map_err(io_err("reading", &path))?;
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Ids of every container directory, sorted (dot entries are not containers).
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &self.dir)(e)),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Lets the sandbox keep compiled seccomp programs under `.seccomp/` here (the run root is
    /// its owner's only, and on tmpfs by default, so the cache starts empty at boot).
    pub fn use_seccomp_cache(&self) {
        twinbox_sandbox::seccomp::set_cache_dir(Some(self.dir.join(".seccomp")));
    }

    /// Removes the container's directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.container_dir(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &dir)(e)),
            _ => Ok(()),
        }
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err("writing", path))
}

/// Writes a pid file atomically (runc's --pid-file format: the number, no newline).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), StateError> {
    write_atomic(path, pid.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            oci_version: "1.2.0".into(),
            id: id.into(),
            status: Status::Created,
            init: ProcessIdentity::of(std::process::id() as i32).unwrap(),
            creator: ProcessIdentity::default(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            annotations: BTreeMap::from([("k".into(), "v".into())]),
            created: rfc3339_now(),
            backend: BackendKind::Container,
            cgroup_path: Some("/twinbox/x".into()),
            owner: "root".into(),
            state_dir: format!("/run/twinbox/{id}").into(),
        }
    }

    #[test]
    fn records_round_trip_and_ids_are_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let root = RunRoot::new(Some(dir.path()));
        root.create_container_dir("c1").unwrap();
        assert!(matches!(
            root.create_container_dir("c1"),
            Err(StateError::Exists(_))
        ));
        let rec = record("c1");
        root.save(&rec).unwrap();
        let loaded = root.load("c1").unwrap();
        assert_eq!(loaded.init, rec.init);
        assert_eq!(root.ids().unwrap(), vec!["c1".to_string()]);
        let state = loaded.oci_state(Status::Running);
        assert_eq!(state["status"], "running");
        assert_eq!(state["pid"], rec.init.pid);
        assert_eq!(loaded.oci_state(Status::Stopped)["pid"], 0);
        root.remove("c1").unwrap();
        let err = root.load("c1").unwrap_err();
        assert_eq!(err.to_string(), "container \"c1\" does not exist");
    }

    #[test]
    fn ids_that_could_escape_the_root_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", ".names"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "a.b_c-d+e", "0123456789abcdef"] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn liveness_checks_start_time_and_zombies() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let identity = ProcessIdentity::of(child.id() as i32).unwrap();
        assert!(identity.is_alive());
        let reused = ProcessIdentity {
            start_time: identity.start_time + 1,
            ..identity
        };
        assert!(
            !reused.is_alive(),
            "a different start time means a reused pid"
        );
        child.kill().unwrap();
        // Until reaped the child is a zombie: already stopped.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!identity.is_alive());
        child.wait().unwrap();
        assert!(!identity.is_alive());
    }

    #[test]
    fn damaged_state_is_reported_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let root = RunRoot::new(Some(dir.path()));
        root.create_container_dir("bad").unwrap();
        fs::write(dir.path().join("bad/state.json"), "{not json").unwrap();
        let err = root.load("bad").unwrap_err().to_string();
        assert!(err.contains("delete --force"), "{err}");
    }
}
