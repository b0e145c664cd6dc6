//! Path operations confined to a root directory.
//!
//! Everything that touches an image's files (layer application, flattening, reading the
//! image's /etc/passwd) goes through [`Root`]: paths are resolved by the kernel with
//! `openat2(RESOLVE_IN_ROOT)`, so symlinks and `..` inside the tree are interpreted as if the
//! tree were `/`, and nothing outside it can be reached. The last component of a path is
//! never followed: callers create, remove and change it with `*at` calls on the parent fd.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmodat, fstatat, mkdirat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};

/// A directory tree that paths are resolved in, as if it were `/`.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// Normalizes a path found in an image (tar entry, hardlink target, config value) to a
/// relative path below the root: leading `/` and `.` components are dropped and `..` is
/// applied lexically. Returns `None` when `..` would climb above the root.
pub fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
        }
    }
    Some(out)
}

/// Splits a cleaned relative path into its parent and final name. `None` for the root
/// itself (the empty path).
pub fn split_parent(rel: &Path) -> Option<(&Path, &OsStr)> {
    Some((rel.parent()?, rel.file_name()?))
}

impl Root {
    /// Opens `path` (which must be a directory) as a root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory's host path (for messages and mounts, never for resolution).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn resolve(&self, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.fd.as_fd(), rel, how).map_err(|errno| {
            if errno == Errno::ENOSYS {
                io::Error::other(
                    "the kernel lacks openat2(2) (Linux 5.6 or newer is required for safe \
                     image unpacking)",
                )
            } else {
                errno.into()
            }
        })
    }

    /// Opens the directory at `rel`, following symlinks only inside the root.
    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.resolve(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
    }

    /// Opens the file at `rel` for reading, following symlinks only inside the root.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        Ok(File::from(self.resolve(rel, OFlag::O_RDONLY)?))
    }

    /// Opens the directory at `rel`, creating it and any missing parents with mode 0755.
    /// A symlink on the way whose target does not exist yet is followed (inside the root)
    /// and its target created, as `mkdir -p` does in a chroot.
    pub fn mkdir_all(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.mkdir_all_depth(rel, 0)
    }

    fn mkdir_all_depth(&self, rel: &Path, depth: u32) -> io::Result<OwnedFd> {
        if depth > MAX_SYMLINK_DEPTH {
            return Err(Errno::ELOOP.into());
        }
        match self.open_dir(rel) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let Some((parent, name)) = split_parent(rel) else {
            return self.open_dir(rel);
        };
        let parent_fd = self.mkdir_all_depth(parent, depth)?;
        match mkdirat(&parent_fd, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                if let Ok(target) = readlinkat(&parent_fd, name) {
                    // A dangling symlink: create what it points to, resolved in the root.
                    let target = Path::new(&target);
                    let base = if target.is_absolute() {
                        Path::new("")
                    } else {
                        parent
                    };
                    self.mkdir_all_depth(&clamp_relative(&base.join(target)), depth + 1)?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        // Re-resolve in the root: a concurrent or hostile symlink at `name` stays inside.
        self.open_dir(rel)
    }
}

/// How many symlinks [`Root::mkdir_all`] follows before giving up (as the kernel's ELOOP).
const MAX_SYMLINK_DEPTH: u32 = 40;

/// Like [`clean_relative`], but `..` at the root stays at the root (as path resolution in
/// a chroot does).
pub fn clamp_relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            _ => {}
        }
    }
    out
}

/// `fstatat` without following a final symlink; `None` when the entry does not exist.
pub fn lstat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// True when the stat describes a directory.
pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Opens directory `name` in `dir` without following a symlink.
pub fn open_dir_at(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Names in a directory, without `.` and `..`.
pub fn list_dir(dir: impl AsFd) -> io::Result<Vec<CString>> {
    let fd = nix::unistd::dup(dir.as_fd())?;
    let mut handle = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it. Symlinks are
/// removed, never followed. A missing entry is not an error.
pub fn remove_all_at(dir: impl AsFd, name: &OsStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir.as_fd(), name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let child = open_dir_at(dir.as_fd(), name)?;
        remove_children(&child)?;
        ignore_missing(unlinkat(dir, name, UnlinkatFlags::RemoveDir))
    } else {
        ignore_missing(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir))
    }
}

/// Removes everything inside directory `dir`, keeping `dir` itself.
pub fn remove_children(dir: &OwnedFd) -> io::Result<()> {
    for child in list_dir(dir)? {
        remove_all_at(dir, OsStr::from_bytes(child.to_bytes()))?;
    }
    Ok(())
}

fn ignore_missing(result: nix::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes a host directory tree if it exists. Mount points inside are not crossed
/// (`remove_dir_all` does not follow symlinks; the store never mounts inside the trees it
/// removes with this).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn c_string(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `/proc/self/fd/<dir>/<name>`: names entry `name` of `dir` for the `l*xattr` calls,
/// which resolve only the directory fd and never follow the final component.
fn proc_path(dir: &impl AsFd, name: &OsStr) -> io::Result<CString> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    c_string(path)
}

/// Turns an xattr call's return value into the byte count, or `None` for "not set /
/// not supported".
fn xattr_len(rc: isize) -> io::Result<Option<usize>> {
    if rc >= 0 {
        return Ok(Some(rc as usize));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
        _ => Err(err),
    }
}

/// Sets extended attribute `key` on entry `name` of `dir` without following a final symlink.
pub fn set_xattr_at(dir: impl AsFd, name: &OsStr, key: &str, value: &[u8]) -> io::Result<()> {
    let path = proc_path(&dir, name)?;
    let key = c_string(key)?;
    // SAFETY: path and key are valid NUL-terminated strings and value is a live slice of
    // value.len() bytes for the duration of the call.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a new regular file `name` in `dir` for writing (mode 0600 until the caller
/// sets metadata). Fails if anything exists at `name`; never follows a symlink there.
pub fn create_file_at(dir: impl AsFd, name: &OsStr) -> nix::Result<File> {
    openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map(File::from)
}

/// Reads extended attribute `key` of an open file or directory; `None` when it is not set.
pub fn get_xattr_fd(fd: impl AsFd, key: &str) -> io::Result<Option<Vec<u8>>> {
    let key = c_string(key)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: fd is a live descriptor, key is NUL-terminated and buf is writable for
    // buf.len() bytes.
    let rc = unsafe {
        libc::fgetxattr(
            fd.as_fd().as_raw_fd(),
            key.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    Ok(xattr_len(rc)?.map(|n| {
        buf.truncate(n);
        buf
    }))
}

/// The extended attributes (name, value) of entry `name` of `dir`, not following a final
/// symlink.
pub fn xattrs_at(dir: impl AsFd, name: &OsStr) -> io::Result<Vec<(String, Vec<u8>)>> {
    let path = proc_path(&dir, name)?;
    let mut names = vec![0u8; 65536];
    // SAFETY: path is NUL-terminated and names is writable for names.len() bytes.
    let rc = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let Some(len) = xattr_len(rc)? else {
        return Ok(Vec::new());
    };
    names.truncate(len);
    let mut out = Vec::new();
    for key in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let ckey = c_string(key)?;
        let mut value = vec![0u8; 65536];
        // SAFETY: path and ckey are NUL-terminated and value is writable for value.len() bytes.
        let rc = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                ckey.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if let Some(n) = xattr_len(rc)? {
            value.truncate(n);
            out.push((String::from_utf8_lossy(key).into_owned(), value));
        }
    }
    Ok(out)
}

/// The metadata of a file-system entry that layer application and copying carry over.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time.
    pub atime: TimeSpec,
    /// Modification time.
    pub mtime: TimeSpec,
    /// Extended attributes; `trusted.*` ones are never applied (overlayfs keeps its own
    /// metadata there, which an image must not be able to forge).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Applies `meta` to entry `name` of `dir` without following it: ownership (when
/// `privileged`), mode (not for symlinks), xattrs where the filesystem allows, and times
/// (when `set_times`). On failure returns the failed operation's name with the error.
pub fn apply_metadata_at(
    dir: &impl AsFd,
    name: &OsStr,
    meta: &Metadata,
    privileged: bool,
    is_symlink: bool,
    set_times: bool,
) -> Result<(), (&'static str, io::Error)> {
    if privileged {
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ("chown", e.into()))?;
    }
    if !is_symlink {
        // After chown, which clears setuid/setgid. The entry was just created by the
        // caller, so following is moot; fchmodat cannot refuse to follow on older kernels.
        fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(meta.mode & 0o7777),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| ("chmod", e.into()))?;
    }
    for (key, value) in &meta.xattrs {
        if key.starts_with("trusted.") {
            continue;
        }
        if let Err(e) = set_xattr_at(dir, name, key, value) {
            tracing::debug!(xattr = key, error = %e, "xattr not applied");
        }
    }
    if set_times {
        utimensat(
            dir,
            name,
            &meta.atime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| ("setting times", e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_keeps_paths_below_root() {
        assert_eq!(
            clean_relative(Path::new("/a/./b/../c")).unwrap(),
            Path::new("a/c")
        );
        assert_eq!(clean_relative(Path::new("./")).unwrap(), Path::new(""));
        assert!(clean_relative(Path::new("../etc/passwd")).is_none());
        assert!(clean_relative(Path::new("a/../../x")).is_none());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        std::os::unix::fs::symlink("../../..", dir.path().join("up")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        // An absolute symlink target is taken relative to the root: it does not exist there.
        assert!(root.open_dir(Path::new("escape")).is_err());
        // `..` chains stop at the root.
        root.mkdir_all(Path::new("up/made")).unwrap();
        assert!(dir.path().join("made").is_dir());
        assert!(!outside.path().join("made").exists());
        remove_all_at(root.fd(), OsStr::new("escape")).unwrap();
        assert!(outside.path().exists());
    }
}
