//! The container's root filesystem: propagation, the spec's mounts, device nodes and /dev
//! symlinks, pivot_root (or MS_MOVE + chroot), masked and read-only paths.
//!
//! Every function takes the [`Syscall`] seam, so the whole mount plan is unit-tested with a
//! recording fake.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use crate::cgroups::Hierarchy;
use crate::path::secure_join;
use crate::syscall::Syscall;

/// Errors while building the container's root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A mount failed.
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        /// What was mounted (type or source).
        what: String,
        /// Where, inside the container.
        target: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Any other step failed.
    #[error("{step}: {source}")]
    Step {
        /// The step, e.g. "creating device /dev/null".
        step: String,
        /// The OS error.
        source: io::Error,
    },
    /// The config asks for something invalid.
    #[error("invalid config: {0}")]
    Invalid(String),
}

fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> RootfsError {
    let step = step.into();
    move |source| RootfsError::Step { step, source }
}

/// Mount flags and data parsed from an OCI mount's `options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Propagation flags, applied by a second mount call.
    pub propagation: MsFlags,
    /// Options the filesystem interprets (comma-separated).
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
        }
    }
}

impl MountOptions {
    /// Parses OCI/fstab-style mount options.
    pub fn parse(options: &[String]) -> Self {
        let mut parsed = MountOptions::default();
        let mut data = Vec::new();
        for option in options {
            let (set, clear) = match option.as_str() {
                "defaults" => (MsFlags::empty(), MsFlags::empty()),
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
                "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
                "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
                "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
                "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
                "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
                "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                | "unbindable" | "runbindable" => {
                    parsed.propagation |= propagation_flags(option).unwrap_or(MsFlags::empty());
                    continue;
                }
                // runc extensions that carry no mount flag here.
                "tmpcopyup" | "rro" | "rrw" | "idmap" | "ridmap" => continue,
                other => {
                    data.push(other.to_string());
                    continue;
                }
            };
            parsed.flags.insert(set);
            parsed.flags.remove(clear);
        }
        parsed.data = data.join(",");
        parsed
    }

    fn data(&self) -> Option<&str> {
        (!self.data.is_empty()).then_some(self.data.as_str())
    }
}

/// Propagation flags for one of the propagation keywords of mounts and `rootfsPropagation`.
pub fn propagation_flags(keyword: &str) -> Option<MsFlags> {
    Some(match keyword {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// What the rootfs setup needs to know besides the mounts themselves.
#[derive(Debug, Clone)]
pub struct RootfsConfig {
    /// Absolute path of the container's root filesystem on the host.
    pub rootfs: PathBuf,
    /// The spec's mounts, in order.
    pub mounts: Vec<Mount>,
    /// The spec's extra devices.
    pub devices: Vec<LinuxDevice>,
    /// `linux.rootfsPropagation` (default rslave).
    pub propagation: Option<String>,
    /// Setup runs in a new user namespace: device nodes are bind-mounted from the host
    /// instead of created.
    pub in_user_namespace: bool,
    /// The container has its own cgroup namespace (cgroup mounts show its own subtree).
    pub cgroup_namespace: bool,
    /// The host's cgroup hierarchies, and the container's path in them.
    pub cgroup_hierarchies: Vec<Hierarchy>,
}

/// Devices every container gets (runtime spec config-linux.md "Default Devices").
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Makes the mount namespace private from the host, bind-mounts the rootfs onto itself,
/// performs the spec's mounts, creates device nodes and the /dev symlinks. Runs in the new
/// mount namespace, before pivot_root.
pub fn prepare(sys: &dyn Syscall, config: &RootfsConfig) -> Result<(), RootfsError> {
    let propagation = match config.propagation.as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(keyword) => propagation_flags(keyword).ok_or_else(|| {
            RootfsError::Invalid(format!(
                "rootfsPropagation {keyword:?} is not one of private, rprivate, shared, \
                 rshared, slave, rslave, unbindable, runbindable"
            ))
        })?,
    };
    // The container's mount events must not reach the host (rslave at least while building).
    let building = if propagation.contains(MsFlags::MS_SHARED) {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    } else {
        propagation
    };
    mount(
        sys,
        None,
        Path::new("/"),
        None,
        building | MsFlags::MS_REC,
        None,
    )?;
    let rootfs = &config.rootfs;
    mount(
        sys,
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if propagation.contains(MsFlags::MS_SHARED) {
        mount(sys, None, rootfs, None, propagation, None)?;
    }
    for m in &config.mounts {
        mount_entry(sys, config, m)?;
    }
    create_devices(sys, config)?;
    create_dev_symlinks(sys, config)?;
    Ok(())
}

fn mount(
    sys: &dyn Syscall,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    sys.mount(source, target, fstype, flags, data)
        .map_err(|source_err| RootfsError::Mount {
            what: fstype
                .map(str::to_string)
                .or_else(|| source.map(|s| s.display().to_string()))
                .unwrap_or_else(|| format!("flags {flags:?}")),
            target: target.to_path_buf(),
            source: source_err,
        })
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn mount_entry(sys: &dyn Syscall, config: &RootfsConfig, m: &Mount) -> Result<(), RootfsError> {
    let destination = m.destination();
    if !destination.is_absolute() {
        return Err(RootfsError::Invalid(format!(
            "mount destination {} is not absolute",
            destination.display()
        )));
    }
    let target = secure_join(&config.rootfs, destination)
        .map_err(step(format!("resolving {}", destination.display())))?;
    let options = MountOptions::parse(m.options().as_deref().unwrap_or_default());
    let fstype = m.typ().as_deref().unwrap_or("none");
    if is_bind(m) {
        let source = m.source().as_deref().ok_or_else(|| {
            RootfsError::Invalid(format!(
                "bind mount on {} has no source",
                destination.display()
            ))
        })?;
        bind_mount(sys, source, &target, &options)?;
    } else if fstype == "cgroup" || fstype == "cgroup2" {
        mount_cgroups(sys, config, &target, &options)?;
    } else {
        sys.mkdir_all(&target).map_err(step(format!(
            "creating mount point {}",
            destination.display()
        )))?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(fstype));
        let result = sys.mount(
            Some(&source),
            &target,
            Some(fstype),
            options.flags,
            options.data(),
        );
        match result {
            // sysfs cannot be mounted in a user namespace that does not own the network
            // namespace: bind the host's /sys instead (as runc does).
            Err(e) if fstype == "sysfs" && e.raw_os_error() == Some(libc::EPERM) => {
                bind_mount(
                    sys,
                    Path::new("/sys"),
                    &target,
                    &MountOptions {
                        flags: options.flags | MsFlags::MS_BIND | MsFlags::MS_REC,
                        ..MountOptions::default()
                    },
                )?;
            }
            other => other.map_err(|source_err| RootfsError::Mount {
                what: fstype.to_string(),
                target: destination.to_path_buf(),
                source: source_err,
            })?,
        }
    }
    if !options.propagation.is_empty() {
        mount(sys, None, &target, None, options.propagation, None)?;
    }
    Ok(())
}

/// Bind-mounts `source` on `target` (creating a file or directory mount point to match), then
/// remounts to apply flags such as ro/nosuid that a bind mount ignores.
fn bind_mount(
    sys: &dyn Syscall,
    source: &Path,
    target: &Path,
    options: &MountOptions,
) -> Result<(), RootfsError> {
    let is_dir = std::fs::metadata(source)
        .map(|m| m.is_dir())
        .unwrap_or(true);
    if is_dir {
        sys.mkdir_all(target)
    } else {
        sys.create_file(target)
    }
    .map_err(step(format!("creating mount point {}", target.display())))?;
    let bind_flags = MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC);
    mount(sys, Some(source), target, None, bind_flags, None)?;
    let extra = options.flags - MsFlags::MS_BIND - MsFlags::MS_REC - MsFlags::MS_REMOUNT;
    if !extra.is_empty() {
        mount(
            sys,
            None,
            target,
            None,
            extra | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | locked_flags(target),
            None,
        )?;
    }
    Ok(())
}

/// The flags of the mount at `path` that an unprivileged remount must keep (nosuid, nodev,
/// noexec, atime), so that a remount inside a user namespace is not refused.
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Ok(stat) = statvfs(path) else {
        return MsFlags::empty();
    };
    let flags = stat.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if flags.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Mounts the cgroup filesystem(s) at `target`: with a cgroup namespace, fresh cgroup mounts
/// (which show the container's subtree as root); without one, bind mounts of the container's
/// own cgroup directories. cgroup v1 gets a tmpfs with one directory per hierarchy.
fn mount_cgroups(
    sys: &dyn Syscall,
    config: &RootfsConfig,
    target: &Path,
    options: &MountOptions,
) -> Result<(), RootfsError> {
    let flags = options.flags - MsFlags::MS_BIND - MsFlags::MS_REC;
    sys.mkdir_all(target)
        .map_err(step(format!("creating mount point {}", target.display())))?;
    let unified_only = matches!(config.cgroup_hierarchies.as_slice(), [h] if h.is_unified());
    if unified_only {
        return mount_hierarchy(sys, config, &config.cgroup_hierarchies[0], target, flags);
    }
    mount(
        sys,
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )?;
    for hierarchy in &config.cgroup_hierarchies {
        let dir = target.join(&hierarchy.mount_name);
        sys.mkdir_all(&dir)
            .map_err(step(format!("creating {}", dir.display())))?;
        mount_hierarchy(sys, config, hierarchy, &dir, flags)?;
        // Combined hierarchies such as "cpu,cpuacct" get a symlink per controller.
        if hierarchy.mount_name.contains(',') {
            for controller in hierarchy.mount_name.split(',') {
                let link = target.join(controller);
                sys.symlink(Path::new(&hierarchy.mount_name), &link)
                    .map_err(step(format!("creating {}", link.display())))?;
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            sys,
            None,
            target,
            None,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            Some("mode=755"),
        )?;
    }
    Ok(())
}

fn mount_hierarchy(
    sys: &dyn Syscall,
    config: &RootfsConfig,
    hierarchy: &Hierarchy,
    dir: &Path,
    flags: MsFlags,
) -> Result<(), RootfsError> {
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | flags;
    // A user namespace may mount cgroup2 (in its own cgroup namespace) but never cgroup v1:
    // v1 hierarchies are bind-mounted from the host then.
    let fresh = config.cgroup_namespace && (hierarchy.is_unified() || !config.in_user_namespace);
    if fresh {
        let (fstype, data) = if hierarchy.is_unified() {
            ("cgroup2", None)
        } else {
            ("cgroup", Some(hierarchy.mount_options.as_str()))
        };
        mount(sys, Some(Path::new(fstype)), dir, Some(fstype), base, data)
    } else {
        bind_mount(
            sys,
            &hierarchy.container_dir(),
            dir,
            &MountOptions {
                flags: base | MsFlags::MS_BIND,
                ..MountOptions::default()
            },
        )
    }
}

fn device_number(major: i64, minor: i64) -> u64 {
    nix::sys::stat::makedev(major as u64, minor as u64)
}

fn create_devices(sys: &dyn Syscall, config: &RootfsConfig) -> Result<(), RootfsError> {
    let defaults = DEFAULT_DEVICES
        .iter()
        .filter(|(path, _, _)| !config.devices.iter().any(|d| d.path() == Path::new(path)));
    for (path, major, minor) in defaults {
        let device = oci_spec::runtime::LinuxDeviceBuilder::default()
            .path(*path)
            .typ(LinuxDeviceType::C)
            .major(*major as i64)
            .minor(*minor as i64)
            .file_mode(0o666u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .map_err(|e| RootfsError::Invalid(e.to_string()))?;
        create_device(sys, config, &device)?;
    }
    for device in &config.devices {
        create_device(sys, config, device)?;
    }
    Ok(())
}

fn create_device(
    sys: &dyn Syscall,
    config: &RootfsConfig,
    device: &LinuxDevice,
) -> Result<(), RootfsError> {
    let path = device.path();
    if !path.starts_with("/dev") {
        return Err(RootfsError::Invalid(format!(
            "device {} is not under /dev",
            path.display()
        )));
    }
    let target =
        secure_join(&config.rootfs, path).map_err(step(format!("resolving {}", path.display())))?;
    if let Some(parent) = target.parent() {
        sys.mkdir_all(parent)
            .map_err(step(format!("creating {}", parent.display())))?;
    }
    if config.in_user_namespace {
        // mknod is not allowed in a user namespace: bind the host's node.
        return bind_mount(
            sys,
            path,
            &target,
            &MountOptions {
                flags: MsFlags::MS_BIND,
                ..MountOptions::default()
            },
        );
    }
    let kind = match device.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(RootfsError::Invalid(format!(
                "device {} has type \"a\", which is only valid in cgroup device rules",
                path.display()
            )));
        }
    };
    let mode = Mode::from_bits_truncate(device.file_mode().unwrap_or(0o666));
    match sys.mknod(
        &target,
        kind,
        mode,
        device_number(device.major(), device.minor()),
    ) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        other => other.map_err(step(format!("creating device {}", path.display())))?,
    }
    sys.chown(
        &target,
        device.uid().unwrap_or(0),
        device.gid().unwrap_or(0),
    )
    .map_err(step(format!("chown of device {}", path.display())))
}

fn create_dev_symlinks(sys: &dyn Syscall, config: &RootfsConfig) -> Result<(), RootfsError> {
    let dev = config.rootfs.join("dev");
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    let has_devpts = config
        .mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev/pts") && m.typ().as_deref() == Some("devpts"));
    for (target, name) in links {
        symlink_if_missing(sys, Path::new(target), &dev.join(name))?;
    }
    if has_devpts {
        let ptmx = dev.join("ptmx");
        if ptmx.symlink_metadata().is_ok() {
            std::fs::remove_file(&ptmx).map_err(step(format!("removing {}", ptmx.display())))?;
        }
        symlink_if_missing(sys, Path::new("pts/ptmx"), &ptmx)?;
    }
    Ok(())
}

fn symlink_if_missing(sys: &dyn Syscall, target: &Path, link: &Path) -> Result<(), RootfsError> {
    match sys.symlink(target, link) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map_err(step(format!("creating symlink {}", link.display()))),
    }
}

/// Makes `rootfs` the root: pivot_root, then detaches the old root (made rslave first, so
/// the unmount does not propagate to the host).
pub fn pivot_root(sys: &dyn Syscall, rootfs: &Path) -> Result<(), RootfsError> {
    sys.chdir(rootfs)
        .map_err(step(format!("chdir to {}", rootfs.display())))?;
    let dot = Path::new(".");
    sys.pivot_root(dot, dot).map_err(step("pivot_root"))?;
    mount(
        sys,
        None,
        dot,
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    sys.umount2(dot, MntFlags::MNT_DETACH)
        .map_err(step("detaching the old root"))?;
    sys.chdir(Path::new("/")).map_err(step("chdir to /"))
}

/// The `--no-pivot` fallback (for roots where pivot_root is impossible, e.g. a ramfs):
/// move the rootfs mount over / and chroot into it.
pub fn move_root(sys: &dyn Syscall, rootfs: &Path) -> Result<(), RootfsError> {
    sys.chdir(rootfs)
        .map_err(step(format!("chdir to {}", rootfs.display())))?;
    mount(
        sys,
        Some(rootfs),
        Path::new("/"),
        None,
        MsFlags::MS_MOVE,
        None,
    )?;
    sys.chroot(Path::new(".")).map_err(step("chroot"))?;
    sys.chdir(Path::new("/")).map_err(step("chdir to /"))
}

/// Hides `paths` (a tmpfs over directories, /dev/null over files). `root` is `/` in the
/// container (after pivot_root); missing paths are skipped.
pub fn mask_paths(sys: &dyn Syscall, root: &Path, paths: &[String]) -> Result<(), RootfsError> {
    for path in paths {
        let target = root.join(path.trim_start_matches('/'));
        let Ok(meta) = std::fs::metadata(&target) else {
            continue;
        };
        if meta.is_dir() {
            mount(
                sys,
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?;
        } else {
            mount(
                sys,
                Some(&root.join("dev/null")),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    Ok(())
}

/// Makes `paths` read-only (bind onto itself, then remount ro keeping the locked flags).
pub fn readonly_paths(sys: &dyn Syscall, root: &Path, paths: &[String]) -> Result<(), RootfsError> {
    for path in paths {
        let target = root.join(path.trim_start_matches('/'));
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        mount(
            sys,
            Some(&target),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        remount_readonly(sys, &target)?;
    }
    Ok(())
}

/// Remounts the bind mount at `target` read-only.
pub fn remount_readonly(sys: &dyn Syscall, target: &Path) -> Result<(), RootfsError> {
    mount(
        sys,
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(target),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::fake::{Call, RecordingSyscall};

    fn spec_mounts() -> Vec<Mount> {
        oci_spec::runtime::get_default_mounts()
    }

    fn config(rootfs: &Path) -> RootfsConfig {
        RootfsConfig {
            rootfs: rootfs.to_path_buf(),
            mounts: spec_mounts(),
            devices: Vec::new(),
            propagation: None,
            in_user_namespace: false,
            cgroup_namespace: true,
            cgroup_hierarchies: vec![Hierarchy {
                mount_name: String::new(),
                mount_options: String::new(),
                host_mount: PathBuf::from("/sys/fs/cgroup"),
                path: PathBuf::from("/twinbox/c1"),
            }],
        }
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let opts: Vec<String> = [
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rslave",
            "ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parsed = MountOptions::parse(&opts);
        assert_eq!(
            parsed.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY
        );
        assert_eq!(parsed.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(parsed.data, "mode=755,size=65536k");
        let rw = MountOptions::parse(&["ro".into(), "rw".into()]);
        assert!(!rw.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn prepare_mounts_in_spec_order_after_making_root_private() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path();
        let sys = RecordingSyscall::default();
        prepare(&sys, &config(rootfs)).unwrap();
        let mounts = sys.mounts();
        assert_eq!(
            mounts[0],
            Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_SLAVE | MsFlags::MS_REC,
                data: None
            }
        );
        let Call::Mount {
            source,
            target,
            flags,
            ..
        } = &mounts[1]
        else {
            unreachable!()
        };
        assert_eq!(source.as_deref(), Some(rootfs));
        assert_eq!(target, rootfs);
        assert_eq!(*flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        let types: Vec<(String, PathBuf)> = mounts[2..]
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    fstype: Some(t),
                    target,
                    ..
                } => Some((t.clone(), target.clone())),
                _ => None,
            })
            .collect();
        let expected: Vec<(String, PathBuf)> = [
            ("proc", "proc"),
            ("tmpfs", "dev"),
            ("devpts", "dev/pts"),
            ("tmpfs", "dev/shm"),
            ("mqueue", "dev/mqueue"),
            ("sysfs", "sys"),
            ("cgroup2", "sys/fs/cgroup"),
        ]
        .iter()
        .map(|(t, p)| (t.to_string(), rootfs.join(p)))
        .collect();
        assert_eq!(types, expected);
        // The default devices are created and /dev/ptmx points into the devpts mount.
        let calls = sys.calls();
        assert!(calls.contains(&Call::Mknod(
            rootfs.join("dev/null"),
            nix::sys::stat::makedev(1, 3)
        )));
        assert!(calls.contains(&Call::Symlink("pts/ptmx".into(), rootfs.join("dev/ptmx"))));
        assert!(calls.contains(&Call::Symlink(
            "/proc/self/fd".into(),
            rootfs.join("dev/fd")
        )));
    }

    #[test]
    fn user_namespace_binds_devices_and_v1_gets_a_dir_per_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path();
        let mut cfg = config(rootfs);
        cfg.in_user_namespace = true;
        cfg.cgroup_namespace = false;
        cfg.cgroup_hierarchies = vec![
            Hierarchy {
                mount_name: "memory".into(),
                mount_options: "memory".into(),
                host_mount: "/sys/fs/cgroup/memory".into(),
                path: "/twinbox/c1".into(),
            },
            Hierarchy {
                mount_name: "cpu,cpuacct".into(),
                mount_options: "cpu,cpuacct".into(),
                host_mount: "/sys/fs/cgroup/cpu,cpuacct".into(),
                path: "/twinbox/c1".into(),
            },
        ];
        let sys = RecordingSyscall::default();
        prepare(&sys, &cfg).unwrap();
        let calls = sys.calls();
        assert!(!calls.iter().any(|c| matches!(c, Call::Mknod(..))));
        assert!(calls.contains(&Call::Mount {
            source: Some("/dev/null".into()),
            target: rootfs.join("dev/null"),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None
        }));
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Call::Mount { source: Some(s), target, .. }
            if s == Path::new("/sys/fs/cgroup/memory/twinbox/c1")
                && target == &rootfs.join("sys/fs/cgroup/memory")))
        );
        assert!(calls.contains(&Call::Symlink(
            "cpu,cpuacct".into(),
            rootfs.join("sys/fs/cgroup/cpuacct")
        )));
    }

    #[test]
    fn bind_mounts_remount_for_readonly_and_resolve_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("root");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", rootfs.join("link")).unwrap();
        let src = dir.path().join("data");
        std::fs::create_dir(&src).unwrap();
        let mut cfg = config(&rootfs);
        cfg.mounts = vec![
            oci_spec::runtime::MountBuilder::default()
                .destination("/link/data")
                .typ("bind")
                .source(&src)
                .options(vec!["rbind".to_string(), "ro".to_string()])
                .build()
                .unwrap(),
        ];
        let sys = RecordingSyscall::default();
        prepare(&sys, &cfg).unwrap();
        let mounts = sys.mounts();
        let target = rootfs.join("etc/data");
        assert_eq!(
            mounts[2],
            Call::Mount {
                source: Some(src.clone()),
                target: target.clone(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None
            }
        );
        let Call::Mount { flags, .. } = &mounts[3] else {
            unreachable!()
        };
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT | MsFlags::MS_BIND));
    }

    #[test]
    fn relative_destinations_and_bad_propagation_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.propagation = Some("sideways".into());
        let err = prepare(&RecordingSyscall::default(), &cfg).unwrap_err();
        assert!(err.to_string().contains("rootfsPropagation"));
        let mut cfg = config(dir.path());
        cfg.mounts = vec![
            oci_spec::runtime::MountBuilder::default()
                .destination("relative")
                .typ("tmpfs")
                .build()
                .unwrap(),
        ];
        let err = prepare(&RecordingSyscall::default(), &cfg).unwrap_err();
        assert!(err.to_string().contains("not absolute"));
    }

    #[test]
    fn pivot_detaches_old_root_after_making_it_slave() {
        let sys = RecordingSyscall::default();
        pivot_root(&sys, Path::new("/rootfs")).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Chdir("/rootfs".into()),
                Call::PivotRoot(".".into()),
                Call::Mount {
                    source: None,
                    target: ".".into(),
                    fstype: None,
                    flags: MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    data: None
                },
                Call::Umount(".".into()),
                Call::Chdir("/".into()),
            ]
        );
        let sys = RecordingSyscall::default();
        move_root(&sys, Path::new("/rootfs")).unwrap();
        assert!(sys.calls().contains(&Call::Chroot(".".into())));
    }

    #[test]
    fn masked_dirs_get_tmpfs_files_get_dev_null_missing_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc/acpi")).unwrap();
        std::fs::write(root.join("proc/kcore"), "").unwrap();
        let sys = RecordingSyscall::default();
        mask_paths(
            &sys,
            root,
            &[
                "/proc/acpi".into(),
                "/proc/kcore".into(),
                "/proc/missing".into(),
            ],
        )
        .unwrap();
        let mounts = sys.mounts();
        assert_eq!(mounts.len(), 2);
        assert!(
            matches!(&mounts[0], Call::Mount { fstype: Some(t), target, flags, .. }
            if t == "tmpfs" && target == &root.join("proc/acpi") && flags.contains(MsFlags::MS_RDONLY))
        );
        assert!(
            matches!(&mounts[1], Call::Mount { source: Some(s), target, .. }
            if s == &root.join("dev/null") && target == &root.join("proc/kcore"))
        );
        let sys = RecordingSyscall::default();
        readonly_paths(&sys, root, &["/proc/acpi".into(), "/proc/none".into()]).unwrap();
        let mounts = sys.mounts();
        assert_eq!(mounts.len(), 2);
        assert!(matches!(&mounts[1], Call::Mount { flags, .. }
            if flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT)));
    }

    #[test]
    fn sysfs_falls_back_to_binding_host_sys_when_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.mounts.retain(|m| m.typ().as_deref() == Some("sysfs"));
        let sys = RecordingSyscall {
            failing_fstypes: vec!["sysfs"],
            ..Default::default()
        };
        prepare(&sys, &cfg).unwrap();
        assert!(
            sys.calls()
                .iter()
                .any(|c| matches!(c, Call::Mount { source: Some(s), target, .. }
            if s == Path::new("/sys") && target == &dir.path().join("sys")))
        );
    }
}
