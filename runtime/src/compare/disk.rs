//! On-disk footprint: allocated blocks under directories, hard links counted once.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::CompareError;

/// Disk usage of some files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes of allocated blocks (what the files really take; sparse files count less).
    pub allocated_bytes: u64,
    /// Sum of file sizes.
    pub apparent_bytes: u64,
    /// Inodes counted (files, directories, links...).
    pub inodes: u64,
}

/// Measures directory trees, counting every inode once across all calls: measure the shared
/// image layers first, then each sandbox's writable layer, and files hard-linked from a layer
/// into a sandbox are charged to the layer only. Like `du -x`, a tree is not followed into
/// other filesystems mounted inside it (a running sandbox's `/proc`, say), nor through
/// symlinks.
#[derive(Debug, Default)]
pub struct DiskCounter {
    seen: HashSet<(u64, u64)>,
}

impl DiskCounter {
    /// A counter that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Usage of the inodes under `root` (itself included) that this counter has not seen.
    pub fn measure(&mut self, root: &Path) -> Result<DiskUsage, CompareError> {
        let read_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CompareError::Read { path, source }
        };
        let top = std::fs::symlink_metadata(root).map_err(read_error(root))?;
        let device = top.dev();
        let mut usage = DiskUsage::default();
        let mut pending = vec![(root.to_path_buf(), top)];
        while let Some((path, meta)) = pending.pop() {
            if self.seen.insert((meta.dev(), meta.ino())) {
                usage.allocated_bytes += meta.blocks() * 512;
                usage.apparent_bytes += meta.size();
                usage.inodes += 1;
            }
            if !meta.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&path).map_err(read_error(&path))? {
                let entry = entry.map_err(read_error(&path))?;
                let child = entry.path();
                let child_meta = std::fs::symlink_metadata(&child).map_err(read_error(&child))?;
                if child_meta.dev() == device {
                    pending.push((child, child_meta));
                }
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once_and_sparse_files_count_their_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("layer");
        let sandbox = dir.path().join("upper");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::write(shared.join("lib"), vec![7u8; 64 * 1024]).unwrap();
        std::fs::hard_link(shared.join("lib"), sandbox.join("lib-link")).unwrap();
        std::fs::write(sandbox.join("own"), vec![1u8; 16 * 1024]).unwrap();
        let sparse = std::fs::File::create(sandbox.join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();

        let mut counter = DiskCounter::new();
        let layer = counter.measure(&shared).unwrap();
        let upper = counter.measure(&sandbox).unwrap();
        assert!(layer.allocated_bytes >= 64 * 1024);
        assert_eq!(layer.inodes, 2);
        // The link is charged to the layer; the upper dir holds itself, `own` and `sparse`.
        assert_eq!(upper.inodes, 3);
        assert!(upper.apparent_bytes >= (1 << 30) + 16 * 1024);
        assert!(upper.allocated_bytes < 1 << 20, "{upper:?}");
        assert!(upper.allocated_bytes >= 16 * 1024);
        // Measuring again finds nothing new.
        assert_eq!(counter.measure(&sandbox).unwrap().inodes, 0);
        let missing = DiskCounter::new()
            .measure(&dir.path().join("absent"))
            .unwrap_err();
        assert!(missing.to_string().contains("absent"), "{missing}");
    }
}
