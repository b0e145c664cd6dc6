//! vCPUs: boot-state setup and the per-thread run loop that dispatches exits to the port
//! I/O and MMIO buses.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::Once;

use kvm_bindings::{
    KVM_MAX_MSR_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
    Msrs, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_run,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::regs::TripleFault;
use crate::arch::x86_64::{BootProtocol, cpuid, interrupts, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitReason, StopCause, StopSignal};
use crate::vstate::memory::GuestMemory;
use crate::vstate::vm::Vm;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {index}: {source}")]
    Create {
        /// vCPU index.
        index: u8,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_CPUID2 failed.
    #[error("cannot set CPUID of vCPU {index}: {source}")]
    Cpuid {
        /// vCPU index.
        index: u8,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Register setup failed.
    #[error("cannot set up vCPU {index}: {source}")]
    Regs {
        /// vCPU index.
        index: u8,
        /// The register error.
        #[source]
        source: regs::RegsError,
    },
    /// LAPIC setup failed.
    #[error("cannot set up the local APIC of vCPU {index}: {source}")]
    Lapic {
        /// vCPU index.
        index: u8,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Saving or restoring the vCPU's state for a snapshot failed.
    #[error("cannot {what} of vCPU {index}: {message}")]
    State {
        /// vCPU index.
        index: u8,
        /// The operation, e.g. "save the registers".
        what: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// The real-time signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run` area, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer was set by this thread's vCPU loop to its own mapped
            // kvm_run area, which stays mapped until the loop clears it. A volatile write
            // of one byte is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the process-wide kick handler once. It only touches threads that registered a
/// `kvm_run` area, so it is harmless for the rest of the process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
            .map_err(VcpuError::Signal);
    });
    result
}

/// MSR_IA32_TSC: restored before the TSC deadline, which is relative to it.
const MSR_IA32_TSC: u32 = 0x10;
/// MSR_IA32_TSC_DEADLINE.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Everything a snapshot holds of one vCPU.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VcpuState {
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    msrs: Vec<kvm_msr_entry>,
    vcpu_events: kvm_vcpu_events,
}

/// Orders MSRs for restoring: everything else, then MSR_IA32_TSC, then
/// MSR_IA32_TSC_DEADLINE (KVM interprets the deadline against the current TSC).
fn restore_order(msrs: &mut [kvm_msr_entry]) {
    msrs.sort_by_key(|entry| match entry.index {
        MSR_IA32_TSC => 1,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 0,
    });
}

/// One vCPU and what its exits are dispatched to.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    stop: Arc<StopSignal>,
    /// The guest was told to reset by triple fault (`reboot=t`).
    resets_by_triple_fault: bool,
    /// Why the vCPU could not be brought to a consistent state for a snapshot, if so.
    settle_error: Option<String>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("index", &self.index).finish()
    }
}

/// Boot parameters every vCPU needs.
#[derive(Debug, Clone, Copy)]
pub struct VcpuBoot {
    /// Kernel entry point (used by the boot vCPU).
    pub entry: u64,
    /// How the boot vCPU enters the kernel.
    pub protocol: BootProtocol,
    /// Number of vCPUs in the VM.
    pub count: u8,
    /// The guest's command line asks it to reset by triple fault (see
    /// [`resets_by_triple_fault`]): a triple fault whose cause KVM erased is then taken
    /// for that reset rather than for a crash.
    pub resets_by_triple_fault: bool,
}

/// Whether a Linux command line makes the guest reset by triple fault: its last `reboot=`
/// option that picks a method (`b`ios, `a`cpi, `k`bd, `t`riple, `e`fi, `p`ci) is `t`.
pub fn resets_by_triple_fault(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|arg| arg.strip_prefix("reboot="))
        .flat_map(|options| options.split(','))
        .filter_map(|option| option.chars().next())
        .rfind(|method| "bakept".contains(*method))
        == Some('t')
}

impl Vcpu {
    /// Creates vCPU `index` of `vm`.
    pub fn new(
        vm: &Vm,
        index: u8,
        pio_bus: Arc<Bus>,
        mmio_bus: Arc<Bus>,
        stop: Arc<StopSignal>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self {
            index,
            fd,
            pio_bus,
            mmio_bus,
            stop,
            resets_by_triple_fault: false,
            settle_error: None,
        })
    }

    /// Sets the vCPU's CPUID: KVM's supported leaves normalized for this vCPU among `count`.
    fn set_cpuid(&self, vm: &Vm, count: u8) -> Result<(), VcpuError> {
        let index = self.index;
        let mut cpuid = vm.supported_cpuid().clone();
        cpuid::normalize(&mut cpuid, index, count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })
    }

    fn state_error<E: std::fmt::Display>(&self, what: &'static str) -> impl Fn(E) -> VcpuError {
        let index = self.index;
        move |message| VcpuError::State {
            index,
            what,
            message: message.to_string(),
        }
    }

    /// Reads the vCPU's state for a snapshot. The vCPU must have stopped through a
    /// snapshot request (its run loop then re-entered KVM once to complete the last exit).
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, VcpuError> {
        if let Some(message) = &self.settle_error {
            return Err(self.state_error("pause")(message));
        }
        Ok(VcpuState {
            mp_state: self
                .fd
                .get_mp_state()
                .map_err(self.state_error("save the MP state"))?,
            regs: self
                .fd
                .get_regs()
                .map_err(self.state_error("save the registers"))?,
            sregs: self
                .fd
                .get_sregs()
                .map_err(self.state_error("save the special registers"))?,
            xsave: self
                .fd
                .get_xsave()
                .map_err(self.state_error("save the XSAVE area"))?,
            xcrs: self
                .fd
                .get_xcrs()
                .map_err(self.state_error("save the XCRs"))?,
            debugregs: self
                .fd
                .get_debug_regs()
                .map_err(self.state_error("save the debug registers"))?,
            lapic: self
                .fd
                .get_lapic()
                .map_err(self.state_error("save the local APIC"))?,
            msrs: self.save_msrs(msr_indices)?,
            vcpu_events: self
                .fd
                .get_vcpu_events()
                .map_err(self.state_error("save the pending events"))?,
        })
    }

    /// Reads every MSR of `indices` that KVM can read for this vCPU (KVM_GET_MSRS stops at
    /// the first one it cannot read; that one is skipped).
    fn save_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let error = self.state_error::<String>("save the MSRs");
        let mut saved = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|e| error(format!("{e:?}")))?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(|e| error(e.to_string()))?;
            saved.extend_from_slice(&msrs.as_slice()[..read]);
            if read < chunk.len() {
                tracing::debug!(
                    "vcpu{}: MSR {:#x} does not read back; not saved",
                    self.index,
                    chunk[read]
                );
            }
            rest = &rest[(read + 1).min(chunk.len())..];
        }
        Ok(saved)
    }

    /// Puts a new vCPU of a restored VM in a saved state, in Firecracker's order. The
    /// VM's irqchip must exist; CPUID is derived as at boot (the snapshot is only used on
    /// the host that made it). `resets_by_triple_fault` is as in [`VcpuBoot`].
    pub fn restore_state(
        &mut self,
        vm: &Vm,
        state: &VcpuState,
        count: u8,
        resets_by_triple_fault: bool,
    ) -> Result<(), VcpuError> {
        self.resets_by_triple_fault = resets_by_triple_fault;
        self.set_cpuid(vm, count)?;
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(self.state_error("restore the MP state"))?;
        self.fd
            .set_regs(&state.regs)
            .map_err(self.state_error("restore the registers"))?;
        self.fd
            .set_sregs(&state.sregs)
            .map_err(self.state_error("restore the special registers"))?;
        // SAFETY: `state.xsave` is a whole `kvm_xsave` (the legacy 4 KiB area that
        // KVM_GET_XSAVE filled), so KVM reads no memory beyond it.
        unsafe { self.fd.set_xsave(&state.xsave) }
            .map_err(self.state_error("restore the XSAVE area"))?;
        self.fd
            .set_xcrs(&state.xcrs)
            .map_err(self.state_error("restore the XCRs"))?;
        self.fd
            .set_debug_regs(&state.debugregs)
            .map_err(self.state_error("restore the debug registers"))?;
        self.fd
            .set_lapic(&state.lapic)
            .map_err(self.state_error("restore the local APIC"))?;
        self.restore_msrs(&state.msrs)?;
        self.fd
            .set_vcpu_events(&state.vcpu_events)
            .map_err(self.state_error("restore the pending events"))?;
        Ok(())
    }

    fn restore_msrs(&self, saved: &[kvm_msr_entry]) -> Result<(), VcpuError> {
        let error = self.state_error::<String>("restore the MSRs");
        let mut ordered = saved.to_vec();
        restore_order(&mut ordered);
        for chunk in ordered.chunks(KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(|e| error(format!("{e:?}")))?;
            let written = self.fd.set_msrs(&msrs).map_err(|e| error(e.to_string()))?;
            if written < chunk.len() {
                return Err(error(format!(
                    "KVM refused MSR {:#x} (value {:#x})",
                    chunk[written].index, chunk[written].data
                )));
            }
        }
        Ok(())
    }

    /// Sets CPUID, MSRs, FPU, LAPIC and, on the boot vCPU, the entry registers.
    /// Application processors wait for INIT/SIPI from the boot vCPU.
    pub fn configure(
        &mut self,
        vm: &Vm,
        mem: &GuestMemory,
        boot: VcpuBoot,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        self.resets_by_triple_fault = boot.resets_by_triple_fault;
        self.set_cpuid(vm, boot.count)?;
        let regs_err = |source| VcpuError::Regs { index, source };
        regs::setup_msrs(&self.fd).map_err(regs_err)?;
        if index == 0 {
            regs::setup_regs(&self.fd, boot.entry, boot.protocol).map_err(regs_err)?;
            regs::setup_sregs(mem, &self.fd, boot.protocol).map_err(regs_err)?;
        }
        regs::setup_fpu(&self.fd).map_err(regs_err)?;
        interrupts::setup_lint(&self.fd).map_err(|source| VcpuError::Lapic { index, source })?;
        Ok(())
    }

    /// vCPU index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Runs the vCPU on the calling thread until the VM stops, and hands it back.
    pub fn run(mut self) -> Self {
        let run_area: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run_area));
        while !self.stop.is_stopped() {
            if let Some(cause) = self.run_once() {
                self.stop.stop(cause);
            }
        }
        if self.stop.cause() == Some(StopCause::Exit(ExitReason::Snapshotted)) {
            self.settle();
        }
        KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
        self
    }

    /// Completes the last exit so the vCPU's state is consistent: KVM finishes an I/O or
    /// MMIO exit (e.g. advances RIP past the access) only on the next KVM_RUN, so enter
    /// once more with `immediate_exit` set, which returns before running guest code.
    fn settle(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        self.settle_error = match self.fd.run() {
            Err(error) if error.errno() == libc::EINTR => None,
            Err(error) => Some(format!("KVM_RUN with immediate exit failed: {error}")),
            Ok(exit) => Some(format!(
                "KVM_RUN with immediate exit ran the guest: {exit:?}"
            )),
        };
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Tells a guest's deliberate reset by triple fault from a crash (`KVM_EXIT_SHUTDOWN`).
    fn triple_fault(&self) -> StopCause {
        let index = self.index;
        let state = self
            .fd
            .get_regs()
            .and_then(|r| Ok((r, self.fd.get_sregs()?)));
        let kind = match &state {
            Ok((regs, sregs)) => regs::classify_triple_fault(regs, sregs),
            Err(error) => {
                tracing::warn!(
                    "vcpu{index}: cannot read the registers after a triple fault: {error}"
                );
                TripleFault::StateLost
            }
        };
        const HINT: &str = "its kernel crashed (often early in boot: run it with --console \
            and earlyprintk=serial to see how far it got)";
        match kind {
            TripleFault::Reset => {
                tracing::debug!("vcpu{index}: the guest reset by triple fault (empty IDT)");
                StopCause::Exit(ExitReason::Reboot)
            }
            TripleFault::StateLost if self.resets_by_triple_fault => {
                tracing::info!(
                    "vcpu{index}: the guest triple-faulted, as reboot=t makes it reset; this \
                     host's KVM does not keep the vCPU state, so a crash would look the same"
                );
                StopCause::Exit(ExitReason::Reboot)
            }
            TripleFault::StateLost => StopCause::Error(format!(
                "vcpu{index}: the guest triple-faulted without being asked to reset that way \
                 (its command line has no reboot=t): {HINT}"
            )),
            TripleFault::Crash(place) => StopCause::Error(format!(
                "vcpu{index}: the guest triple-faulted {place} with a live IDT, which is no \
                 reset: {HINT}"
            )),
        }
    }

    /// Runs the guest until one exit; returns a stop cause when the VM must end.
    fn run_once(&mut self) -> Option<StopCause> {
        let index = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio_bus.read(u64::from(port), data) {
                    tracing::trace!("vcpu{index}: unhandled port read {port:#x}");
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.pio_bus.write(u64::from(port), data) {
                    tracing::trace!("vcpu{index}: unhandled port write {port:#x}");
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio_bus.read(addr, data) {
                    tracing::debug!("vcpu{index}: unhandled MMIO read at {addr:#x}");
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio_bus.write(addr, data) {
                    tracing::debug!("vcpu{index}: unhandled MMIO write at {addr:#x}");
                }
                None
            }
            Ok(VcpuExit::Hlt) => Some(StopCause::Exit(ExitReason::Halt)),
            Ok(VcpuExit::Shutdown) => Some(self.triple_fault()),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(StopCause::Exit(ExitReason::Shutdown)),
                KVM_SYSTEM_EVENT_RESET => Some(StopCause::Exit(ExitReason::Reboot)),
                KVM_SYSTEM_EVENT_CRASH => Some(StopCause::Error(format!(
                    "vcpu{index}: the guest reported a crash"
                ))),
                other => Some(StopCause::Error(format!(
                    "vcpu{index}: unknown KVM system event {other}"
                ))),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(StopCause::Error(format!(
                "vcpu{index}: KVM could not enter the guest (hardware reason {reason:#x} on host CPU {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => Some(StopCause::Error(format!(
                "vcpu{index}: KVM internal error (the guest did something KVM cannot emulate)"
            ))),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(StopCause::Error(format!(
                "vcpu{index}: unexpected KVM exit {other:?}"
            ))),
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                // Kicked: clear the flag; the loop checks whether the VM is stopping.
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(error) => Some(StopCause::Error(format!(
                "vcpu{index}: KVM_RUN failed: {error}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_option_picks_the_reset_method() {
        for (cmdline, triple) in [
            ("console=ttyS0 reboot=t panic=-1", true),
            ("reboot=triple", true),
            ("reboot=w,t quiet", true),
            ("reboot=k", false),
            ("reboot=t reboot=k", false),
            ("reboot=t,k", false),
            ("reboot=k,s,t", true),
            ("reboot=t,warm,force", true),
            ("noreboot=t", false),
            ("", false),
        ] {
            assert_eq!(resets_by_triple_fault(cmdline), triple, "{cmdline}");
        }
    }

    #[test]
    fn vcpu_state_survives_json() {
        let mut state = VcpuState::default();
        state.regs.rip = 0x20_1234;
        state.regs.rbx = 100_000;
        state.sregs.cr3 = 0x9000;
        state.xsave.region[7] = 0xdead_beef;
        state.lapic.regs[0x20] = 5;
        state.mp_state.mp_state = 3;
        state.msrs = vec![kvm_msr_entry {
            index: MSR_IA32_TSC,
            data: u64::MAX - 1,
            ..Default::default()
        }];
        state.vcpu_events.exception.injected = 1;
        let json = serde_json::to_string(&state).unwrap();
        let loaded: VcpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded.regs, state.regs);
        assert_eq!(loaded.sregs, state.sregs);
        assert_eq!(loaded.xsave.region, state.xsave.region);
        assert_eq!(loaded.lapic.regs, state.lapic.regs);
        assert_eq!(loaded.mp_state, state.mp_state);
        assert_eq!(loaded.msrs, state.msrs);
        assert_eq!(serde_json::to_string(&loaded).unwrap(), json);
    }

    #[test]
    fn the_tsc_deadline_is_restored_after_the_tsc() {
        let entry = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let mut msrs = vec![
            entry(MSR_IA32_TSC_DEADLINE),
            entry(0x174),
            entry(MSR_IA32_TSC),
            entry(0xc000_0080),
        ];
        restore_order(&mut msrs);
        let order: Vec<u32> = msrs.iter().map(|e| e.index).collect();
        assert_eq!(
            order,
            [0x174, 0xc000_0080, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE]
        );
    }
}
