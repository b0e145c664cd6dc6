//! vCPUs: boot-state setup and the per-thread run loop that dispatches exits to the port
//! I/O and MMIO buses.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::Once;

use kvm_bindings::{
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_run,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

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

/// One vCPU and what its exits are dispatched to.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    stop: Arc<StopSignal>,
    /// The guest was told to reset by triple fault (`reboot=t`).
    resets_by_triple_fault: bool,
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
        })
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
        let mut cpuid = vm.supported_cpuid().clone();
        cpuid::normalize(&mut cpuid, index, boot.count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
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
        KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
        self
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
}
