//! Copying stacked layer directories (overlayfs form) into one plain directory: what
//! overlayfs would show, as real files. Used for OCI bundles (`twinbox bundle`) and as the
//! root filesystem fallback where overlayfs cannot be mounted.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Uid, linkat, symlinkat};

use super::fsutil::{self, Root};
use super::unpack::OVERLAY_OPAQUE_XATTR;

/// Copies `layers` (bottom first) into `target`, applying overlay whiteouts and opaque
/// directories. `target` must exist; it is normally empty.
pub fn flatten(layers: &[PathBuf], target: &Path) -> io::Result<()> {
    let dst = Root::open(target)?;
    let dst_fd = dst.open_dir(Path::new(""))?;
    for layer in layers {
        let src = Root::open(layer)?;
        let src_fd = src.open_dir(Path::new(""))?;
        let mut copier = Copier {
            target: &dst,
            links: HashMap::new(),
            privileged: Uid::effective().is_root(),
        };
        copier.merge_dir(&src_fd, &dst_fd, Path::new(""))?;
        let st = nix::sys::stat::fstat(&src_fd)?;
        copier.copy_meta(&src_fd, OsStr::new("."), &dst_fd, OsStr::new("."), &st)?;
    }
    Ok(())
}

struct Copier<'a> {
    target: &'a Root,
    /// Inodes copied from this layer (for hardlinks): (dev, ino) -> path in the target.
    links: HashMap<(u64, u64), PathBuf>,
    privileged: bool,
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn with_path(path: &Path, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(
        e.kind(),
        format!("{}: {e}", Path::new("/").join(path).display()),
    )
}

impl Copier<'_> {
    fn merge_dir(&mut self, src: &OwnedFd, dst: &OwnedFd, rel: &Path) -> io::Result<()> {
        for name in fsutil::list_dir(src)? {
            let name = OsStr::from_bytes(name.to_bytes());
            let path = rel.join(name);
            let st = fsutil::lstat_at(src, name)?
                .ok_or_else(|| with_path(&path, io::ErrorKind::NotFound))?;
            let kind = file_type(&st);
            let existing = fsutil::lstat_at(dst, name)?;
            if kind == SFlag::S_IFCHR && st.st_rdev == 0 {
                // An overlay whiteout: hide what lower layers had.
                fsutil::remove_all_at(dst, name).map_err(|e| with_path(&path, e))?;
                continue;
            }
            if kind == SFlag::S_IFDIR {
                match &existing {
                    Some(e) if fsutil::is_dir(e) => {}
                    Some(_) => {
                        fsutil::remove_all_at(dst, name)?;
                        mkdirat(dst, name, Mode::from_bits_truncate(0o700))
                            .map_err(|e| with_path(&path, e))?;
                    }
                    None => mkdirat(dst, name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| with_path(&path, e))?,
                }
                let src_child = fsutil::open_dir_at(src, name)?;
                let dst_child = fsutil::open_dir_at(dst, name)?;
                if fsutil::get_xattr_fd(&src_child, OVERLAY_OPAQUE_XATTR)?.as_deref() == Some(b"y")
                {
                    fsutil::remove_children(&dst_child)?;
                }
                self.merge_dir(&src_child, &dst_child, &path)?;
                self.copy_meta(src, name, dst, name, &st)?;
                continue;
            }
            if existing.is_some() {
                fsutil::remove_all_at(dst, name)?;
            }
            if st.st_nlink > 1 {
                let key = (st.st_dev, st.st_ino);
                if let Some(first) = self.links.get(&key) {
                    let (first_parent, first_name) = fsutil::split_parent(first)
                        .ok_or_else(|| with_path(&path, io::ErrorKind::InvalidData))?;
                    // The first copy lives in the target tree; link to it without following.
                    let first_dir = self.target.open_dir(first_parent)?;
                    linkat(&first_dir, first_name, dst, name, AtFlags::empty())
                        .map_err(|e| with_path(&path, e))?;
                    continue;
                }
                self.links.insert(key, path.clone());
            }
            match kind {
                SFlag::S_IFREG => {
                    let mut from = File::from(openat(
                        src,
                        name,
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )?);
                    let mut to =
                        fsutil::create_file_at(dst, name).map_err(|e| with_path(&path, e))?;
                    io::copy(&mut from, &mut to).map_err(|e| with_path(&path, e))?;
                }
                SFlag::S_IFLNK => {
                    let target = readlinkat(src, name)?;
                    symlinkat(target.as_os_str(), dst, name).map_err(|e| with_path(&path, e))?;
                }
                SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO | SFlag::S_IFSOCK => {
                    if !self.privileged && kind != SFlag::S_IFIFO {
                        continue;
                    }
                    mknodat(dst, name, kind, Mode::from_bits_truncate(0o600), st.st_rdev)
                        .map_err(|e| with_path(&path, e))?;
                }
                _ => continue,
            }
            self.copy_meta(src, name, dst, name, &st)?;
        }
        Ok(())
    }

    /// Ownership, mode, xattrs (not overlay's own) and times from `src/name` to `dst/name`.
    fn copy_meta(
        &self,
        src: &impl AsFd,
        src_name: &OsStr,
        dst: &impl AsFd,
        dst_name: &OsStr,
        st: &FileStat,
    ) -> io::Result<()> {
        let meta = fsutil::Metadata {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: TimeSpec::new(st.st_atime, st.st_atime_nsec),
            mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
            xattrs: fsutil::xattrs_at(src, src_name)?,
        };
        fsutil::apply_metadata_at(
            dst,
            dst_name,
            &meta,
            self.privileged,
            file_type(st) == SFlag::S_IFLNK,
            true,
        )
        .map_err(|(op, e)| io::Error::new(e.kind(), format!("{op}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::image::unpack::{WhiteoutMode, apply_layer};

    fn layer(dir: &Path, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        std::fs::create_dir(dir).unwrap();
        apply_layer(
            &builder.into_inner().unwrap()[..],
            dir,
            WhiteoutMode::Overlay,
        )
        .unwrap();
        dir.to_path_buf()
    }

    fn add(
        builder: &mut tar::Builder<Vec<u8>>,
        path: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
    ) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o750
        } else {
            0o640
        });
        header.set_size(data.len() as u64);
        header.set_mtime(1_500_000_000);
        match link {
            Some(link) => builder.append_link(&mut header, path, link).unwrap(),
            None => builder.append_data(&mut header, path, data).unwrap(),
        }
    }

    #[test]
    fn layers_flatten_to_what_overlayfs_shows() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let work = tempfile::tempdir().unwrap();
        let lower = layer(&work.path().join("lower"), |b| {
            add(b, "dir", Directory, b"", None);
            add(b, "dir/old", Regular, b"old", None);
            add(b, "gone", Regular, b"gone", None);
            add(b, "was-file", Regular, b"f", None);
        });
        let upper = layer(&work.path().join("upper"), |b| {
            add(b, "dir", Directory, b"", None);
            add(b, "dir/.wh..wh..opq", Regular, b"", None);
            add(b, "dir/new", Regular, b"new", None);
            add(b, ".wh.gone", Regular, b"", None);
            add(b, "was-file", Directory, b"", None);
            add(b, "a", Regular, b"shared", None);
            add(b, "b", Link, b"", Some("a"));
            add(b, "s", Symlink, b"", Some("a"));
        });
        let target = work.path().join("flat");
        std::fs::create_dir(&target).unwrap();
        flatten(&[lower, upper], &target).unwrap();

        let mut names: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "dir", "s", "was-file"]);
        assert_eq!(
            std::fs::read_dir(target.join("dir")).unwrap().count(),
            1,
            "opaque dir hides old"
        );
        assert_eq!(std::fs::read(target.join("dir/new")).unwrap(), b"new");
        assert!(target.join("was-file").is_dir());
        let (a, b) = (
            std::fs::metadata(target.join("a")).unwrap(),
            std::fs::metadata(target.join("b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "hardlinks stay linked");
        assert_eq!(a.permissions().mode() & 0o7777, 0o640);
        assert_eq!(a.mtime(), 1_500_000_000);
        assert_eq!(
            std::fs::read_link(target.join("s")).unwrap(),
            Path::new("a")
        );
        assert_eq!(
            std::fs::metadata(target.join("dir")).unwrap().mtime(),
            1_500_000_000
        );
    }
}
