//! Container root filesystems from the store: an overlayfs mount of the image's shared,
//! read-only layers under a per-container writable upper directory (copy-on-write, so N
//! containers of one image share one copy), or a plain copy where overlayfs is unavailable.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::flatten::flatten;
use super::store::{Image, ImageStore};
use super::{ImageError, fsutil};

/// A container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// The directory to use as the container's root.
    pub path: PathBuf,
    /// True for an overlayfs mount, false for a plain copy.
    pub overlay: bool,
}

/// Checks that a container id can name a directory: 1-128 of `[A-Za-z0-9_.-]`, no leading dot.
pub fn validate_container_id(id: &str) -> Result<(), ImageError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidContainerId(id.to_string()))
    }
}

impl ImageStore {
    /// Creates container `container_id`'s root filesystem from `image` and records the
    /// container as a user of the image (so `rmi` refuses and gc keeps its layers).
    /// Undo with [`ImageStore::remove_rootfs`]. On error nothing is left behind.
    pub fn prepare_rootfs(&self, container_id: &str, image: &Image) -> Result<Rootfs, ImageError> {
        validate_container_id(container_id)?;
        let _lock = self.lock_shared()?;
        let layer_dirs = self.layer_dirs(image)?;
        self.add_container(container_id, image)?;
        let result = self.build_rootfs(container_id, &layer_dirs);
        if result.is_err() {
            let _ = fsutil::remove_tree(&self.container_dir(container_id));
            let _ = self.remove_container(container_id);
        }
        result
    }

    fn build_rootfs(
        &self,
        container_id: &str,
        layer_dirs: &[PathBuf],
    ) -> Result<Rootfs, ImageError> {
        let dir = self.container_dir(container_id);
        if dir.exists() {
            return Err(ImageError::ContainerExists(container_id.to_string()));
        }
        let rootfs = dir.join("rootfs");
        for sub in ["upper", "work", "rootfs"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| ImageError::io(&path, "creating", e))?;
        }
        match mount_overlay(layer_dirs, &dir.join("upper"), &dir.join("work"), &rootfs) {
            Ok(()) => Ok(Rootfs {
                path: rootfs,
                overlay: true,
            }),
            Err(errno @ (Errno::EPERM | Errno::ENODEV | Errno::EINVAL | Errno::ENOTSUP)) => {
                tracing::info!(%errno, container_id, "overlayfs unavailable; copying the image into the container instead");
                flatten(layer_dirs, &rootfs)
                    .map_err(|e| ImageError::io(&rootfs, "copying the image layers", e))?;
                Ok(Rootfs {
                    path: rootfs,
                    overlay: false,
                })
            }
            Err(source) => Err(ImageError::Mount {
                path: rootfs,
                op: "mounting overlayfs on",
                source,
            }),
        }
    }

    /// Unmounts and deletes container `container_id`'s root filesystem and forgets that it
    /// used its image. Removing a container that has no root filesystem is not an error.
    pub fn remove_rootfs(&self, container_id: &str) -> Result<(), ImageError> {
        validate_container_id(container_id)?;
        let dir = self.container_dir(container_id);
        let rootfs = dir.join("rootfs");
        match nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(source) => {
                return Err(ImageError::Mount {
                    path: rootfs,
                    op: "unmounting",
                    source,
                });
            }
        }
        fsutil::remove_tree(&dir).map_err(|e| ImageError::io(&dir, "removing", e))?;
        self.remove_container(container_id)
    }
}

/// Mounts overlayfs at `target`. Lower directories are passed as `/proc/self/fd/N` paths so
/// the option string stays short for images with many layers.
pub(crate) fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), Errno> {
    let fds: Vec<OwnedFd> = layers
        .iter()
        .rev()
        .map(|l| {
            nix::fcntl::open(
                l,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        })
        .collect::<Result<_, _>>()?;
    let lower: Vec<String> = fds
        .iter()
        .map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .collect();
    // An image without layers still needs one lower directory.
    let empty_lower;
    let lowerdir = if lower.is_empty() {
        empty_lower = work.with_file_name("empty");
        fs::create_dir_all(&empty_lower).map_err(|_| Errno::EIO)?;
        empty_lower.display().to_string()
    } else {
        lower.join(":")
    };
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},index=off",
        upper.display(),
        work.display()
    );
    let mount = |options: &str| {
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
    };
    // `volatile` (Linux 5.10+) skips syncing the upper filesystem, above all on unmount,
    // which otherwise waits for a journal commit of the store's filesystem (up to hundreds
    // of ms on a busy disk). A writable layer never outlives its container's state, which
    // lives in the run root on tmpfs: after a host crash there is nothing to resume, so the
    // syncs buy nothing (podman makes the same choice for --rm containers).
    match mount(&format!("{options},volatile")) {
        Err(Errno::EINVAL) => mount(&options),
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::archive;

    fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// A store holding image `app:1` (one layer with /etc/app.conf).
    fn store_with_image(dir: &Path) -> (ImageStore, Image) {
        let store = ImageStore::open(&dir.join("store")).unwrap();
        let tarball = dir.join("rootfs.tar");
        std::fs::write(&tarball, layer_tar(&[("etc/app.conf", b"v1\n")])).unwrap();
        let image = archive::import(&store, &tarball, "app:1", &[]).unwrap();
        (store, image)
    }

    #[test]
    fn containers_share_layers_copy_on_write_and_pin_their_image() {
        let dir = tempfile::tempdir().unwrap();
        let (store, image) = store_with_image(dir.path());
        for private in ["layers", "containers"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(store.root().join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o777,
                0o700,
                "{private} must not be reachable by host users"
            );
        }
        let a = store.prepare_rootfs("ctr-a", &image).unwrap();
        let b = store.prepare_rootfs("ctr-b", &image).unwrap();
        assert!(
            a.overlay && b.overlay,
            "overlayfs is available on this host"
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let options = mountinfo
            .lines()
            .find(|line| line.split(' ').nth(4) == Some(a.path.to_str().unwrap()))
            .expect("the container's rootfs is mounted");
        assert!(
            options.contains("volatile"),
            "writable layers skip syncs: {options}"
        );
        std::fs::write(a.path.join("etc/app.conf"), "changed in a").unwrap();
        assert_eq!(
            std::fs::read_to_string(b.path.join("etc/app.conf")).unwrap(),
            "v1\n"
        );
        let shared = store
            .layer_path(&image.layers[0].diff_id)
            .join("etc/app.conf");
        assert_eq!(
            std::fs::read_to_string(shared).unwrap(),
            "v1\n",
            "the shared layer stays read-only"
        );
        assert!(matches!(
            store.prepare_rootfs("ctr-a", &image),
            Err(ImageError::ContainerExists(_))
        ));

        let err = store.remove_image("app:1", false).unwrap_err();
        assert!(
            matches!(&err, ImageError::InUse { containers, .. } if containers.len() == 2),
            "{err}"
        );
        // --force removes the image; the containers keep their layers until they go.
        store.remove_image("app:1", true).unwrap();
        assert!(store.layer_path(&image.layers[0].diff_id).is_dir());
        assert_eq!(
            std::fs::read_to_string(b.path.join("etc/app.conf")).unwrap(),
            "v1\n"
        );

        store.remove_rootfs("ctr-a").unwrap();
        store.remove_rootfs("ctr-b").unwrap();
        store.remove_rootfs("ctr-b").unwrap();
        assert!(!store.container_dir("ctr-a").exists());
        assert!(store.containers().unwrap().is_empty());
        store.gc().unwrap();
        assert!(!store.layer_path(&image.layers[0].diff_id).exists());
    }

    #[test]
    fn the_copy_fallback_matches_the_overlay_view() {
        let dir = tempfile::tempdir().unwrap();
        let (store, image) = store_with_image(dir.path());
        let mounted = store.prepare_rootfs("ctr", &image).unwrap();
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        flatten(&[store.layer_path(&image.layers[0].diff_id)], &copy).unwrap();
        assert_eq!(
            std::fs::read(copy.join("etc/app.conf")).unwrap(),
            std::fs::read(mounted.path.join("etc/app.conf")).unwrap()
        );
        store.remove_rootfs("ctr").unwrap();
    }

    #[test]
    fn container_ids_are_safe_directory_names() {
        for good in ["abc", "a-b_c.1", &"x".repeat(128)] {
            validate_container_id(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", ".hidden", &"x".repeat(129), "a b"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
