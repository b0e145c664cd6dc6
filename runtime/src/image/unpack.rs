//! Applying a layer tarball to a directory, safely against hostile archives.
//!
//! Every entry's parent directory is resolved with [`Root`] (`openat2(RESOLVE_IN_ROOT)`),
//! and the entry itself is created with `*at` calls that never follow its final component:
//! an existing entry of the same name is removed first and files are created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`. So `..`, absolute paths, symlinks planted earlier (in this
//! layer or a lower one), hardlinks to outside and duplicate entries cannot write, create or
//! change anything outside the target directory.

use std::collections::HashSet;
use std::ffi::OsStr;

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag, makedev, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Uid, linkat, symlinkat};
use tar::EntryType;

use super::fsutil::{self, Metadata, Root, clean_relative, split_parent};

/// The overlayfs xattr that marks a directory as opaque (hides lower layers' contents).
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// What to do with whiteout entries (`.wh.NAME`, `.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// The target holds this layer alone, to be stacked with overlayfs: whiteouts become
    /// overlayfs whiteouts (0:0 character devices) and opaque directories get the
    /// `trusted.overlay.opaque=y` xattr.
    Overlay,
    /// The target already holds the lower layers: whiteouts delete what they name.
    Apply,
}

/// A layer entry that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream itself is broken (truncated, corrupt header, decompression error).
    #[error("reading the layer archive: {0} (the layer is corrupt or truncated)")]
    Archive(#[source] io::Error),
    /// An entry names a path above the layer root.
    #[error("layer entry {0:?} points outside the image root; the layer is malformed or hostile")]
    EscapesRoot(PathBuf),
    /// A hardlink entry whose target is not in the layer tree.
    #[error("layer entry {entry:?} is a hardlink to {target:?}, which is not in the image")]
    BadHardlink {
        /// The link's path.
        entry: PathBuf,
        /// What it links to.
        target: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("layer entry {entry:?}: {op} failed: {source}")]
    Io {
        /// The entry being applied.
        entry: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Counts of what a layer held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied (files, dirs, links, devices, whiteouts).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Applies the (uncompressed) tar stream `layer` to directory `target`.
///
/// Ownership and device nodes are applied when running as root; otherwise files get the
/// caller's ownership and device nodes are skipped (rootless unpacking). Extended
/// attributes are applied where the filesystem allows, except `trusted.*` ones, which an
/// image could otherwise use to forge overlayfs metadata.
pub fn apply_layer<R: Read>(
    layer: R,
    target: &Path,
    mode: WhiteoutMode,
) -> Result<UnpackStats, UnpackError> {
    let root = Root::open(target).map_err(|source| UnpackError::Io {
        entry: PathBuf::from("/"),
        op: "opening the target directory",
        source,
    })?;
    let mut applier = Applier {
        root,
        mode,
        privileged: Uid::effective().is_root(),
        seen: HashSet::new(),
        dir_times: Vec::new(),
        parent_cache: None,
        stats: UnpackStats::default(),
    };
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        applier.apply_entry(&mut entry)?;
    }
    applier.finish()?;
    Ok(applier.stats)
}

struct Applier {
    root: Root,
    mode: WhiteoutMode,
    privileged: bool,
    /// Paths created by this layer: whiteouts only hide lower layers' entries.
    seen: HashSet<PathBuf>,
    /// Directory mtimes, set at the end (creating children changes them).
    dir_times: Vec<(PathBuf, TimeSpec)>,
    /// The last parent directory opened (tar streams list a directory's entries together).
    parent_cache: Option<(PathBuf, OwnedFd)>,
    stats: UnpackStats,
}

/// What kind of node metadata is applied to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    Symlink,
    Other,
}

fn io_err<'a>(entry: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        entry: entry.to_path_buf(),
        op,
        source,
    }
}

fn nix_err<'a>(entry: &'a Path, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |errno| UnpackError::Io {
        entry: entry.to_path_buf(),
        op,
        source: errno.into(),
    }
}

/// An entry's metadata: the ustar header with PAX records applied over it.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Metadata, UnpackError> {
    let header = entry.header();
    let mtime = TimeSpec::new(header.mtime().map_err(UnpackError::Archive)? as i64, 0);
    let mut meta = Metadata {
        mode: header.mode().map_err(UnpackError::Archive)? & 0o7777,
        uid: header.uid().map_err(UnpackError::Archive)? as u32,
        gid: header.gid().map_err(UnpackError::Archive)? as u32,
        atime: mtime,
        mtime,
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions().map_err(UnpackError::Archive)? {
        for ext in pax {
            let ext = ext.map_err(UnpackError::Archive)?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
            };
            match key {
                "uid" => meta.uid = number().unwrap_or(meta.uid),
                "gid" => meta.gid = number().unwrap_or(meta.gid),
                "mtime" => {
                    if let Some(t) = parse_pax_time(value) {
                        meta.mtime = t;
                        meta.atime = t;
                    }
                }
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        meta.xattrs.push((name.to_string(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

/// Parses a PAX time (`seconds[.fraction]`).
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    Some(TimeSpec::new(secs, nanos))
}

impl Applier {
    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path().map_err(UnpackError::Archive)?.into_owned();
        let path =
            clean_relative(&raw_path).ok_or_else(|| UnpackError::EscapesRoot(raw_path.clone()))?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        self.stats.entries += 1;
        let meta = read_meta(entry)?;

        let Some((parent, name)) = split_parent(&path) else {
            // The layer root itself ("./"): only its metadata applies.
            if kind == EntryType::Directory {
                let fd = self
                    .root
                    .open_dir(Path::new(""))
                    .map_err(io_err(&path, "opening the root"))?;
                self.apply_meta(&fd, OsStr::new("."), &path, &meta, Node::Dir)?;
                self.dir_times.push((path, meta.mtime));
            }
            return Ok(());
        };
        let name = name.to_os_string();
        let parent = parent.to_path_buf();

        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&path, &parent, &name, hidden);
        }

        // Creating anything at `path` invalidates a cached fd of `path` or below.
        if self
            .parent_cache
            .as_ref()
            .is_some_and(|(p, _)| p.starts_with(&path))
        {
            self.parent_cache = None;
        }
        let dir = self.parent_dir(&parent, &path)?;
        let existing = fsutil::lstat_at(&dir, &name).map_err(io_err(&path, "stat"))?;
        let is_dir_entry = kind == EntryType::Directory;
        match &existing {
            Some(st) if fsutil::is_dir(st) && is_dir_entry => {}
            Some(_) => fsutil::remove_all_at(&dir, &name)
                .map_err(io_err(&path, "replacing the existing entry"))?,
            None => {}
        }
        self.seen.insert(path.clone());

        match kind {
            EntryType::Directory => {
                if existing.is_none() || !existing.as_ref().is_some_and(fsutil::is_dir) {
                    mkdirat(&dir, name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(nix_err(&path, "mkdir"))?;
                }
                self.apply_meta(&dir, &name, &path, &meta, Node::Dir)?;
                self.dir_times.push((path, meta.mtime));
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file =
                    fsutil::create_file_at(&dir, &name).map_err(nix_err(&path, "create"))?;
                let written = io::copy(entry, &mut file).map_err(UnpackError::Archive)?;
                self.stats.bytes += written;
                drop(file);
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Archive)?
                    .ok_or_else(|| {
                        UnpackError::Archive(io::Error::other(format!(
                            "symlink {path:?} has no target"
                        )))
                    })?;
                symlinkat(target.as_ref(), &dir, name.as_os_str())
                    .map_err(nix_err(&path, "symlink"))?;
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name()
                    .map_err(UnpackError::Archive)?
                    .ok_or_else(|| {
                        UnpackError::Archive(io::Error::other(format!(
                            "hardlink {path:?} has no target"
                        )))
                    })?
                    .into_owned();
                self.hardlink(&path, &dir, &name, &raw_target)?;
                // A hardlink shares the target's inode and metadata.
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if !self.privileged && kind != EntryType::Fifo {
                    tracing::debug!(entry = ?path, "not root: skipping device node");
                    return Ok(());
                }
                let file_type = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let header = entry.header();
                let major = header
                    .device_major()
                    .map_err(UnpackError::Archive)?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(UnpackError::Archive)?
                    .unwrap_or(0);
                mknodat(
                    &dir,
                    name.as_os_str(),
                    file_type,
                    Mode::from_bits_truncate(0o600),
                    makedev(major.into(), minor.into()),
                )
                .map_err(nix_err(&path, "mknod"))?;
            }
            other => {
                tracing::warn!(entry = ?path, kind = ?other, "skipping unsupported tar entry type");
                return Ok(());
            }
        }
        let node = if kind == EntryType::Symlink {
            Node::Symlink
        } else {
            Node::Other
        };
        self.apply_meta(&dir, &name, &path, &meta, node)
    }

    /// The parent directory of an entry, created (0755) if the layer did not list it.
    fn parent_dir(&mut self, parent: &Path, path: &Path) -> Result<OwnedFd, UnpackError> {
        if let Some((cached, fd)) = &self.parent_cache
            && cached == parent
        {
            return fd.try_clone().map_err(io_err(path, "dup"));
        }
        let fd = self
            .root
            .mkdir_all(parent)
            .map_err(io_err(path, "opening the parent directory"))?;
        self.parent_cache = Some((
            parent.to_path_buf(),
            fd.try_clone().map_err(io_err(path, "dup"))?,
        ));
        Ok(fd)
    }

    fn whiteout(
        &mut self,
        path: &Path,
        parent: &Path,
        name: &OsStr,
        hidden: &[u8],
    ) -> Result<(), UnpackError> {
        self.parent_cache = None;
        let dir = self
            .root
            .mkdir_all(parent)
            .map_err(io_err(path, "opening the parent directory"))?;
        if name == OPAQUE_WHITEOUT {
            return match self.mode {
                WhiteoutMode::Overlay => fsutil::set_xattr_at(&dir, OsStr::new("."), OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(io_err(path, "marking the directory opaque (needs root and a filesystem with trusted xattrs)")),
                WhiteoutMode::Apply => {
                    for child in fsutil::list_dir(&dir).map_err(io_err(path, "listing"))? {
                        let child = OsStr::from_bytes(child.to_bytes());
                        if !self.seen.contains(&parent.join(child)) {
                            fsutil::remove_all_at(&dir, child).map_err(io_err(path, "removing for the opaque whiteout"))?;
                        }
                    }
                    Ok(())
                }
            };
        }
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other AUFS metadata (.wh..wh.plnk, ...): not part of the image.
            return Ok(());
        }
        let hidden = OsStr::from_bytes(hidden);
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.as_bytes().contains(&b'/')
        {
            return Err(UnpackError::EscapesRoot(path.to_path_buf()));
        }
        let hidden_path = parent.join(hidden);
        if self.seen.contains(&hidden_path) {
            // Whiteouts hide lower layers only; this layer's own entry stays.
            return Ok(());
        }
        fsutil::remove_all_at(&dir, hidden)
            .map_err(io_err(path, "removing the whited-out entry"))?;
        if self.mode == WhiteoutMode::Overlay {
            mknodat(&dir, hidden, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(nix_err(path, "creating the overlay whiteout (needs root)"))?;
        }
        Ok(())
    }

    fn hardlink(
        &mut self,
        path: &Path,
        dir: &OwnedFd,
        name: &OsStr,
        raw_target: &Path,
    ) -> Result<(), UnpackError> {
        let bad = || UnpackError::BadHardlink {
            entry: path.to_path_buf(),
            target: raw_target.to_path_buf(),
        };
        let target = clean_relative(raw_target).ok_or_else(bad)?;
        let (target_parent, target_name) = split_parent(&target).ok_or_else(bad)?;
        let target_dir = self.root.open_dir(target_parent).map_err(|_| bad())?;
        // Flags 0: a symlink target is linked itself, never followed.
        linkat(&target_dir, target_name, dir, name, AtFlags::empty()).map_err(|errno| match errno {
            Errno::ENOENT | Errno::EPERM | Errno::EXDEV => bad(),
            other => UnpackError::Io {
                entry: path.to_path_buf(),
                op: "link",
                source: other.into(),
            },
        })
    }

    /// Ownership, mode, xattrs and (except for directories) times of an entry in `dir`.
    fn apply_meta(
        &mut self,
        dir: &impl AsFd,
        name: &OsStr,
        path: &Path,
        meta: &Metadata,
        node: Node,
    ) -> Result<(), UnpackError> {
        // Directory times are set in `finish`: creating children would change them.
        fsutil::apply_metadata_at(
            dir,
            name,
            meta,
            self.privileged,
            node == Node::Symlink,
            node != Node::Dir,
        )
        .map_err(|(op, source)| UnpackError::Io {
            entry: path.to_path_buf(),
            op,
            source,
        })
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        self.parent_cache = None;
        // Deepest first is not needed: setting a directory's times does not change its parent's.
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            let fd = match self.root.open_dir(&path) {
                Ok(fd) => fd,
                // Replaced or removed by a later entry of this layer.
                Err(_) => continue,
            };
            nix::sys::stat::futimens(&fd, &mtime, &mtime)
                .map_err(nix_err(&path, "setting times"))?;
        }
        Ok(())
    }
}
