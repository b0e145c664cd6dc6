//! What the workload changed on a volume: a snapshot of every entry's identity when the
//! volume is mounted, and at the end an OCI layer (tar) of what is new or changed plus
//! `.wh.<name>` whiteouts for what is gone, for the host to apply to the volume's directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What identifies an entry's state: a new inode, or any change of content or metadata
/// (which updates ctime), makes it different.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// The entries of a volume at one moment (paths relative to its root).
#[derive(Debug, Clone)]
pub struct Snapshot {
    root: PathBuf,
    entries: BTreeMap<PathBuf, Stamp>,
}

/// Calls `visit` for every entry under `root` (parents first), not crossing into other
/// filesystems.
fn walk(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &std::fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let device = std::fs::symlink_metadata(root)?.dev();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let mut names: Vec<_> = std::fs::read_dir(root.join(&dir))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let relative = dir.join(&name);
            let meta = std::fs::symlink_metadata(root.join(&relative))?;
            if meta.dev() != device {
                continue;
            }
            visit(&relative, &meta)?;
            if meta.is_dir() {
                pending.push(relative);
            }
        }
    }
    Ok(())
}

impl Snapshot {
    /// Records every entry under `root`.
    pub fn take(root: &Path) -> io::Result<Self> {
        let mut entries = BTreeMap::new();
        walk(root, &mut |path, meta| {
            entries.insert(path.to_path_buf(), Stamp::of(meta));
            Ok(())
        })?;
        Ok(Snapshot {
            root: root.to_path_buf(),
            entries,
        })
    }

    /// Writes the changes since the snapshot as a tar stream (an OCI layer) to `out`.
    /// Returns the number of entries written.
    pub fn write_changes(&self, out: impl Write) -> io::Result<u64> {
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        let mut seen = BTreeSet::new();
        let mut count = 0;
        walk(&self.root, &mut |path, meta| {
            seen.insert(path.to_path_buf());
            // Device nodes never go back to a host directory.
            let device = meta.file_type().is_char_device() || meta.file_type().is_block_device();
            if !device && self.entries.get(path) != Some(&Stamp::of(meta)) {
                builder.append_path_with_name(self.root.join(path), path)?;
                count += 1;
            }
            Ok(())
        })?;
        // Whiteouts for deleted entries, only for the topmost of a deleted tree.
        let mut deleted: Vec<&PathBuf> = self
            .entries
            .keys()
            .filter(|path| !seen.contains(*path))
            .collect();
        deleted.sort();
        let mut last_whiteout: Option<&PathBuf> = None;
        for path in deleted {
            if last_whiteout.is_some_and(|top| path.starts_with(top)) {
                continue;
            }
            let name = path
                .file_name()
                .map(|n| format!(".wh.{}", n.to_string_lossy()))
                .unwrap_or_default();
            let whiteout = path.parent().unwrap_or(Path::new("")).join(name);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(0);
            header.set_mode(0o600);
            builder.append_data(&mut header, whiteout, io::empty())?;
            last_whiteout = Some(path);
            count += 1;
        }
        builder.into_inner()?.flush()?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
        let mut out = Vec::new();
        let mut archive = tar::Archive::new(archive);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            out.push((
                entry.path().unwrap().display().to_string(),
                entry.header().entry_type(),
                data,
            ));
        }
        out
    }

    #[test]
    fn changes_hold_new_and_modified_entries_and_whiteouts_for_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("keep")).unwrap();
        std::fs::write(root.join("keep/same"), "unchanged").unwrap();
        std::fs::write(root.join("edit"), "old").unwrap();
        std::fs::create_dir_all(root.join("gone/deep")).unwrap();
        std::fs::write(root.join("gone/deep/file"), "x").unwrap();
        std::fs::write(root.join("removed"), "x").unwrap();
        let snapshot = Snapshot::take(root).unwrap();

        // ctime has nanosecond resolution on tmpfs and ext4; make the edit unmistakable.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(root.join("edit"), "new content").unwrap();
        std::fs::write(root.join("keep/added"), "fresh").unwrap();
        std::os::unix::fs::symlink("keep/added", root.join("link")).unwrap();
        std::fs::remove_dir_all(root.join("gone")).unwrap();
        std::fs::remove_file(root.join("removed")).unwrap();

        let mut archive = Vec::new();
        let count = snapshot.write_changes(&mut archive).unwrap();
        let found = entries(&archive);
        assert_eq!(count as usize, found.len());
        let names: Vec<&str> = found.iter().map(|(name, _, _)| name.as_str()).collect();
        assert!(names.contains(&"edit"), "{names:?}");
        assert!(names.contains(&"keep/added"), "{names:?}");
        assert!(
            names.contains(&"keep"),
            "the directory's new entry changes it: {names:?}"
        );
        assert!(names.contains(&"link"), "{names:?}");
        assert!(names.contains(&".wh.gone"), "{names:?}");
        assert!(names.contains(&".wh.removed"), "{names:?}");
        assert!(!names.contains(&"keep/same"), "{names:?}");
        assert!(
            !names.iter().any(|n| n.contains("deep")),
            "only the top of a deleted tree: {names:?}"
        );
        let edit = found.iter().find(|(n, _, _)| n == "edit").unwrap();
        assert_eq!(edit.2, b"new content");
        let link = found.iter().find(|(n, _, _)| n == "link").unwrap();
        assert_eq!(link.1, tar::EntryType::Symlink);
    }

    #[test]
    fn an_untouched_volume_has_no_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "a").unwrap();
        let snapshot = Snapshot::take(dir.path()).unwrap();
        let mut archive = Vec::new();
        assert_eq!(snapshot.write_changes(&mut archive).unwrap(), 0);
    }
}
