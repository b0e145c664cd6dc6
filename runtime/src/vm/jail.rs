//! The VMM's jail: an OCI spec that the container setup (`twinbox-sandbox`) runs like any
//! container, so the VMM gets the container backend's own isolation. New mount, pid, network,
//! ipc and uts namespaces; a read-only root holding only what the VMM needs (/dev/kvm, the
//! kernel, the disk images (the agent disk among them), the template snapshot it restores, its state directory, the volume
//! directories it writes changes back to, the exec fifo and the `twinbox-vmm` binary); no
//! capabilities (except those that writing volume changes needs, when there are such
//! volumes); no new privileges; Docker's seccomp profile for the whole process, and the VMM's own stricter
//! per-thread filters once the guest runs; a cgroup whose memory limit covers guest RAM plus
//! the VMM's overhead.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources, Mount, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::VmError;
use super::plan::Plan;
use crate::spec::{defaults, seccomp};

/// Memory the VMM process needs beyond guest RAM (its own heap and stacks, device buffers).
pub const VMM_MEMORY_OVERHEAD: u64 = 64 << 20;

/// Paths inside the jail.
pub mod paths {
    /// The `twinbox-vmm` binary (the VMM process runs `/twinbox-vmm init ...`).
    pub const VMM: &str = "/twinbox-vmm";
    /// The guest kernel.
    pub const KERNEL: &str = "/kernel";
    /// The VM's state directory (the host's `<container state>/vm`).
    pub const VM_DIR: &str = "/vm";
    /// The exec fifo that `start` opens.
    pub const EXEC_FIFO: &str = "/exec.fifo";
    /// The template snapshot the VM restores, if it does.
    pub const TEMPLATE: &str = "/template";
    /// The log of the VM's init and exec relays.
    pub const LOG: &str = "/vm/vmm.log";

    /// Disk `index` of the VM.
    pub fn disk(index: usize) -> String {
        format!("/disks/{index}")
    }

    /// The host directory that takes the changes of volume `index`.
    pub fn volume(index: u32) -> String {
        format!("/volumes/{index}")
    }
}

/// Host paths the jail is made of.
#[derive(Debug)]
pub struct JailInputs<'a> {
    /// The VM plan.
    pub plan: &'a Plan,
    /// The `twinbox-vmm` binary.
    pub vmm: &'a Path,
    /// The guest kernel.
    pub kernel: &'a Path,
    /// The template snapshot the VM restores, if it does.
    pub template: Option<&'a Path>,
    /// The container's state directory (holds the exec fifo).
    pub state_dir: &'a Path,
    /// The user's spec (terminal, limits, oom score).
    pub spec: &'a Spec,
    /// Log debug messages of the VMM (to its log file in the VM directory).
    pub debug: bool,
}

fn build_error(e: impl std::fmt::Display) -> VmError {
    VmError::Settings(format!("building the VMM's jail: {e}"))
}

fn bind(destination: &str, source: &Path, read_only: bool) -> Result<Mount, VmError> {
    let mut options = vec!["bind", "nosuid", "nodev"];
    if read_only {
        options.push("ro");
    }
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.into_iter().map(String::from).collect::<Vec<_>>())
        .build()
        .map_err(build_error)
}

/// The command line of a VM process in the jail: `twinbox-vmm ARGS... [--debug]` (see
/// [`super::vmm_process_main`]).
pub fn vmm_command(debug: bool, vm_args: &[&str]) -> Vec<String> {
    let mut args = vec![paths::VMM.to_string()];
    args.extend(vm_args.iter().map(|a| a.to_string()));
    if debug {
        args.push("--debug".into());
    }
    args
}

/// The root directory of the jail (empty; the container setup mounts into it).
pub fn root_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jail")
}

/// The VM's own state directory, `/vm` in the jail.
pub fn vm_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("vm")
}

/// The major and minor numbers of /dev/kvm.
fn kvm_device_numbers() -> Result<(i64, i64), VmError> {
    let meta = std::fs::metadata(super::assets::KVM_DEVICE)
        .map_err(VmError::io("reading", Path::new(super::assets::KVM_DEVICE)))?;
    if !meta.file_type().is_char_device() {
        return Err(VmError::Host(format!(
            "{} is not a character device",
            super::assets::KVM_DEVICE
        )));
    }
    let rdev = meta.rdev();
    Ok((
        nix::sys::stat::major(rdev) as i64,
        nix::sys::stat::minor(rdev) as i64,
    ))
}

/// The jail's cgroup resources: the user's CPU and block I/O settings, a memory limit of guest
/// RAM plus [`VMM_MEMORY_OVERHEAD`], Docker's device rules plus /dev/kvm. Process limits
/// apply inside the guest instead.
fn resources(spec: &Spec, plan: &Plan, kvm: (i64, i64)) -> Result<LinuxResources, VmError> {
    let user = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let mut resources = defaults::device_cgroup().map_err(build_error)?;
    let mut devices = resources.devices().clone().unwrap_or_default();
    devices.push(
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(kvm.0)
            .minor(kvm.1)
            .access("rwm")
            .build()
            .map_err(build_error)?,
    );
    resources.set_devices(Some(devices));
    resources.set_cpu(user.cpu().clone());
    resources.set_block_io(user.block_io().clone());
    let mut memory = (*user.memory()).unwrap_or_default();
    let limit = (plan.memory + VMM_MEMORY_OVERHEAD) as i64;
    memory.set_limit(Some(limit));
    // A reservation or swap limit below the new limit would be refused by the kernel.
    if memory.swap().is_some_and(|swap| swap > 0 && swap < limit) {
        memory.set_swap(Some(limit));
    }
    if memory.reservation().is_some_and(|r| r > limit) {
        memory.set_reservation(Some(limit));
    }
    resources.set_memory(Some(memory));
    Ok(resources)
}

/// The jail's spec.
pub fn spec(inputs: &JailInputs<'_>) -> Result<Spec, VmError> {
    let plan = inputs.plan;
    let mut mounts: Vec<Mount> = defaults::mounts()
        .map_err(build_error)?
        .into_iter()
        .filter(|m| ["/proc", "/dev", "/dev/pts"].contains(&m.destination().to_str().unwrap_or("")))
        .collect();
    mounts.push(bind(paths::VMM, inputs.vmm, true)?);
    mounts.push(bind(paths::KERNEL, inputs.kernel, true)?);
    if let Some(template) = inputs.template {
        mounts.push(bind(paths::TEMPLATE, template, true)?);
    }
    for (index, disk) in plan.disks.iter().enumerate() {
        mounts.push(bind(&paths::disk(index), &disk.host, disk.read_only)?);
    }
    mounts.push(bind(paths::VM_DIR, &vm_dir(inputs.state_dir), false)?);
    mounts.push(bind(
        paths::EXEC_FIFO,
        &inputs.state_dir.join(crate::state::ExecFifo::FILE_NAME),
        false,
    )?);
    for (index, dir) in &plan.sync_dirs {
        mounts.push(bind(&paths::volume(*index), dir, false)?);
    }

    // Writing a guest's volume changes with their owners and modes needs these; nothing else.
    let caps: Vec<Capability> = if plan.sync_dirs.is_empty() {
        Vec::new()
    } else {
        vec![
            Capability::Chown,
            Capability::DacOverride,
            Capability::Fowner,
            Capability::Fsetid,
        ]
    };
    let cap_set = || {
        caps.iter()
            .copied()
            .collect::<oci_spec::runtime::Capabilities>()
    };
    let user_process = inputs.spec.process().clone().unwrap_or_default();
    let process = ProcessBuilder::default()
        .terminal(user_process.terminal().unwrap_or(false))
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(build_error)?,
        )
        .args(vmm_command(
            inputs.debug,
            &[
                "init",
                &format!("{}/{}", paths::VM_DIR, super::init::CONFIG_FILE),
            ],
        ))
        .env(vec!["PATH=/".to_string()])
        .cwd("/")
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(cap_set())
                .effective(cap_set())
                .permitted(cap_set())
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()
                .map_err(build_error)?,
        )
        .no_new_privileges(true)
        .build()
        .map_err(build_error)?;
    let mut process = process;
    process.set_oom_score_adj(user_process.oom_score_adj());
    process.set_console_size(user_process.console_size());

    let kvm = kvm_device_numbers()?;
    let mut devices = defaults::devices().map_err(build_error)?;
    devices.push(
        LinuxDeviceBuilder::default()
            .path(super::assets::KVM_DEVICE)
            .typ(LinuxDeviceType::C)
            .major(kvm.0)
            .minor(kvm.1)
            .file_mode(0o600u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .map_err(build_error)?,
    );
    let linux = LinuxBuilder::default()
        .namespaces(defaults::namespaces().map_err(build_error)?)
        .devices(devices)
        .resources(resources(inputs.spec, plan, kvm)?)
        .masked_paths(defaults::masked_paths())
        .readonly_paths(defaults::readonly_paths())
        .seccomp(seccomp::default_profile(&caps).map_err(build_error)?)
        .build()
        .map_err(build_error)?;
    SpecBuilder::default()
        .version(oci_spec::runtime::VERSION)
        .root(
            RootBuilder::default()
                .path(root_dir(inputs.state_dir))
                .readonly(true)
                .build()
                .map_err(build_error)?,
        )
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()
        .map_err(build_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::plan::DiskPlan;
    use oci_spec::runtime::{LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};

    fn plan(sync: bool) -> Plan {
        Plan {
            memory: 256 << 20,
            vcpus: 1,
            disks: vec![
                DiskPlan {
                    host: "/store/vm/images/a.erofs".into(),
                    read_only: true,
                },
                DiskPlan {
                    host: "/scratch/volume-0.ext4".into(),
                    read_only: false,
                },
            ],
            sync_dirs: if sync {
                vec![(0, "/home/me/data".into())]
            } else {
                Vec::new()
            },
            request: twinbox_protocol::CreateRequest {
                spec: Spec::default(),
                rootfs: twinbox_protocol::RootfsSetup {
                    device: "/dev/vda".into(),
                    fstype: "erofs".into(),
                    writable: twinbox_protocol::WritableLayer::Tmpfs,
                },
                volumes: Vec::new(),
                files: Vec::new(),
                host_time_ns: 0,
                start: false,
                seccomp_program: None,
                entropy: None,
            },
            cmdline: String::new(),
        }
    }

    fn user_spec() -> Spec {
        let mut spec = Spec::default();
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(256 << 20)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
            .build()
            .unwrap();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .resources(resources)
                .build()
                .unwrap(),
        ));
        spec
    }

    #[test]
    fn the_jail_holds_only_what_the_vmm_needs() {
        let plan = plan(false);
        let user = user_spec();
        let jail = spec(&JailInputs {
            plan: &plan,
            vmm: Path::new("/usr/lib/twinbox/twinbox-vmm"),
            kernel: Path::new("/k/vmlinux"),
            template: None,
            state_dir: Path::new("/run/twinbox/c1"),
            spec: &user,
            debug: false,
        })
        .unwrap();
        let mounts = jail.mounts().clone().unwrap();
        let find = |dest: &str| {
            mounts
                .iter()
                .find(|m| m.destination() == Path::new(dest))
                .unwrap_or_else(|| panic!("no mount on {dest}"))
        };
        assert_eq!(
            find("/kernel").source().as_deref(),
            Some(Path::new("/k/vmlinux"))
        );
        assert!(
            find("/disks/0")
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
        assert!(
            !find("/disks/1")
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
        assert_eq!(
            find("/vm").source().as_deref(),
            Some(Path::new("/run/twinbox/c1/vm"))
        );
        assert_eq!(
            find("/twinbox-vmm").source().as_deref(),
            Some(Path::new("/usr/lib/twinbox/twinbox-vmm"))
        );
        assert!(!mounts.iter().any(|m| m.destination() == Path::new("/sys")));
        assert!(jail.root().as_ref().unwrap().readonly().unwrap());
        let process = jail.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_ref().unwrap()[..3],
            ["/twinbox-vmm", "init", "/vm/init.json"]
        );
        assert!(
            process
                .capabilities()
                .as_ref()
                .unwrap()
                .effective()
                .as_ref()
                .unwrap()
                .is_empty()
        );
        assert_eq!(process.no_new_privileges(), Some(true));
        let linux = jail.linux().as_ref().unwrap();
        assert!(
            linux
                .devices()
                .as_ref()
                .unwrap()
                .iter()
                .any(|d| d.path() == Path::new("/dev/kvm"))
        );
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(
            resources.memory().as_ref().unwrap().limit(),
            Some(((256 << 20) + VMM_MEMORY_OVERHEAD) as i64)
        );
        assert!(
            resources.pids().is_none(),
            "the pids limit applies in the guest"
        );
        assert!(linux.seccomp().is_some());
    }

    #[test]
    fn volume_changes_get_the_file_capabilities_and_their_directories() {
        let plan = plan(true);
        let user = user_spec();
        let jail = spec(&JailInputs {
            plan: &plan,
            vmm: Path::new("/v"),
            kernel: Path::new("/k"),
            template: None,
            state_dir: Path::new("/s"),
            spec: &user,
            debug: false,
        })
        .unwrap();
        let caps = jail
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(
            caps.effective()
                .as_ref()
                .unwrap()
                .contains(&Capability::Chown)
        );
        assert!(
            !caps
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        let mounts = jail.mounts().clone().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.destination() == Path::new("/volumes/0")
                    && m.source().as_deref() == Some(Path::new("/home/me/data")))
        );
    }
}
