//! Assembling the workload's root filesystem and volumes from the host's create request:
//! the image disk read-only under an overlayfs whose upper layer is a tmpfs or a disk, the
//! volume disks, and the small files; then the spec as the guest applies it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use oci_spec::runtime::{LinuxResourcesBuilder, Spec};
use twinbox_protocol::{
    AGENT_RUN_DIR, AgentError, CreateRequest, ErrorKind, RootfsSetup, VolumeSetup, WritableLayer,
    file_path, volume_dir,
};

use crate::session::failed;

/// Where the pieces go, under [`AGENT_RUN_DIR`].
#[derive(Debug, Clone)]
pub struct Layout {
    /// The image disk's mount point.
    pub image: PathBuf,
    /// The writable layer's mount point (holds `upper/` and `work/`).
    pub writable: PathBuf,
    /// The overlay: the workload's root.
    pub rootfs: PathBuf,
}

impl Layout {
    /// The layout under `base`.
    pub fn under(base: &Path) -> Self {
        Layout {
            image: base.join("image"),
            writable: base.join("writable"),
            rootfs: base.join("rootfs"),
        }
    }

    /// The agent's layout.
    pub fn standard() -> Self {
        Self::under(Path::new(AGENT_RUN_DIR))
    }
}

fn invalid(message: String) -> AgentError {
    AgentError::new(ErrorKind::Invalid, message)
}

fn mount_fs(
    device: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(target).map_err(failed(&format!("creating {}", target.display())))?;
    wait_for_media(device);
    mount(Some(device), target, Some(fstype), flags, Some(data)).map_err(|errno| {
        AgentError::new(
            ErrorKind::Failed,
            format!(
                "mounting {device} ({fstype}) on {}: {errno}{}",
                target.display(),
                if errno == nix::Error::ENODEV || errno == nix::Error::EINVAL {
                    "; does the guest kernel support this filesystem, and is the disk formatted?"
                } else {
                    ""
                }
            ),
        )
    })
}

/// How long a disk may stay empty after a restore before it is mounted anyway.
const MEDIA_WAIT: Duration = Duration::from_secs(2);

/// Waits until the disk `device` (if it is one) has a size. In a VM restored from a template
/// snapshot, each disk takes the place of one of the template's empty ones: the VMM signals
/// the change at restore, and the kernel reads the new size a moment later. A disk that
/// stays empty is mounted anyway, and the mount names the problem.
fn wait_for_media(device: &str) {
    let Some(name) = Path::new(device).file_name() else {
        return;
    };
    let size_file = Path::new("/sys/class/block").join(name).join("size");
    let deadline = Instant::now() + MEDIA_WAIT;
    while std::fs::read_to_string(&size_file).is_ok_and(|size| size.trim() == "0")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Mounts the image disk, the writable layer and the overlay; returns the workload's root.
pub fn assemble_rootfs(setup: &RootfsSetup, layout: &Layout) -> Result<PathBuf, AgentError> {
    mount_fs(
        &setup.device,
        &layout.image,
        &setup.fstype,
        MsFlags::MS_RDONLY,
        "",
    )?;
    match &setup.writable {
        WritableLayer::Tmpfs => mount_fs(
            "writable",
            &layout.writable,
            "tmpfs",
            MsFlags::empty(),
            "mode=0755",
        )?,
        // noinit_itable: do not zero inode tables in the background (it would fill the
        // host's sparse image file).
        WritableLayer::Disk { device, fstype } => mount_fs(
            device,
            &layout.writable,
            fstype,
            MsFlags::empty(),
            if fstype == "ext4" {
                "noinit_itable"
            } else {
                ""
            },
        )?,
    }
    let upper = layout.writable.join("upper");
    let work = layout.writable.join("work");
    for dir in [&upper, &work] {
        std::fs::create_dir_all(dir).map_err(failed("creating the overlay directories"))?;
    }
    mount_fs(
        "overlay",
        &layout.rootfs,
        "overlay",
        MsFlags::empty(),
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            layout.image.display(),
            upper.display(),
            work.display()
        ),
    )?;
    Ok(layout.rootfs.clone())
}

/// Mounts the volume disks at their [`volume_dir`]s.
pub fn mount_volumes(volumes: &[VolumeSetup]) -> Result<(), AgentError> {
    for (index, volume) in volumes.iter().enumerate() {
        let (flags, data) = if volume.read_only {
            (
                MsFlags::MS_RDONLY,
                if volume.fstype == "ext4" {
                    "noload"
                } else {
                    ""
                },
            )
        } else {
            (
                MsFlags::empty(),
                if volume.fstype == "ext4" {
                    "noinit_itable"
                } else {
                    ""
                },
            )
        };
        mount_fs(
            &volume.device,
            Path::new(&volume_dir(index)),
            &volume.fstype,
            flags,
            data,
        )?;
    }
    Ok(())
}

/// Writes the request's files to their [`file_path`]s.
pub fn write_files(request: &CreateRequest) -> Result<(), AgentError> {
    for (index, file) in request.files.iter().enumerate() {
        let path = PathBuf::from(file_path(index));
        let bytes = file.bytes().map_err(|e| invalid(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &bytes)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode & 0o7777))?;
            std::os::unix::fs::lchown(&path, Some(file.uid), Some(file.gid))
        };
        write().map_err(failed(&format!("writing {}", path.display())))?;
    }
    Ok(())
}

/// The spec as the guest applies it: rooted at `rootfs`, without hooks (the host runs them),
/// and with only the resource limits that make sense inside the VM (the VM's own size is
/// the memory and CPU limit).
pub fn guest_spec(mut spec: Spec, rootfs: &Path) -> Result<Spec, AgentError> {
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    spec.set_root(Some(root));
    spec.set_hooks(None);
    if let Some(mut linux) = spec.linux().clone() {
        let pids = linux.resources().as_ref().and_then(|r| *r.pids());
        let mut resources = LinuxResourcesBuilder::default()
            .build()
            .map_err(|e| invalid(format!("resources: {e}")))?;
        resources.set_pids(pids);
        linux.set_resources(Some(resources));
        linux.set_cgroups_path(None);
        spec.set_linux(Some(linux));
    }
    if spec.process().is_none() {
        return Err(invalid("the spec has no process to run".into()));
    }
    Ok(spec)
}

/// Creates the workload's working directory in `rootfs` when the image lacks it (owned by
/// root), as `twinbox run` and docker do for containers. It stops at a symbolic link (which
/// would resolve outside the workload's root here): the workload then fails to enter the
/// directory with a clear error.
pub fn create_cwd(spec: &Spec, rootfs: &Path) -> Result<(), AgentError> {
    let Some(process) = spec.process() else {
        return Ok(());
    };
    let mut path = rootfs.to_path_buf();
    for component in process.cwd().components() {
        let std::path::Component::Normal(name) = component else {
            continue;
        };
        path.push(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => return Ok(()),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&path).map_err(failed(&format!(
                    "creating the working directory {}",
                    process.cwd().display()
                )))?;
            }
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Sets the guest clock from the host's when they differ by more than a second.
pub fn set_clock(host_time_ns: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    if (now - host_time_ns as i128).abs() < 1_000_000_000 {
        return;
    }
    let time = libc::timespec {
        tv_sec: (host_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (host_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime with a valid timespec.
    unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        HookBuilder, HooksBuilder, LinuxBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
        ProcessBuilder,
    };

    #[test]
    fn the_guest_spec_keeps_the_pids_limit_and_drops_hooks_and_vm_sized_limits() {
        let mut spec = Spec::default();
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(vec!["true".to_string()])
                .build()
                .unwrap(),
        ));
        spec.set_hooks(Some(
            HooksBuilder::default()
                .create_container(vec![
                    HookBuilder::default().path("/bin/hook").build().unwrap(),
                ])
                .build()
                .unwrap(),
        ));
        let resources = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(64).build().unwrap())
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .resources(resources)
                .cgroups_path(PathBuf::from("/machine.slice/x"))
                .build()
                .unwrap(),
        ));
        let guest = guest_spec(spec, Path::new("/run/twinbox/rootfs")).unwrap();
        assert_eq!(
            guest.root().as_ref().unwrap().path(),
            Path::new("/run/twinbox/rootfs")
        );
        assert!(guest.hooks().is_none());
        let linux = guest.linux().as_ref().unwrap();
        assert!(linux.cgroups_path().is_none());
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 64);
        assert!(resources.memory().is_none());
    }

    #[test]
    fn a_missing_working_directory_is_created_but_not_through_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", root.path().join("link")).unwrap();
        let with_cwd = |cwd: &str| {
            let mut spec = Spec::default();
            spec.process_mut().as_mut().unwrap().set_cwd(cwd.into());
            spec
        };
        create_cwd(&with_cwd("/srv/new/deep"), root.path()).unwrap();
        assert!(root.path().join("srv/new/deep").is_dir());
        create_cwd(&with_cwd("/link/escaped"), root.path()).unwrap();
        assert!(!Path::new("/escaped").exists());
    }

    #[test]
    fn a_spec_without_process_is_refused() {
        let mut spec = Spec::default();
        spec.set_process(None);
        let error = guest_spec(spec, Path::new("/r")).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid);
    }

    /// Mounting needs root and the filesystems; the test runs as root on the dev machine.
    #[test]
    fn rootfs_is_an_overlay_of_the_image_under_a_writable_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("content");
        std::fs::create_dir(&content).unwrap();
        std::fs::write(content.join("hello"), "from the image").unwrap();
        let image = dir.path().join("image.erofs");
        let status = std::process::Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&image)
            .arg(&content)
            .status()
            .unwrap();
        assert!(status.success());
        let device = loop_device(&image);
        let layout = Layout::under(&dir.path().join("run"));
        let setup = RootfsSetup {
            device: device.clone(),
            fstype: "erofs".into(),
            writable: WritableLayer::Tmpfs,
        };
        let result = assemble_rootfs(&setup, &layout);
        let cleanup = || {
            for target in [&layout.rootfs, &layout.writable, &layout.image] {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = std::process::Command::new("losetup")
                .args(["-d", &device])
                .status();
        };
        let check = || {
            let root = result.as_ref().unwrap();
            assert_eq!(
                std::fs::read_to_string(root.join("hello")).unwrap(),
                "from the image"
            );
            std::fs::write(root.join("new"), "written").unwrap();
            assert_eq!(
                std::fs::read_to_string(layout.writable.join("upper/new")).unwrap(),
                "written"
            );
            // The image itself stays read-only.
            assert!(std::fs::write(layout.image.join("x"), "no").is_err());
        };
        let outcome = std::panic::catch_unwind(check);
        cleanup();
        outcome.unwrap();
    }

    fn loop_device(image: &Path) -> String {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}
