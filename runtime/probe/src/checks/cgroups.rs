//! Cgroup limits (v1 and v2) and the optional allocation test.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::errno::errno_name;
use crate::observations::{AllocationOutcome, AllocationTest, CgroupFile, CgroupLimit, MountEntry};

/// The most the allocation test will touch, whatever it is asked: the test must never be a
/// danger to a host that enforces no limit.
pub const MAX_ALLOCATION_TEST_MIB: u64 = 4096;

/// v1 limits at or above this are the "unlimited" sentinel (`PAGE_COUNTER_MAX` pages).
const V1_UNLIMITED: u64 = 1 << 62;

/// One kind of cgroup limit and the files that hold it.
#[derive(Debug, Clone, Copy)]
pub struct Controller {
    /// The v1 controller name, as in `/proc/self/cgroup` and the mount's super options.
    pub v1_name: &'static str,
    /// The limit file in a v1 hierarchy.
    pub v1_file: &'static str,
    /// The limit file in the v2 hierarchy.
    pub v2_file: &'static str,
}

/// The memory limit (bytes).
pub const MEMORY: Controller = Controller {
    v1_name: "memory",
    v1_file: "memory.limit_in_bytes",
    v2_file: "memory.max",
};

/// The pids limit (tasks).
pub const PIDS: Controller = Controller {
    v1_name: "pids",
    v1_file: "pids.max",
    v2_file: "pids.max",
};

/// The probe's cgroup paths from `/proc/self/cgroup`: (v1 path of `controller`, v2 path).
fn own_cgroups(text: &str, controller: &Controller) -> (Option<String>, Option<String>) {
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == controller.v1_name) {
            v1 = Some(path.to_string());
        }
    }
    (v1, v2)
}

/// The directory of cgroup `path` under a mount of its hierarchy whose root is `mount.root`.
fn cgroup_dir(mount: &MountEntry, path: &str) -> PathBuf {
    let root = mount.root.trim_end_matches('/');
    let relative = path
        .strip_prefix(root)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    // Not below the mount's root (a cgroup namespace shows paths from its own root): the
    // mount point is the best view of our cgroup there is.
    let relative = relative.unwrap_or("").trim_start_matches('/');
    Path::new(&mount.mount_point).join(relative)
}

/// The numeric limit of a limit file's content; `None` for "max" and the v1 sentinel.
fn parse_limit(value: &str) -> Option<u64> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&limit| limit < V1_UNLIMITED)
}

/// The tightest `controller` limit on the probe's cgroup and its ancestors, in every
/// hierarchy mounted in `mounts`.
pub fn limit(mounts: &[MountEntry], controller: Controller) -> Result<CgroupLimit, String> {
    let text = super::read_trimmed("/proc/self/cgroup")?;
    let (v1_path, v2_path) = own_cgroups(&text, &controller);
    let mut files = Vec::new();
    for mount in mounts {
        let (path, file) = match mount.fstype.as_str() {
            "cgroup"
                if mount
                    .super_options
                    .split(',')
                    .any(|o| o == controller.v1_name) =>
            {
                (v1_path.as_deref(), controller.v1_file)
            }
            "cgroup2" => (v2_path.as_deref(), controller.v2_file),
            _ => continue,
        };
        let Some(path) = path else { continue };
        let top = Path::new(&mount.mount_point);
        let mut dir = cgroup_dir(mount, path);
        loop {
            let limit_file = dir.join(file);
            if let Ok(value) = std::fs::read_to_string(&limit_file) {
                files.push(CgroupFile {
                    path: limit_file.to_string_lossy().into_owned(),
                    value: value.trim().to_string(),
                });
            }
            if dir == top || !dir.pop() {
                break;
            }
        }
    }
    Ok(CgroupLimit {
        limit: files.iter().filter_map(|f| parse_limit(&f.value)).min(),
        files,
    })
}

/// The allocation the test makes when asked for `mib` MiB.
pub fn capped_allocation_mib(mib: u64) -> u64 {
    mib.min(MAX_ALLOCATION_TEST_MIB)
}

/// Touches `mib` MiB (capped at [`MAX_ALLOCATION_TEST_MIB`]) in a child process and reports
/// whether a limit stopped it. Only the child can be OOM-killed; the probe survives.
pub fn allocation_test(mib: u64) -> AllocationTest {
    let requested_mib = capped_allocation_mib(mib);
    let bytes = (requested_mib << 20) as usize;
    let started = Instant::now();
    // SAFETY: the child only uses mmap, memory writes into its own mapping and _exit.
    let outcome = match unsafe { libc::fork() } {
        -1 => AllocationOutcome::Error {
            message: format!("fork: {}", crate::errno::last_errno_name()),
        },
        0 => {
            // SAFETY: an anonymous private mapping of `bytes`, written only within bounds,
            // in the forked child that never returns.
            unsafe {
                let memory = libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
                if memory == libc::MAP_FAILED {
                    libc::_exit(*libc::__errno_location());
                }
                let base = memory.cast::<u8>();
                for offset in (0..bytes).step_by(4096) {
                    base.add(offset).write_volatile(1);
                }
                libc::_exit(0)
            }
        }
        child => {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is writable.
            let waited = unsafe { libc::waitpid(child, &mut status, 0) };
            if waited != child {
                AllocationOutcome::Error {
                    message: format!("waitpid: {}", crate::errno::last_errno_name()),
                }
            } else if libc::WIFSIGNALED(status) {
                AllocationOutcome::Killed {
                    signal: libc::WTERMSIG(status),
                }
            } else if libc::WEXITSTATUS(status) == 0 {
                AllocationOutcome::Completed
            } else {
                AllocationOutcome::Refused {
                    errno: errno_name(libc::WEXITSTATUS(status)),
                }
            }
        }
    };
    AllocationTest {
        requested_mib,
        outcome,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(fstype: &str, root: &str, mount_point: &str, super_options: &str) -> MountEntry {
        MountEntry {
            mount_point: mount_point.into(),
            root: root.into(),
            fstype: fstype.into(),
            source: "cgroup".into(),
            options: "rw".into(),
            super_options: super_options.into(),
        }
    }

    #[test]
    fn finds_own_cgroup_paths_and_dirs() {
        let text = "4:memory:/box/a\n8:pids,cpu:/box/b\n0::/user.slice\n";
        assert_eq!(
            own_cgroups(text, &MEMORY),
            (Some("/box/a".into()), Some("/user.slice".into()))
        );
        assert_eq!(own_cgroups(text, &PIDS).0.as_deref(), Some("/box/b"));
        // runc bind-mounts the container's own cgroup: root = its path.
        let bound = mount("cgroup", "/box/a", "/sys/fs/cgroup/memory", "rw,memory");
        assert_eq!(
            cgroup_dir(&bound, "/box/a"),
            Path::new("/sys/fs/cgroup/memory")
        );
        let whole = mount("cgroup", "/", "/sys/fs/cgroup/memory", "rw,memory");
        assert_eq!(
            cgroup_dir(&whole, "/box/a"),
            Path::new("/sys/fs/cgroup/memory/box/a")
        );
        let unrelated = mount("cgroup", "/other", "/sys/fs/cgroup/memory", "rw,memory");
        assert_eq!(
            cgroup_dir(&unrelated, "/box"),
            Path::new("/sys/fs/cgroup/memory")
        );
    }

    #[test]
    fn parses_limits_and_sentinels() {
        assert_eq!(parse_limit("67108864"), Some(64 << 20));
        assert_eq!(parse_limit("max"), None);
        assert_eq!(parse_limit("9223372036854771712"), None);
    }

    #[test]
    fn small_allocation_completes_in_a_child() {
        let test = allocation_test(8);
        assert_eq!(test.outcome, AllocationOutcome::Completed);
        assert_eq!(test.requested_mib, 8);
        assert_eq!(capped_allocation_mib(1 << 20), MAX_ALLOCATION_TEST_MIB);
    }
}
