//! The VM's disks: the read-only root filesystem image (one erofs file per image, shared by
//! every VM of that image: one file, one host page cache), volume disks (ext4, filled from
//! the volume's directory), and the optional writable-layer disk.
//!
//! Root filesystem images come from the image store (keyed by image id), or, for bundles
//! that engines hand over as a directory, from that directory, keyed by a cheap but sound
//! key over its entries' metadata: path, type, mode, owner, size, inode, mtime and ctime
//! (ctime changes with any change of content or metadata and cannot be set by programs).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::MntFlags;
use sha2::Digest as _;

use super::VmError;
use super::assets::{hash_file_version, write_atomic_with};
use crate::image::{Image, ImageStore};

/// Filesystem of the root filesystem images.
pub const ROOTFS_FSTYPE: &str = "erofs";
/// Filesystem of volume and writable-layer disks.
pub const DISK_FSTYPE: &str = "ext4";

/// Free space a volume disk gets beyond its content (the file is sparse: only what the guest
/// writes takes host space).
const VOLUME_HEADROOM: u64 = 1 << 30;

/// Runs a filesystem tool; a missing tool names its Debian package.
fn run_tool(command: &mut Command, package: &str) -> Result<(), VmError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|source| VmError::Tool {
        tool: program.clone(),
        detail: if source.kind() == std::io::ErrorKind::NotFound {
            format!("it is not installed; install it with `apt-get install {package}`")
        } else {
            source.to_string()
        },
    })?;
    if !output.status.success() {
        return Err(VmError::Tool {
            tool: program,
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Builds an erofs image of `source` at `target`.
fn mkfs_erofs(source: &Path, target: &Path) -> Result<(), VmError> {
    run_tool(
        Command::new("mkfs.erofs")
            .args(["--quiet", "--preserve-mtime"])
            .arg(target)
            .arg(source),
        "erofs-utils",
    )
}

/// Where the agent sits on its disk (the kernel's `init=`).
pub const AGENT_INIT: &str = "/init";
/// The empty directories the agent mounts its API filesystems and tmpfs on: the agent
/// disk is the guest's read-only root, so they must exist on it.
const AGENT_MOUNT_POINTS: [&str; 5] = ["dev", "proc", "sys", "run", "tmp"];

/// The cache of root filesystem images under `<store root>/vm`.
#[derive(Debug, Clone)]
pub struct DiskCache {
    root: PathBuf,
}

impl DiskCache {
    /// The cache in `root`.
    pub fn new(root: PathBuf) -> Self {
        DiskCache { root }
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The root filesystem image of `image` from `store`, built on first use.
    pub fn image_rootfs(&self, store: &ImageStore, image: &Image) -> Result<PathBuf, VmError> {
        self.cached("images", image.id.hex(), |tmp| {
            // Layers stay while the lock is held (gc takes it exclusively).
            let _lock = store.lock_shared().map_err(VmError::image)?;
            let layers = store.layer_dirs(image).map_err(VmError::image)?;
            let staging = store.staging_dir("vm-rootfs").map_err(VmError::image)?;
            build_from_layers(&layers, staging.path(), tmp)
        })
    }

    /// The erofs image `<kind>/<key>.erofs` of the cache, built with `build` (into a
    /// temporary file, renamed in place) when it is not there yet.
    fn cached(
        &self,
        kind: &str,
        key: &str,
        build: impl FnOnce(&Path) -> Result<(), VmError>,
    ) -> Result<PathBuf, VmError> {
        let path = self.root.join(kind).join(format!("{key}.{ROOTFS_FSTYPE}"));
        if !path.is_file() {
            write_atomic_with(&path, build)?;
            tracing::debug!(path = %path.display(), "VM {kind} image built");
        }
        Ok(path)
    }

    /// The root filesystem image of the directory `rootfs` (a bundle's), built when its
    /// content is new.
    pub fn dir_rootfs(&self, rootfs: &Path) -> Result<PathBuf, VmError> {
        let key = content_key(rootfs).map_err(VmError::io("reading", rootfs))?;
        self.cached("rootfs", &key, |tmp| mkfs_erofs(rootfs, tmp))
    }

    /// The agent disk: a small read-only erofs image holding the guest agent as
    /// [`AGENT_INIT`], which the guest kernel mounts as its root. Built once per agent
    /// binary version. Booting from a disk, the guest reads only the agent pages it runs;
    /// an initramfs was copied into guest RAM whole and unpacked into a second copy.
    pub fn agent_disk(&self, agent: &Path) -> Result<PathBuf, VmError> {
        let key = super::assets::file_key(agent).map_err(VmError::io("reading", agent))?;
        self.cached("agent", &key, |tmp| {
            let staging = tmp.with_extension("staging");
            let result = stage_agent(agent, &staging).and_then(|()| {
                run_tool(
                    Command::new("mkfs.erofs")
                        .args(["--quiet", "--all-root"])
                        .arg(tmp)
                        .arg(&staging),
                    "erofs-utils",
                )
            });
            let _ = std::fs::remove_dir_all(&staging);
            result
        })
    }
}

/// Device nodes on the agent disk, for kernels that do not mount devtmpfs on /dev before
/// init (twinbox's does): the console for the agent's messages, and /dev/mem for its
/// boot-timer write. (name, major, minor).
const AGENT_DEVICES: [(&str, u64, u64); 2] = [("dev/console", 5, 1), ("dev/mem", 1, 1)];

/// Lays out the agent disk's tree in `staging`: the agent, its mount points and devices.
fn stage_agent(agent: &Path, staging: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in AGENT_MOUNT_POINTS {
        let path = staging.join(dir);
        std::fs::create_dir_all(&path).map_err(VmError::io("creating", &path))?;
    }
    for (name, major, minor) in AGENT_DEVICES {
        let path = staging.join(name);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(|e| VmError::io("creating the device node", &path)(e.into()))?;
    }
    let init = staging.join(AGENT_INIT.trim_start_matches('/'));
    std::fs::copy(agent, &init).map_err(VmError::io("copying the guest agent to", &init))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(VmError::io("setting the mode of", &init))
}

/// Merges `layers` (bottom first, overlayfs form) with a read-only overlay mount in
/// `staging` and builds the image from the merged view; copies the layers where overlayfs
/// is unavailable.
fn build_from_layers(layers: &[PathBuf], staging: &Path, target: &Path) -> Result<(), VmError> {
    let merged = staging.join("merged");
    let upper = staging.join("upper");
    let work = staging.join("work");
    for dir in [&merged, &upper, &work] {
        std::fs::create_dir_all(dir).map_err(VmError::io("creating", dir))?;
    }
    match crate::image::rootfs::mount_overlay(layers, &upper, &work, &merged) {
        Ok(()) => {
            let result = mkfs_erofs(&merged, target);
            let _ = nix::mount::umount2(&merged, MntFlags::MNT_DETACH);
            result
        }
        Err(errno) => {
            tracing::debug!(%errno, "overlayfs unavailable; flattening the layers to build the VM image");
            let flat = staging.join("flat");
            std::fs::create_dir(&flat).map_err(VmError::io("creating", &flat))?;
            crate::image::flatten::flatten(layers, &flat)
                .map_err(VmError::io("copying the image layers to", &flat))?;
            mkfs_erofs(&flat, target)
        }
    }
}

/// The content key of the directory tree at `root` (see the module docs).
pub fn content_key(root: &Path) -> std::io::Result<String> {
    let mut hash = sha2::Sha256::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for name in entries {
            let relative = dir.join(&name);
            let path = root.join(&relative);
            let meta = std::fs::symlink_metadata(&path)?;
            hash.update(relative.as_os_str().as_encoded_bytes());
            hash.update([0]);
            for value in [meta.mode() as u64, meta.uid() as u64, meta.gid() as u64] {
                hash.update(value.to_le_bytes());
            }
            if meta.is_dir() {
                pending.push(relative);
                continue;
            }
            hash_file_version(&mut hash, &meta);
            if meta.file_type().is_symlink() {
                hash.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            }
        }
    }
    let root_meta = std::fs::metadata(root)?;
    for value in [root_meta.mode(), root_meta.uid(), root_meta.gid()] {
        hash.update(value.to_le_bytes());
    }
    Ok(hex::encode(&hash.finalize()[..16]))
}

/// Bytes used by the regular files under `dir` (not following symlinks or mounts).
fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let device = std::fs::symlink_metadata(dir)?.dev();
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.dev() != device {
                continue;
            }
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// Builds an ext4 disk at `target` holding the files of `source` (owners, modes and times
/// kept), with room to grow; sparse on the host.
pub fn volume_disk(source: &Path, target: &Path) -> Result<(), VmError> {
    let content = tree_size(source).map_err(VmError::io("measuring", source))?;
    let size = content + content / 4 + VOLUME_HEADROOM;
    mkfs_ext4(Some(source), target, size)
}

/// Builds an empty ext4 disk of `size` bytes at `target` (sparse).
pub fn empty_disk(target: &Path, size: u64) -> Result<(), VmError> {
    mkfs_ext4(None, target, size)
}

fn mkfs_ext4(source: Option<&Path>, target: &Path, size: u64) -> Result<(), VmError> {
    let file = std::fs::File::create(target).map_err(VmError::io("creating", target))?;
    file.set_len(size).map_err(VmError::io("sizing", target))?;
    drop(file);
    let mut command = Command::new("mkfs.ext4");
    // No journal (a sandbox disk needs no crash consistency beyond the VM's life), lazy inode
    // tables (the guest mounts with noinit_itable), no reserved blocks.
    command.args([
        "-q",
        "-F",
        "-O",
        "^has_journal",
        "-m",
        "0",
        "-E",
        "lazy_itable_init=1,nodiscard",
    ]);
    if let Some(source) = source {
        command.arg("-d").arg(source);
    }
    command.arg(target);
    run_tool(&mut command, "e2fsprogs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_keys_follow_content_and_metadata_but_not_the_location() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/config"), "a").unwrap();
        std::os::unix::fs::symlink("etc/config", root.join("link")).unwrap();
        let first = content_key(&root).unwrap();
        assert_eq!(content_key(&root).unwrap(), first, "stable");

        std::fs::write(root.join("etc/config"), "b").unwrap();
        let edited = content_key(&root).unwrap();
        assert_ne!(edited, first, "content changes");

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("etc"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let chmod = content_key(&root).unwrap();
        assert_ne!(chmod, edited, "a directory's mode counts");

        std::fs::write(root.join("new"), "").unwrap();
        assert_ne!(content_key(&root).unwrap(), chmod, "new entries count");
    }

    #[test]
    fn bundle_rootfs_images_are_cached_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/tool"), "v1").unwrap();
        let cache = DiskCache::new(dir.path().join("cache"));
        let first = cache.dir_rootfs(&rootfs).unwrap();
        assert!(first.is_file());
        let modified = std::fs::metadata(&first).unwrap().modified().unwrap();
        assert_eq!(cache.dir_rootfs(&rootfs).unwrap(), first);
        assert_eq!(
            std::fs::metadata(&first).unwrap().modified().unwrap(),
            modified,
            "not rebuilt"
        );
        std::fs::write(rootfs.join("bin/tool"), "v2").unwrap();
        assert_ne!(cache.dir_rootfs(&rootfs).unwrap(), first);
        // The image is erofs holding the file.
        let magic = std::fs::read(&first).unwrap();
        assert_eq!(&magic[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
    }

    #[test]
    fn the_agent_disk_holds_the_agent_as_init_and_is_built_once_per_version() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("twinbox-agent");
        std::fs::write(&agent, "agent v1").unwrap();
        let cache = DiskCache::new(dir.path().join("cache"));
        let first = cache.agent_disk(&agent).unwrap();
        assert_eq!(cache.agent_disk(&agent).unwrap(), first);
        let extracted = dir.path().join("extracted");
        let status = Command::new("fsck.erofs")
            .arg(format!("--extract={}", extracted.display()))
            .arg("--preserve-perms")
            .arg(&first)
            .status()
            .unwrap();
        assert!(status.success());
        let init = extracted.join("init");
        assert_eq!(std::fs::read_to_string(&init).unwrap(), "agent v1");
        assert_eq!(
            std::fs::metadata(&init).unwrap().permissions().mode() & 0o777,
            0o755
        );
        for mount_point in AGENT_MOUNT_POINTS {
            assert!(extracted.join(mount_point).is_dir(), "{mount_point}");
        }
        for (name, major, minor) in AGENT_DEVICES {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let meta = std::fs::symlink_metadata(extracted.join(name)).unwrap();
            assert!(meta.file_type().is_char_device(), "{name}");
            assert_eq!(meta.rdev(), nix::sys::stat::makedev(major, minor), "{name}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(first.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no staging left: {leftovers:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&agent, "agent v2").unwrap();
        assert_ne!(cache.agent_disk(&agent).unwrap(), first);
    }

    #[test]
    fn volume_disks_hold_the_directory_and_are_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("data");
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::write(source.join("sub/file"), "volume content").unwrap();
        let disk = dir.path().join("volume.img");
        volume_disk(&source, &disk).unwrap();
        let meta = std::fs::metadata(&disk).unwrap();
        assert!(meta.len() >= VOLUME_HEADROOM);
        assert!(meta.blocks() * 512 < meta.len() / 10, "sparse");
        let listing = Command::new("debugfs")
            .args(["-R", "cat /sub/file"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&listing.stdout), "volume content");
    }

    #[test]
    fn missing_tools_name_their_package() {
        let error = run_tool(&mut Command::new("mkfs.nonexistent-fs"), "some-package").unwrap_err();
        assert!(
            error.to_string().contains("apt-get install some-package"),
            "{error}"
        );
    }
}
