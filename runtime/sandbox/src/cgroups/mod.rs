//! cgroups v1 (legacy and hybrid layouts) and v2 (unified), chosen at run time from the host's
//! cgroup mounts: create a container's cgroup, apply `linux.resources`, move processes in,
//! freeze/thaw, kill everything inside, count OOM kills and remove it again.
//!
//! All file access is relative to the hierarchies' mount points, so tests run the same code
//! against a fake cgroupfs directory.

mod path;
mod resources;

pub use path::{CgroupsPath, resolve_cgroups_path};

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

/// Errors of cgroup management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading or writing a cgroup file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done ("writing memory.max=... to").
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// No cgroup filesystem is mounted.
    #[error(
        "no cgroup filesystem is mounted (looked for cgroup and cgroup2 in /proc/self/mountinfo); \
         mount cgroup2 on /sys/fs/cgroup or the v1 controllers under it"
    )]
    NotMounted,
    /// The config asks for a limit this host cannot enforce.
    #[error("{0}")]
    Unsupported(String),
    /// The cgroup still has processes after killing them.
    #[error("cgroup {0} still has processes after SIGKILL")]
    Busy(PathBuf),
}

fn io_err(action: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let action = action.into();
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// One mounted cgroup hierarchy and the container's path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Directory name under the cgroup root: "memory", "cpu,cpuacct", "systemd", "unified",
    /// or "" when the unified hierarchy is mounted at the root itself (pure v2).
    pub mount_name: String,
    /// The cgroup v1 mount data ("memory", "cpu,cpuacct", "name=systemd"); empty for the
    /// unified (v2) hierarchy.
    pub mount_options: String,
    /// Where the hierarchy is mounted on the host.
    pub host_mount: PathBuf,
    /// The container's cgroup path inside the hierarchy (absolute, e.g. "/twinbox/web").
    pub path: PathBuf,
}

impl Hierarchy {
    /// True for the cgroup v2 hierarchy.
    pub fn is_unified(&self) -> bool {
        self.mount_options.is_empty()
    }

    /// The container's cgroup directory on the host.
    pub fn container_dir(&self) -> PathBuf {
        self.host_mount
            .join(self.path.strip_prefix("/").unwrap_or(&self.path))
    }

    fn has_controller(&self, controller: &str) -> bool {
        self.mount_options.split(',').any(|c| c == controller)
    }
}

/// Which cgroup version governs resource limits on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Controllers are on v1 hierarchies (legacy or hybrid layout).
    V1,
    /// One unified v2 hierarchy holds the controllers.
    V2,
}

/// One container's cgroup across all hierarchies of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    version: CgroupVersion,
    hierarchies: Vec<Hierarchy>,
}

/// Controllers that twinbox manages on cgroup v1.
const V1_CONTROLLERS: [&str; 8] = [
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
];
/// Controllers twinbox enables for containers on cgroup v2.
const V2_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

impl Cgroup {
    /// The container cgroup at `path` on the hierarchies mounted on this host.
    pub fn discover(path: &Path) -> Result<Self, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
        Self::from_mountinfo(&mountinfo, path)
    }

    /// The container cgroup at `path` on the hierarchies listed in `mountinfo` (the text of
    /// /proc/self/mountinfo).
    pub fn from_mountinfo(mountinfo: &str, path: &Path) -> Result<Self, CgroupError> {
        let mut hierarchies = Vec::new();
        let mut unified = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).unwrap_or_default();
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let super_options = right.nth(1).unwrap_or_default();
            let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
            let mount_name = mount_point
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match fstype {
                "cgroup2" => {
                    unified = Some(Hierarchy {
                        mount_name,
                        mount_options: String::new(),
                        host_mount: mount_point,
                        path: path.to_path_buf(),
                    })
                }
                "cgroup" => {
                    let controllers: Vec<&str> = super_options
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o))
                        .collect();
                    if controllers.is_empty()
                        || hierarchies
                            .iter()
                            .any(|h: &Hierarchy| h.host_mount == mount_point)
                    {
                        continue;
                    }
                    hierarchies.push(Hierarchy {
                        mount_name,
                        mount_options: controllers.join(","),
                        host_mount: mount_point,
                        path: path.to_path_buf(),
                    });
                }
                _ => {}
            }
        }
        let version = if hierarchies.is_empty() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        if let Some(mut unified) = unified {
            if version == CgroupVersion::V2 {
                unified.mount_name = String::new();
            }
            // Hybrid hosts: the (controller-less) unified hierarchy is joined too, so that
            // /proc/self/cgroup in the container shows its own path there as well.
            hierarchies.push(unified);
        }
        if hierarchies.is_empty() {
            return Err(CgroupError::NotMounted);
        }
        Ok(Cgroup {
            version,
            hierarchies,
        })
    }

    /// A cgroup on explicitly given hierarchies (tests use a fake cgroupfs directory).
    pub fn with_hierarchies(version: CgroupVersion, hierarchies: Vec<Hierarchy>) -> Self {
        Cgroup {
            version,
            hierarchies,
        }
    }

    /// The cgroup version that governs limits.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The hierarchies this cgroup lives on.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    fn unified(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.is_unified())
    }

    /// The directory of the hierarchy that has `controller` (v1), or the unified one (v2).
    fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        match self.version {
            CgroupVersion::V2 => self.unified().map(Hierarchy::container_dir),
            CgroupVersion::V1 => self
                .hierarchies
                .iter()
                .find(|h| h.has_controller(controller))
                .map(Hierarchy::container_dir),
        }
    }

    /// Creates the cgroup directories (and parents), preparing cpuset (v1) or enabling the
    /// controllers in the parents' subtree_control (v2).
    pub fn create(&self) -> Result<(), CgroupError> {
        for hierarchy in &self.hierarchies {
            // A concurrent cleanup may remove an empty parent between two mkdirs: start over
            // (a few times) when a parent vanished.
            let mut attempts = 0;
            while !self.create_in(hierarchy)? {
                attempts += 1;
                if attempts == 3 {
                    return Err(io_err("creating", &hierarchy.container_dir())(
                        io::ErrorKind::NotFound.into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Creates the path in one hierarchy; false when a parent disappeared meanwhile.
    fn create_in(&self, hierarchy: &Hierarchy) -> Result<bool, CgroupError> {
        let mut dir = hierarchy.host_mount.clone();
        for part in hierarchy.path.components().skip(1) {
            if hierarchy.is_unified() && self.version == CgroupVersion::V2 {
                enable_controllers(&dir)?;
            }
            dir.push(part);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err("creating", &dir)(e)),
            }
            // Also when the directory already existed: a concurrent create may have made it
            // and not yet copied the parent's cpus/mems, and an empty cpuset refuses tasks
            // (ENOSPC). Copying is idempotent.
            if hierarchy.has_controller("cpuset") {
                init_cpuset(&dir)?;
            }
        }
        Ok(true)
    }

    /// Applies `linux.resources`.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        match self.version {
            CgroupVersion::V1 => resources::apply_v1(self, resources),
            CgroupVersion::V2 => resources::apply_v2(self, resources),
        }
    }

    /// Moves process `pid` (all its threads) into the cgroup on every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for hierarchy in &self.hierarchies {
            write(
                &hierarchy.container_dir().join("cgroup.procs"),
                &pid.to_string(),
            )?;
        }
        Ok(())
    }

    /// Opens what a new process needs to join this cgroup itself, cheaply: the v1 `tasks`
    /// files (a thread moving itself skips the kernel's global threadgroup lock, whose RCU
    /// grace period otherwise costs ~10 ms per container start) and the cgroup v2 directory
    /// for clone3(CLONE_INTO_CGROUP). Opened by the runtime, so the kernel checks the
    /// runtime's credentials even when the process writes from a user namespace.
    pub fn open_join(&self) -> Result<CgroupJoin, CgroupError> {
        let mut join = CgroupJoin {
            tasks: Vec::new(),
            unified: None,
        };
        for hierarchy in &self.hierarchies {
            let dir = hierarchy.container_dir();
            if hierarchy.is_unified() {
                let fd = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(&dir)
                    .map_err(io_err("opening", &dir))?;
                join.unified = Some(fd.into());
            } else {
                let tasks = dir.join("tasks");
                let file = fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&tasks)
                    .map_err(io_err("opening", &tasks))?;
                join.tasks.push(file);
            }
        }
        Ok(join)
    }

    /// Moves process `pid` into the cgroup v2 hierarchy only (fallback for kernels without
    /// clone3(CLONE_INTO_CGROUP)).
    pub fn add_process_unified(&self, pid: i32) -> Result<(), CgroupError> {
        match self.unified() {
            Some(unified) => write(
                &unified.container_dir().join("cgroup.procs"),
                &pid.to_string(),
            ),
            None => Ok(()),
        }
    }

    /// Host pids of every process in the cgroup.
    pub fn processes(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = self
            .controller_dir("pids")
            .or_else(|| self.controller_dir("freezer"))
            .unwrap_or_else(|| self.hierarchies[0].container_dir());
        let mut pids = Vec::new();
        collect_procs(&dir, &mut pids)?;
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Whether the cgroup directory still exists.
    pub fn exists(&self) -> bool {
        self.hierarchies.iter().any(|h| h.container_dir().is_dir())
    }

    fn freezer(&self) -> Result<Freezer, CgroupError> {
        match self.version {
            CgroupVersion::V1 => self
                .controller_dir("freezer")
                .map(Freezer::V1)
                .ok_or_else(|| {
                    CgroupError::Unsupported(
                        "pause needs the cgroup v1 freezer controller, which is not mounted".into(),
                    )
                }),
            CgroupVersion::V2 => Ok(Freezer::V2(
                self.unified()
                    .map(Hierarchy::container_dir)
                    .unwrap_or_default(),
            )),
        }
    }

    /// Freezes every process in the cgroup and waits until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.freezer()?.set(true)
    }

    /// Thaws the cgroup.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.freezer()?.set(false)
    }

    /// Whether the cgroup is frozen.
    pub fn is_frozen(&self) -> bool {
        self.freezer().map(|f| f.is_frozen()).unwrap_or(false)
    }

    /// Sends `signal` to every process in the cgroup. SIGKILL on v2 uses cgroup.kill; otherwise
    /// the cgroup is frozen while signalling so that no process forks away.
    pub fn signal_all(&self, signal: i32) -> Result<(), CgroupError> {
        if signal == libc::SIGKILL
            && let Some(unified) = self.unified().filter(|_| self.version == CgroupVersion::V2)
        {
            let kill = unified.container_dir().join("cgroup.kill");
            if kill.exists() {
                return write(&kill, "1");
            }
        }
        let frozen = self.freeze().is_ok();
        let result = self.processes().map(|pids| {
            for pid in pids {
                // SAFETY: kill(2) with plain integers; failures (already gone) are ignored.
                unsafe { libc::kill(pid, signal) };
            }
        });
        if frozen {
            self.thaw()?;
        }
        result
    }

    /// Kills everything in the cgroup and waits (up to `timeout`) until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !self.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.processes()?.is_empty() {
                return Ok(());
            }
            self.signal_all(libc::SIGKILL)?;
            if Instant::now() > deadline {
                return Err(CgroupError::Busy(self.hierarchies[0].container_dir()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// How many processes of this cgroup the kernel OOM-killed (None when not reported).
    pub fn oom_kills(&self) -> Option<u64> {
        let (file, key) = match self.version {
            CgroupVersion::V1 => (
                self.controller_dir("memory")?.join("memory.oom_control"),
                "oom_kill",
            ),
            CgroupVersion::V2 => (
                self.controller_dir("memory")?.join("memory.events"),
                "oom_kill",
            ),
        };
        read_key(&file, key)
    }

    /// Removes the cgroup directories (child cgroups first). Missing directories are fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for hierarchy in &self.hierarchies {
            remove_tree(&hierarchy.container_dir())?;
        }
        Ok(())
    }
}

/// Handles for a single-threaded process to move itself into a cgroup (see
/// [`Cgroup::open_join`]).
#[derive(Debug)]
pub struct CgroupJoin {
    tasks: Vec<fs::File>,
    unified: Option<std::os::fd::OwnedFd>,
}

impl CgroupJoin {
    /// The cgroup v2 directory, for clone3(CLONE_INTO_CGROUP).
    pub fn unified_dir(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.unified.as_ref().map(|fd| fd.as_fd())
    }

    /// Moves the calling thread (the whole process, when single-threaded) into every v1
    /// hierarchy by writing "0" to the `tasks` files.
    pub fn join_current_thread(&self) -> io::Result<()> {
        use std::io::Write;
        for mut file in &self.tasks {
            file.write_all(b"0")?;
        }
        Ok(())
    }
}

/// Reads "key value" from a flat-keyed cgroup file.
fn read_key(file: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(file).ok()?.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

enum Freezer {
    V1(PathBuf),
    V2(PathBuf),
}

impl Freezer {
    fn set(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value) = match self {
            Freezer::V1(dir) => (
                dir.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Freezer::V2(dir) => (dir.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            write(&file, value)?;
            if self.is_frozen() == frozen {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Unsupported(format!(
                    "the cgroup did not become {} within 5s ({})",
                    if frozen { "frozen" } else { "thawed" },
                    file.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn is_frozen(&self) -> bool {
        match self {
            Freezer::V1(dir) => fs::read_to_string(dir.join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false),
            Freezer::V2(dir) => read_key(&dir.join("cgroup.events"), "frozen") == Some(1),
        }
    }
}

fn collect_procs(dir: &Path, pids: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    match fs::read_to_string(&procs) {
        Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("reading", &procs)(e)),
    }
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_procs(&entry.path(), pids)?;
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    // The kernel may still be tearing down the last exited process: retry EBUSY briefly.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            // A fake cgroupfs (tests) holds plain files: remove them too.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && !is_cgroupfs(dir) => {
                fs::remove_dir_all(dir).map_err(io_err("removing", dir))?;
                return Ok(());
            }
            Err(e) => return Err(io_err("removing", dir)(e)),
        }
    }
}

fn is_cgroupfs(dir: &Path) -> bool {
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    nix::sys::statfs::statfs(dir)
        .map(|s| {
            let magic = s.filesystem_type().0;
            magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC
        })
        .unwrap_or(false)
}

/// Writes a cgroup control file.
fn write(file: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(file, value).map_err(io_err(format!("writing {value:?} to"), file))
}

/// v1 cpuset cgroups start with empty cpus/mems, which refuses tasks: copy the parent's.
fn init_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        let current = fs::read_to_string(&own).unwrap_or_default();
        if current.trim().is_empty() {
            let from_parent = fs::read_to_string(parent.join(file))
                .map_err(io_err("reading", &parent.join(file)))?;
            write(&own, from_parent.trim())?;
        }
    }
    Ok(())
}

/// Enables the container controllers that `dir` offers for its children (v2).
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let wanted: Vec<String> = available
        .split_whitespace()
        .filter(|c| V2_CONTROLLERS.contains(c) && !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &wanted.join(" "))
}

/// Undoes the octal escapes (\040 for space) of /proc/self/mountinfo fields.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(byte) => out.push(byte as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
