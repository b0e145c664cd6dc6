//! Host memory of a sandbox: PSS and USS of its host processes from `smaps_rollup`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::CompareError;

/// Memory of a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Proportional set size: private pages plus each shared page divided by its sharers.
    /// Summing PSS over sandboxes never counts a shared page twice.
    pub pss_bytes: u64,
    /// Unique set size: pages only these processes map (private clean + dirty + hugetlb):
    /// what stopping the sandbox would free.
    pub uss_bytes: u64,
    /// Resident set size, for reference (counts shared pages in full).
    pub rss_bytes: u64,
    /// How many processes were measured.
    pub processes: usize,
}

/// Parses a `smaps_rollup` text into one process's usage.
pub fn parse_smaps_rollup(text: &str) -> MemoryUsage {
    let mut kib: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            kib.insert(key.trim(), value);
        }
    }
    let get = |key: &str| kib.get(key).copied().unwrap_or(0) * 1024;
    MemoryUsage {
        pss_bytes: get("Pss"),
        uss_bytes: get("Private_Clean") + get("Private_Dirty") + get("Private_Hugetlb"),
        rss_bytes: get("Rss"),
        processes: 1,
    }
}

/// Sums the memory of `pids` (a process that exited meanwhile is an error: measure idle
/// sandboxes). Kernel threads and zombies, which have no address space, count as zero.
pub fn memory_usage(pids: &[u32]) -> Result<MemoryUsage, CompareError> {
    pids.iter().try_fold(MemoryUsage::default(), |total, pid| {
        let path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // A process without an address space (a kernel thread in the sandbox's cgroup, as
            // KVM's per-VM workers on some kernels, or a zombie) has no memory of its own.
            Err(source)
                if source.raw_os_error() == Some(libc::ESRCH)
                    && Path::new(&format!("/proc/{pid}/stat")).exists() =>
            {
                String::new()
            }
            Err(source) => return Err(CompareError::Read { path, source }),
        };
        let one = parse_smaps_rollup(&text);
        Ok(MemoryUsage {
            pss_bytes: total.pss_bytes + one.pss_bytes,
            uss_bytes: total.uss_bytes + one.uss_bytes,
            rss_bytes: total.rss_bytes + one.rss_bytes,
            processes: total.processes + 1,
        })
    })
}

/// `root` and all its descendants (from the parent pids in `/proc/*/stat`), sorted.
pub fn process_tree(root: u32) -> Result<Vec<u32>, CompareError> {
    let entries = std::fs::read_dir("/proc").map_err(|source| CompareError::Read {
        path: "/proc".into(),
        source,
    })?;
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in entries.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A process may exit while we look: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let parent = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut tree = BTreeSet::from([root]);
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if tree.insert(child) {
                pending.push(child);
            }
        }
    }
    Ok(tree.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rollup_fields() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  4000 kB\nPss:  1500 kB\n\
                    Private_Clean: 100 kB\nPrivate_Dirty: 900 kB\nPrivate_Hugetlb: 0 kB\n";
        let usage = parse_smaps_rollup(text);
        assert_eq!(usage.pss_bytes, 1500 * 1024);
        assert_eq!(usage.uss_bytes, 1000 * 1024);
        assert_eq!(usage.rss_bytes, 4000 * 1024);
    }

    #[test]
    fn measures_a_child_tree_that_touched_memory() {
        // A shell waiting for its sleeping child: a two-process tree.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let guard = KillOnDrop(&mut child);
        let root = guard.0.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let tree = loop {
            let tree = process_tree(root).unwrap();
            if tree.len() == 2 || std::time::Instant::now() > deadline {
                break tree;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(tree.len(), 2, "the shell's sleep never appeared: {tree:?}");
        assert_eq!(tree[0], root);
        let usage = memory_usage(&tree).unwrap();
        assert_eq!(usage.processes, 2);
        assert!(usage.pss_bytes > 0 && usage.uss_bytes > 0);
        assert!(usage.uss_bytes <= usage.pss_bytes && usage.pss_bytes <= usage.rss_bytes);
        let gone = memory_usage(&[u32::MAX - 1]).unwrap_err();
        assert!(gone.to_string().contains("smaps_rollup"), "{gone}");
    }

    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            // Kill the whole tree: the shell and its sleep.
            if let Ok(tree) = process_tree(self.0.id()) {
                for pid in tree.into_iter().rev() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = self.0.wait();
        }
    }
}
