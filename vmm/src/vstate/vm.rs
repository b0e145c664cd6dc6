//! The KVM VM: opening /dev/kvm with clear errors, memory slots, the TSS and identity map,
//! the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.

use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use kvm_bindings::{
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_clock_data, kvm_irqchip, kvm_pit_config,
    kvm_pit_state2, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::vstate::memory::GuestMemory;

/// Errors while creating or setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The KVM device does not exist.
    #[error(
        "{0} does not exist: this host has no KVM. On bare metal load kvm_intel or kvm_amd; in a cloud VM enable nested virtualization; or run the workload with the container backend"
    )]
    NoKvm(PathBuf),
    /// The KVM device exists but cannot be opened.
    #[error(
        "permission denied opening {0}: run as root, or give this user read/write access to it (usually by adding the user to the `kvm` group)"
    )]
    KvmPermission(PathBuf),
    /// Another error opening the KVM device.
    #[error("cannot open {path}: {source}")]
    OpenKvm {
        /// The device path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The KVM API version is not the stable one.
    #[error("{path} speaks KVM API version {version}; twinbox needs version 12")]
    ApiVersion {
        /// The device path.
        path: PathBuf,
        /// The version reported.
        version: i32,
    },
    /// A required KVM capability is missing.
    #[error("the host's KVM lacks a capability twinbox needs: {0}")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Whether this host's KVM is PVM (the `kvm_pvm` module), which only runs guest kernels
/// built with PVM guest support.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Opens the KVM device at `path` with errors that say what to do.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        VmError::OpenKvm {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::InvalidInput.into(),
        }
    })?;
    let fd = Kvm::open_with_cloexec_at(&c_path, true).map_err(|error| {
        let io = std::io::Error::from_raw_os_error(error.errno());
        match io.kind() {
            std::io::ErrorKind::NotFound => VmError::NoKvm(path.to_path_buf()),
            std::io::ErrorKind::PermissionDenied => VmError::KvmPermission(path.to_path_buf()),
            _ => VmError::OpenKvm {
                path: path.to_path_buf(),
                source: io,
            },
        }
    })?;
    // SAFETY: `fd` was just opened by `open_with_cloexec_at` and is owned by nobody else.
    let kvm = unsafe { Kvm::from_raw_fd(fd) };
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::ApiVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCapability(name));
        }
    }
    Ok(kvm)
}

/// The VM-wide state a snapshot holds: the in-kernel interrupt controllers, the PIT and
/// the KVM clock.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VmState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

/// A KVM VM with its guest memory registered.
pub struct Vm {
    fd: VmFd,
    supported_cpuid: CpuId,
    max_vcpus: usize,
    msr_indices: Vec<u32>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").finish_non_exhaustive()
    }
}

impl Vm {
    /// Creates a VM on `kvm`.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(kvm_err("CREATE_VM"))?;
        let mut supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("GET_SUPPORTED_CPUID"))?;
        crate::arch::x86_64::cpuid::add_vmm_features(
            &mut supported_cpuid,
            kvm.check_extension(Cap::TscDeadlineTimer),
        );
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(kvm_err("GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(Self {
            fd,
            supported_cpuid,
            max_vcpus: kvm.get_max_vcpus(),
            msr_indices,
        })
    }

    /// The MSRs KVM can save and restore (KVM_GET_MSR_INDEX_LIST), for vCPU snapshots.
    pub fn msr_indices(&self) -> &[u32] {
        &self.msr_indices
    }

    /// Reads the irqchip, PIT and clock state (the vCPUs must be paused).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let chip = |chip_id| -> Result<kvm_irqchip, VmError> {
            let mut irqchip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut irqchip)
                .map_err(kvm_err("GET_IRQCHIP"))?;
            Ok(irqchip)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(kvm_err("GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(kvm_err("GET_CLOCK"))?,
        })
    }

    /// Restores a saved irqchip, PIT and clock state into this VM (after
    /// [`Vm::setup_irqchip`], before the vCPUs' state), in Firecracker's order. The guest's
    /// clock goes on from the saved value: no jump for the time the snapshot lay on disk.
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        self.fd.set_pit2(&state.pit).map_err(kvm_err("SET_PIT2"))?;
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            // No KVM_CLOCK_REALTIME: KVM would add the time since the snapshot was taken.
            flags: 0,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(kvm_err("SET_CLOCK"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd.set_irqchip(chip).map_err(kvm_err("SET_IRQCHIP"))?;
        }
        Ok(())
    }

    /// The KVM VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The CPUID entries KVM supports plus the VMM's additions, before per-vCPU
    /// normalization.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    /// Most vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// Registers every guest memory region as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host_address = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::MissingCapability("host mapping of guest memory"))?;
            let memory_region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host_address as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes owned by `mem`,
            // which outlives the VM (the Vmm keeps both and drops the VM first).
            unsafe { self.fd.set_user_memory_region(memory_region) }
                .map_err(kvm_err("SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Sets up the TSS and identity map pages, the in-kernel irqchip and the PIT.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("SET_TSS_ADDR"))?;
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(kvm_err("CREATE_IRQCHIP"))?;
        let pit_config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit_config)
            .map_err(kvm_err("CREATE_PIT2"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_says_there_is_no_kvm() {
        let error = open_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(error, VmError::NoKvm(_)));
        assert!(error.to_string().contains("this host has no KVM"));
    }

    #[test]
    fn a_non_kvm_device_is_rejected() {
        // /dev/null opens fine but answers no KVM ioctl.
        let error = open_kvm(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(error, VmError::ApiVersion { .. }), "{error}");
    }

    #[test]
    fn vm_with_memory_and_irqchip() {
        let kvm = open_kvm(Path::new("/dev/kvm")).unwrap();
        let vm = Vm::new(&kvm).unwrap();
        let mem = crate::vstate::memory::create_guest_memory(
            8 << 20,
            crate::vstate::memory::MemoryBacking::Memfd,
        )
        .unwrap();
        vm.register_memory(&mem).unwrap();
        vm.setup_irqchip().unwrap();
        assert!(
            vm.supported_cpuid()
                .as_slice()
                .iter()
                .any(|e| e.function == 1)
        );
        assert!(vm.msr_indices().contains(&0x10), "MSR_IA32_TSC is saved");
    }
}
