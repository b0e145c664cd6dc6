//! The container defaults serious runtimes apply (Docker/containerd values): mounts,
//! devices, device cgroup rules, namespaces, capabilities, masked and read-only paths.

use oci_spec::runtime::{
    Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder,
};

use super::SpecError;

/// Docker's default capability set (14 capabilities).
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (bind-mounted over with /dev/null or an empty tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths mounted read-only in the container.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// [`MASKED_PATHS`] as a spec wants them.
pub fn masked_paths() -> Vec<String> {
    MASKED_PATHS.iter().map(|p| p.to_string()).collect()
}

/// [`READONLY_PATHS`] as a spec wants them.
pub fn readonly_paths() -> Vec<String> {
    READONLY_PATHS.iter().map(|p| p.to_string()).collect()
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(SpecError::build)
}

/// /proc, /dev (tmpfs), /dev/pts, /dev/shm, /dev/mqueue, /sys (read-only) and the cgroup
/// filesystem (read-only).
pub fn mounts() -> Result<Vec<Mount>, SpecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}

/// The standard character devices every container gets: (path, major, minor).
pub const STANDARD_DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Device nodes created in the container's /dev.
pub fn devices() -> Result<Vec<LinuxDevice>, SpecError> {
    STANDARD_DEVICES
        .iter()
        .map(|(path, major, minor)| {
            LinuxDeviceBuilder::default()
                .path(*path)
                .typ(LinuxDeviceType::C)
                .major(*major)
                .minor(*minor)
                .file_mode(0o666u32)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(SpecError::build)
        })
        .collect()
}

/// Device cgroup: deny everything, then allow mknod of any node and access to the
/// standard devices, the console, ptmx, the pty slaves and /dev/net/tun (as Docker does).
pub fn device_cgroup() -> Result<LinuxResources, SpecError> {
    let rule = |allow: bool,
                typ: LinuxDeviceType,
                major: Option<i64>,
                minor: Option<i64>,
                access: &str| {
        let mut builder = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(major) = major {
            builder = builder.major(major);
        }
        if let Some(minor) = minor {
            builder = builder.minor(minor);
        }
        builder.build().map_err(SpecError::build)
    };
    let mut rules = vec![
        rule(false, LinuxDeviceType::A, None, None, "rwm")?,
        rule(true, LinuxDeviceType::C, None, None, "m")?,
        rule(true, LinuxDeviceType::B, None, None, "m")?,
    ];
    for (_, major, minor) in STANDARD_DEVICES {
        rules.push(rule(
            true,
            LinuxDeviceType::C,
            Some(*major),
            Some(*minor),
            "rwm",
        )?);
    }
    for (major, minor) in [(5, Some(1)), (5, Some(2)), (136, None), (10, Some(200))] {
        rules.push(rule(true, LinuxDeviceType::C, Some(major), minor, "rwm")?);
    }
    LinuxResourcesBuilder::default()
        .devices(rules)
        .build()
        .map_err(SpecError::build)
}

/// New pid, network, ipc, uts and mount namespaces; a cgroup namespace too where the host
/// is pure cgroup v2 (as Docker does).
pub fn namespaces() -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        types.push(LinuxNamespaceType::Cgroup);
    }
    types
        .into_iter()
        .map(|typ| {
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(SpecError::build)
        })
        .collect()
}
