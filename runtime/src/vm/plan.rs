//! From a container's OCI spec to a VM: guest RAM and vCPUs from its limits, disks for its
//! root filesystem and volumes, small files by value, and the spec the guest agent applies.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Mount, Spec};
use twinbox_protocol::{
    CreateRequest, FileSetup, RootfsSetup, VolumeSetup, WritableLayer, disk_device, file_path,
    volume_dir,
};

use super::VmError;
use super::disk::{self, AGENT_INIT, DISK_FSTYPE, ROOTFS_FSTYPE};
use crate::config::VmSettings;

/// Guest RAM when neither the container nor the config gives one.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// The least guest RAM the kernel and agent boot in.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Largest file a bind mount may hand to the guest by value.
pub const MAX_FILE: u64 = 1 << 20;
/// Most vCPUs.
pub const MAX_VCPUS: u8 = 32;

/// The kernel command line after the root (the VMM adds its devices): reset through the
/// i8042 (which ends the VMM), reboot at once on a panic (the host then reports it), quiet
/// console.
pub const KERNEL_CMDLINE: &str = "reboot=k panic=-1 pci=off nomodule quiet";

/// The agent disk's place among the disks: first, the kernel's root.
const AGENT_DISK: usize = 0;

/// The root filesystem image's place among the disks (after the agent disk).
const ROOTFS_DISK: usize = 1;

/// A disk of the VM, in order (`/dev/vda`, `/dev/vdb`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// The image file on the host.
    pub host: PathBuf,
    /// Attached read-only.
    pub read_only: bool,
}

/// A VM for one container.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Disks: the agent disk, then the root filesystem image, then volumes.
    pub disks: Vec<DiskPlan>,
    /// Host directories that get the changes of read-write volumes: (volume index, dir).
    pub sync_dirs: Vec<(u32, PathBuf)>,
    /// What the guest agent gets.
    pub request: CreateRequest,
    /// The guest kernel command line.
    pub cmdline: String,
}

/// Inputs of [`build`] besides the spec.
#[derive(Debug)]
pub struct PlanInputs<'a> {
    /// The config file's `[vm]` section.
    pub settings: &'a VmSettings,
    /// The agent disk, the guest's root (see [`disk::DiskCache::agent_disk`]).
    pub agent_disk: PathBuf,
    /// The root filesystem image.
    pub rootfs_image: PathBuf,
    /// A directory for this VM's own disks (volumes, writable layer).
    pub scratch: &'a Path,
}

fn unsupported(message: String) -> VmError {
    VmError::Unsupported(message)
}

/// Parses a size such as `256M`; errors name the setting.
fn size_setting(name: &str, value: &str) -> Result<u64, VmError> {
    vmm::parse_mem_size(value).map_err(|e| VmError::Settings(format!("{name}: {e}")))
}

/// Guest RAM: the container's memory limit, else the config's `[vm] memory`, else 256 MiB.
pub fn memory(spec: &Spec, settings: &VmSettings) -> Result<u64, VmError> {
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0);
    let bytes = match (limit, &settings.memory) {
        (Some(limit), _) => limit as u64,
        (None, Some(text)) => size_setting("[vm] memory", text)?,
        (None, None) => DEFAULT_MEMORY,
    };
    if bytes < MIN_MEMORY {
        return Err(unsupported(format!(
            "a VM needs at least {} MiB of memory for its kernel and agent, {} MiB were \
             asked for; give --memory 64m or more",
            MIN_MEMORY >> 20,
            bytes >> 20
        )));
    }
    Ok(bytes.div_ceil(1 << 20) << 20)
}

/// vCPUs: the container's CPU quota rounded up, else the size of its cpuset, else the
/// config's `[vm] cpus`, else 1.
pub fn vcpus(spec: &Spec, settings: &VmSettings) -> u8 {
    let cpu = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref());
    let from_quota = cpu.and_then(|c| match (c.quota(), c.period()) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => {
            Some((quota as u64).div_ceil(period))
        }
        _ => None,
    });
    let from_cpuset = cpu
        .and_then(|c| c.cpus().as_deref())
        .and_then(cpuset_size)
        .map(|n| n as u64);
    let count = from_quota
        .or(from_cpuset)
        .or(settings.cpus.map(u64::from))
        .unwrap_or(1);
    count.clamp(1, u64::from(MAX_VCPUS)) as u8
}

/// Number of CPUs in a cpuset list such as `0-3,6`.
fn cpuset_size(list: &str) -> Option<usize> {
    let mut count = 0;
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        count += match part.trim().split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => part.trim().parse::<usize>().map(|_| 1).ok()?,
        };
    }
    (count > 0).then_some(count)
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn is_read_only(mount: &Mount) -> bool {
    mount
        .options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|o| o == "ro"))
}

/// What the VM gets for the container's mounts; fills `disks`, `volumes` and `files`.
struct MountPlanner<'a> {
    scratch: &'a Path,
    disks: Vec<DiskPlan>,
    volumes: Vec<VolumeSetup>,
    sync_dirs: Vec<(u32, PathBuf)>,
    files: Vec<FileSetup>,
}

impl MountPlanner<'_> {
    fn plan(&mut self, mut mount: Mount) -> Result<Mount, VmError> {
        if !is_bind(&mount) {
            return Ok(mount);
        }
        let destination = mount.destination().clone();
        let source = mount.source().clone().ok_or_else(|| {
            unsupported(format!(
                "the bind mount on {} has no source",
                destination.display()
            ))
        })?;
        let meta = std::fs::metadata(&source).map_err(|e| {
            unsupported(format!(
                "the bind mount source {} (for {}) cannot be used: {e}",
                source.display(),
                destination.display()
            ))
        })?;
        if destination == Path::new("/dev/shm") {
            // The engine's shared-memory directory: the guest has its own.
            mount.set_typ(Some("tmpfs".into()));
            mount.set_source(Some("shm".into()));
            mount.set_options(Some(
                ["nosuid", "nodev", "noexec", "mode=1777"]
                    .map(String::from)
                    .to_vec(),
            ));
            return Ok(mount);
        }
        if meta.is_file() {
            if meta.len() > MAX_FILE {
                return Err(unsupported(format!(
                    "{} is {} KiB; a VM receives bind-mounted files of at most {} KiB by \
                     value: mount its directory instead",
                    source.display(),
                    meta.len() >> 10,
                    MAX_FILE >> 10
                )));
            }
            let bytes = std::fs::read(&source).map_err(VmError::io("reading", &source))?;
            mount.set_source(Some(PathBuf::from(file_path(self.files.len()))));
            self.files.push(FileSetup::new(
                &bytes,
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
            ));
            return Ok(mount);
        }
        if !meta.is_dir() {
            let kind = match meta.file_type() {
                t if t.is_block_device() => "a block device",
                t if t.is_char_device() => "a character device",
                t if t.is_socket() => "a socket",
                t if t.is_fifo() => "a fifo",
                _ => "not a file or directory",
            };
            return Err(unsupported(format!(
                "the bind mount source {} is {kind}; a VM can receive directories (as disks) \
                 and small files only",
                source.display()
            )));
        }
        let read_only = is_read_only(&mount);
        let index = self.volumes.len();
        let image = self.scratch.join(format!("volume-{index}.{DISK_FSTYPE}"));
        disk::volume_disk(&source, &image)?;
        let device = disk_device(self.disks.len());
        self.disks.push(DiskPlan {
            host: image,
            read_only,
        });
        self.volumes.push(VolumeSetup {
            device,
            fstype: DISK_FSTYPE.into(),
            read_only,
            sync_back: !read_only,
        });
        if !read_only {
            self.sync_dirs.push((index as u32, source.clone()));
        }
        mount.set_source(Some(PathBuf::from(volume_dir(index))));
        Ok(mount)
    }
}

/// Namespaces as the guest creates them: joining a host namespace (a path) means nothing
/// inside the VM, so those become new namespaces; and the workload shares the VM's network
/// namespace, as Kata's containers share their sandbox VM's. The VM's own network stack is
/// the workload's wall from the host's network; a second one inside the guest isolated only
/// the loopback device of a VM that runs nothing else, and cost ~20 ms of every start under
/// nested virtualization (creating and tearing down a network namespace).
fn guest_namespaces(namespaces: &[LinuxNamespace]) -> Vec<LinuxNamespace> {
    namespaces
        .iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .map(|ns| {
            let mut ns = ns.clone();
            if let Some(path) = ns.path().clone() {
                tracing::info!(
                    "the {:?} namespace {} is on the host; the VM's workload gets a new one",
                    ns.typ(),
                    path.display()
                );
                ns.set_path(None);
            }
            ns
        })
        .collect()
}

/// Plans the VM for `spec`.
pub fn build(spec: &Spec, inputs: PlanInputs<'_>) -> Result<Plan, VmError> {
    let settings = inputs.settings;
    let memory = memory(spec, settings)?;
    let vcpus = vcpus(spec, settings);
    std::fs::create_dir_all(inputs.scratch).map_err(VmError::io("creating", inputs.scratch))?;
    let mut planner = MountPlanner {
        scratch: inputs.scratch,
        disks: vec![
            DiskPlan {
                host: inputs.agent_disk,
                read_only: true,
            },
            DiskPlan {
                host: inputs.rootfs_image,
                read_only: true,
            },
        ],
        volumes: Vec::new(),
        sync_dirs: Vec::new(),
        files: Vec::new(),
    };
    let writable = match &settings.writable_disk {
        Some(size) => {
            let size = size_setting("[vm] writable_disk", size)?;
            let image = inputs.scratch.join(format!("writable.{DISK_FSTYPE}"));
            disk::empty_disk(&image, size)?;
            let device = disk_device(planner.disks.len());
            planner.disks.push(DiskPlan {
                host: image,
                read_only: false,
            });
            WritableLayer::Disk {
                device,
                fstype: DISK_FSTYPE.into(),
            }
        }
        None => WritableLayer::Tmpfs,
    };
    let mut guest = spec.clone();
    let mounts = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| planner.plan(m))
        .collect::<Result<Vec<_>, _>>()?;
    guest.set_mounts(Some(mounts));
    if let Some(mut linux) = guest.linux().clone() {
        if let Some(namespaces) = linux.namespaces() {
            linux.set_namespaces(Some(guest_namespaces(namespaces)));
        }
        guest.set_linux(Some(linux));
    }
    // The agent disk is the read-only root, the agent on it the init.
    let mut cmdline = format!(
        "root={} rootfstype={ROOTFS_FSTYPE} ro init={AGENT_INIT} {KERNEL_CMDLINE}",
        disk_device(AGENT_DISK)
    );
    if let Some(extra) = settings.kernel_args.as_deref().map(str::trim)
        && !extra.is_empty()
    {
        cmdline = format!("{cmdline} {extra}");
    }
    // Compiled here, where the program cache is: libseccomp's compile of Docker's profile
    // took ~0.45 s of every VM start in the guest under nested virtualization.
    let seccomp_program = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(twinbox_sandbox::seccomp::program_bytes)
        .transpose()
        .map_err(|e| VmError::Settings(format!("the seccomp profile: {e}")))?;
    Ok(Plan {
        memory,
        vcpus,
        request: CreateRequest {
            spec: guest,
            rootfs: RootfsSetup {
                device: disk_device(ROOTFS_DISK),
                fstype: ROOTFS_FSTYPE.into(),
                writable,
            },
            volumes: planner.volumes,
            files: planner.files,
            host_time_ns: 0,
            start: false,
            seccomp_program,
            entropy: None,
        },
        disks: planner.disks,
        sync_dirs: planner.sync_dirs,
        cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
        LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder,
    };

    fn spec_with(resources: oci_spec::runtime::LinuxResources, mounts: Vec<Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.set_mounts(Some(mounts));
        spec.set_linux(Some(
            LinuxBuilder::default()
                .resources(resources)
                .namespaces(vec![
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Ipc)
                        .path("/proc/1234/ns/ipc")
                        .build()
                        .unwrap(),
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Network)
                        .path("/run/netns/podman")
                        .build()
                        .unwrap(),
                ])
                .build()
                .unwrap(),
        ));
        spec
    }

    fn bind(source: &Path, destination: &str, ro: bool) -> Mount {
        let mut options = vec!["rbind".to_string()];
        if ro {
            options.push("ro".into());
        }
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(options)
            .build()
            .unwrap()
    }

    #[test]
    fn limits_become_guest_ram_and_vcpus() {
        let settings = VmSettings::default();
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(300 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(150_000)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let spec = spec_with(resources, Vec::new());
        assert_eq!(memory(&spec, &settings).unwrap(), 300 << 20);
        assert_eq!(vcpus(&spec, &settings), 2, "1.5 CPUs round up");

        let none = Spec::default();
        assert_eq!(memory(&none, &settings).unwrap(), DEFAULT_MEMORY);
        assert_eq!(vcpus(&none, &settings), 1);
        let configured = VmSettings {
            memory: Some("512M".into()),
            cpus: Some(3),
            ..VmSettings::default()
        };
        assert_eq!(memory(&none, &configured).unwrap(), 512 << 20);
        assert_eq!(vcpus(&none, &configured), 3);

        let tiny = spec_with(
            LinuxResourcesBuilder::default()
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(6 << 20)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
            Vec::new(),
        );
        let error = memory(&tiny, &settings).unwrap_err().to_string();
        assert!(error.contains("at least 64 MiB"), "{error}");

        let pinned = spec_with(
            LinuxResourcesBuilder::default()
                .cpu(LinuxCpuBuilder::default().cpus("0-2,5").build().unwrap())
                .build()
                .unwrap(),
            Vec::new(),
        );
        assert_eq!(vcpus(&pinned, &settings), 4);
    }

    #[test]
    fn mounts_become_disks_files_and_guest_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("f"), "x").unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let shm = dir.path().join("shm");
        std::fs::create_dir(&shm).unwrap();
        let proc = MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .build()
            .unwrap();
        let spec = spec_with(
            LinuxResourcesBuilder::default().build().unwrap(),
            vec![
                proc.clone(),
                bind(&data, "/data", false),
                bind(&data, "/config", true),
                bind(&hosts, "/etc/hosts", true),
                bind(&shm, "/dev/shm", false),
            ],
        );
        let scratch = dir.path().join("scratch");
        let plan = build(
            &spec,
            PlanInputs {
                settings: &VmSettings::default(),
                agent_disk: dir.path().join("agent.erofs"),
                rootfs_image: dir.path().join("rootfs.erofs"),
                scratch: &scratch,
            },
        )
        .unwrap();
        assert_eq!(plan.disks.len(), 4);
        assert_eq!(plan.disks[0].host, dir.path().join("agent.erofs"));
        assert_eq!(plan.disks[1].host, dir.path().join("rootfs.erofs"));
        assert!(plan.disks[0].read_only && plan.disks[1].read_only);
        assert!(!plan.disks[2].read_only && plan.disks[3].read_only);
        assert!(plan.cmdline.starts_with("root=/dev/vda "));
        assert_eq!(plan.request.rootfs.device, "/dev/vdb");
        assert_eq!(plan.request.volumes[0].device, "/dev/vdc");
        assert!(plan.request.volumes[0].sync_back && !plan.request.volumes[1].sync_back);
        assert_eq!(plan.sync_dirs, [(0, data.clone())]);
        assert_eq!(
            plan.request.files[0].bytes().unwrap(),
            b"127.0.0.1 localhost\n"
        );
        let mounts = plan.request.spec.mounts().clone().unwrap();
        assert_eq!(mounts[0], proc);
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new(&volume_dir(0)))
        );
        assert_eq!(
            mounts[2].source().as_deref(),
            Some(Path::new(&volume_dir(1)))
        );
        assert_eq!(
            mounts[3].source().as_deref(),
            Some(Path::new(&file_path(0)))
        );
        assert_eq!(mounts[4].typ().as_deref(), Some("tmpfs"));
        let namespaces = plan
            .request
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        assert_eq!(
            namespaces.len(),
            1,
            "the workload shares the VM's network namespace: {namespaces:?}"
        );
        assert_eq!(namespaces[0].typ(), LinuxNamespaceType::Ipc);
        assert!(
            namespaces[0].path().is_none(),
            "host namespaces are not joined in the guest"
        );
        assert!(matches!(plan.request.rootfs.writable, WritableLayer::Tmpfs));
        assert!(plan.cmdline.contains("panic=-1"));
    }

    #[test]
    fn unusable_bind_sources_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE + 1)
            .unwrap();
        let settings = VmSettings::default();
        let inputs = || PlanInputs {
            settings: &settings,
            agent_disk: dir.path().join("agent.erofs"),
            rootfs_image: dir.path().join("rootfs.erofs"),
            scratch: dir.path(),
        };
        let spec = spec_with(
            LinuxResourcesBuilder::default().build().unwrap(),
            vec![bind(&big, "/big", true)],
        );
        let error = build(&spec, inputs()).unwrap_err().to_string();
        assert!(error.contains("mount its directory instead"), "{error}");
        let spec = spec_with(
            LinuxResourcesBuilder::default().build().unwrap(),
            vec![bind(Path::new("/dev/null"), "/null", false)],
        );
        let error = build(&spec, inputs()).unwrap_err().to_string();
        assert!(error.contains("a character device"), "{error}");
        let spec = spec_with(
            LinuxResourcesBuilder::default().build().unwrap(),
            vec![bind(&dir.path().join("missing"), "/m", false)],
        );
        assert!(
            build(&spec, inputs())
                .unwrap_err()
                .to_string()
                .contains("cannot be used")
        );
    }
}
