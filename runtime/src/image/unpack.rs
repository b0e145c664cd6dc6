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
    let old = header.as_old();
    let mtime = TimeSpec::new(numeric(&old.mtime, header.mtime())? as i64, 0);
    let mut meta = Metadata {
        mode: numeric(&old.mode, header.mode().map(u64::from))? as u32 & 0o7777,
        uid: numeric(&old.uid, header.uid())? as u32,
        gid: numeric(&old.gid, header.gid())? as u32,
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

/// A numeric header field: blank (all NUL or spaces, as some writers leave unused
/// fields) means 0, as GNU tar and Go's archive/tar read it.
fn numeric(field: &[u8], parsed: io::Result<u64>) -> Result<u64, UnpackError> {
    if field.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(0);
    }
    parsed.map_err(UnpackError::Archive)
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
                let (major, minor) = if kind == EntryType::Fifo {
                    (0, 0)
                } else {
                    let major = header.device_major().map_err(UnpackError::Archive)?;
                    let minor = header.device_minor().map_err(UnpackError::Archive)?;
                    (major.unwrap_or(0), minor.unwrap_or(0))
                };
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::*;

    /// Builds test layers entry by entry.
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }

        fn entry(
            mut self,
            path: &str,
            kind: EntryType,
            mode: u32,
            data: &[u8],
            link: Option<&str>,
        ) -> Tar {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_uid(1234);
            header.set_gid(5678);
            header.set_mtime(1_600_000_000);
            if kind == EntryType::Char {
                header.set_device_major(1).unwrap();
                header.set_device_minor(3).unwrap();
            }
            match link {
                Some(link) => self.0.append_link(&mut header, path, link).unwrap(),
                None => self.0.append_data(&mut header, path, data).unwrap(),
            }
            self
        }

        fn file(self, path: &str, data: &[u8]) -> Tar {
            self.entry(path, EntryType::Regular, 0o644, data, None)
        }

        fn dir(self, path: &str) -> Tar {
            self.entry(path, EntryType::Directory, 0o755, b"", None)
        }

        /// A PAX header carrying `records` for the next entry.
        fn pax(mut self, records: &[(&str, &[u8])]) -> Tar {
            let mut data = Vec::new();
            for (key, value) in records {
                let body_len = key.len() + value.len() + 3;
                let mut len = body_len + body_len.to_string().len();
                if len.to_string().len() != body_len.to_string().len() {
                    len += 1;
                }
                data.extend_from_slice(format!("{len} {key}=").as_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(EntryType::XHeader);
            header.set_size(data.len() as u64);
            header.set_path("PaxHeader").unwrap();
            header.set_cksum();
            self.0.append(&header, &data[..]).unwrap();
            self
        }

        fn apply(self, target: &Path, mode: WhiteoutMode) -> Result<UnpackStats, UnpackError> {
            apply_layer(&self.0.into_inner().unwrap()[..], target, mode)
        }
    }

    #[test]
    fn metadata_links_and_special_files_are_reproduced() {
        let dir = tempfile::tempdir().unwrap();
        let long_name = format!("deep/{}", "n".repeat(150));
        let stats = Tar::new()
            .dir("bin")
            .entry("bin/su", EntryType::Regular, 0o4755, b"setuid", None)
            .entry("bin/link", EntryType::Symlink, 0o777, b"", Some("su"))
            .entry("bin/hard", EntryType::Link, 0o644, b"", Some("bin/su"))
            .entry("dev-null", EntryType::Char, 0o666, b"", None)
            .entry("pipe", EntryType::Fifo, 0o600, b"", None)
            .pax(&[
                ("SCHILY.xattr.user.twinbox", b"yes"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ])
            .dir("xattr-dir")
            .file(&long_name, b"long")
            .apply(dir.path(), WhiteoutMode::Overlay)
            .unwrap();
        assert_eq!(stats.entries, 8);
        let root = dir.path();
        let su = std::fs::symlink_metadata(root.join("bin/su")).unwrap();
        assert_eq!(
            su.permissions().mode() & 0o7777,
            0o4755,
            "setuid bit survives chown"
        );
        assert_eq!((su.uid(), su.gid()), (1234, 5678));
        assert_eq!(su.mtime(), 1_600_000_000);
        assert_eq!(
            std::fs::read_link(root.join("bin/link")).unwrap(),
            Path::new("su")
        );
        assert_eq!(
            std::fs::symlink_metadata(root.join("bin/hard"))
                .unwrap()
                .ino(),
            su.ino()
        );
        let null = std::fs::symlink_metadata(root.join("dev-null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert!(
            std::fs::symlink_metadata(root.join("pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        // Directory mtimes are set after their children were created.
        assert_eq!(
            std::fs::metadata(root.join("bin")).unwrap().mtime(),
            1_600_000_000
        );
        let xdir = crate::image::fsutil::Root::open(root).unwrap();
        let xattrs = fsutil::xattrs_at(xdir.fd(), OsStr::new("xattr-dir")).unwrap();
        assert!(
            xattrs.contains(&("user.twinbox".to_string(), b"yes".to_vec())),
            "{xattrs:?}"
        );
        assert!(
            !xattrs.iter().any(|(k, _)| k.starts_with("trusted.")),
            "image forged an overlay xattr"
        );
        assert_eq!(std::fs::read(root.join(&long_name)).unwrap(), b"long");
    }

    fn lower(dir: &Path) {
        Tar::new()
            .dir("etc")
            .file("etc/keep", b"k")
            .file("etc/gone", b"g")
            .dir("opq")
            .file("opq/old", b"o")
            .apply(dir, WhiteoutMode::Apply)
            .unwrap();
    }

    fn upper() -> Tar {
        Tar::new()
            .file("etc/.wh.gone", b"")
            .file("opq/same-layer", b"s")
            .file("opq/.wh..wh..opq", b"")
            .file("etc/.wh.keep-new", b"")
            .file("etc/keep-new", b"n")
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_in_a_layer_dir() {
        let dir = tempfile::tempdir().unwrap();
        upper().apply(dir.path(), WhiteoutMode::Overlay).unwrap();
        let gone = std::fs::symlink_metadata(dir.path().join("etc/gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        let root = Root::open(dir.path()).unwrap();
        let opq = root.open_dir(Path::new("opq")).unwrap();
        assert_eq!(
            fsutil::get_xattr_fd(&opq, OVERLAY_OPAQUE_XATTR)
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        // Entries of the same layer are not hidden by its whiteouts.
        assert_eq!(
            std::fs::read(dir.path().join("opq/same-layer")).unwrap(),
            b"s"
        );
        assert_eq!(
            std::fs::read(dir.path().join("etc/keep-new")).unwrap(),
            b"n"
        );
    }

    #[test]
    fn whiteouts_delete_lower_content_when_applied() {
        let dir = tempfile::tempdir().unwrap();
        lower(dir.path());
        upper().apply(dir.path(), WhiteoutMode::Apply).unwrap();
        let mut names: Vec<String> = walk(dir.path());
        names.sort();
        assert_eq!(
            names,
            ["etc", "etc/keep", "etc/keep-new", "opq", "opq/same-layer"]
        );
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        out
    }

    #[test]
    fn a_truncated_layer_is_an_archive_error() {
        let tar = Tar::new()
            .file("big", &[7u8; 10_000])
            .0
            .into_inner()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = apply_layer(&tar[..3000], dir.path(), WhiteoutMode::Overlay).unwrap_err();
        assert!(matches!(err, UnpackError::Archive(_)), "{err}");
    }
}
