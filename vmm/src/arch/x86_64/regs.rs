//! Boot register state of a vCPU: general registers, segments and control registers, the
//! identity page tables, FPU and boot MSRs.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{gdt_entry, kvm_segment_from_gdt};
use super::layout::*;
use crate::vstate::memory::GuestMemory;

/// Errors while setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("cannot set the vCPU's {what}: {source}")]
    Kvm {
        /// Which register set.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Writing the GDT or page tables into guest memory failed.
    #[error("cannot write the boot {what} into guest memory (is guest memory too small?)")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("KVM accepted only {set} of {total} boot MSRs")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many were given.
        total: usize,
    },
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64,
    /// Xen PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Sets the general purpose registers for the boot vCPU.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64, protocol: BootProtocol) -> Result<(), RegsError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
    }
    vcpu.set_regs(&regs).map_err(|source| RegsError::Kvm {
        what: "general registers",
        source,
    })
}

/// Writes the boot GDT (and, for the 64-bit protocol, the page tables) into guest memory and
/// sets segments and control registers.
pub fn setup_sregs(
    mem: &GuestMemory,
    vcpu: &VcpuFd,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(|source| RegsError::Kvm {
        what: "special registers",
        source,
    })?;
    configure_segments_and_sregs(mem, &mut sregs, protocol)?;
    if protocol == BootProtocol::Linux64 {
        setup_page_tables(mem, &mut sregs)?;
    }
    vcpu.set_sregs(&sregs).map_err(|source| RegsError::Kvm {
        what: "special registers",
        source,
    })
}

fn configure_segments_and_sregs(
    mem: &GuestMemory,
    sregs: &mut kvm_sregs,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let code = match protocol {
        BootProtocol::Linux64 => 0xa09b, // 64-bit code (L=1)
        BootProtocol::Pvh => 0xc09b,     // 32-bit code (D=1)
    };
    let gdt: [u64; 4] = [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff), // data
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    for (index, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + index as u64 * 8))
            .map_err(|_| RegsError::GuestMemory { what: "GDT" })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::GuestMemory { what: "IDT" })?;

    let code_seg = kvm_segment_from_gdt(gdt[1], 1);
    let data_seg = kvm_segment_from_gdt(gdt[2], 2);
    let tss_seg = kvm_segment_from_gdt(gdt[3], 3);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = tss_seg;
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 |= X86_CR0_PE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// Identity-maps the first `PDE_COUNT` GiB with 2 MiB pages (1 GiB pages are not available
/// everywhere: PVM hosts triple-fault on them) and turns on paging.
fn setup_page_tables(mem: &GuestMemory, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    const PRESENT_WRITABLE: u64 = 0x03;
    const HUGE_PAGE: u64 = 0x80;
    let err = |_| RegsError::GuestMemory {
        what: "page tables",
    };
    mem.write_obj(PDPTE_START | PRESENT_WRITABLE, GuestAddress(PML4_START))
        .map_err(err)?;
    for directory in 0..PDE_COUNT {
        let pd = PDE_START + directory * 0x1000;
        mem.write_obj(
            pd | PRESENT_WRITABLE,
            GuestAddress(PDPTE_START + directory * 8),
        )
        .map_err(err)?;
        let mut entries = [0u64; 512];
        for (index, entry) in entries.iter_mut().enumerate() {
            let page = directory * 512 + index as u64;
            *entry = (page << 21) | HUGE_PAGE | PRESENT_WRITABLE;
        }
        for (index, entry) in entries.iter().enumerate() {
            mem.write_obj(*entry, GuestAddress(pd + index as u64 * 8))
                .map_err(err)?;
        }
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    Ok(())
}

/// What a vCPU's state right after a triple fault (`KVM_EXIT_SHUTDOWN`) says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TripleFault {
    /// The guest had loaded an empty IDT: the classic way to reset a PC on purpose (Linux
    /// with `reboot=t` invalidates its IDT and raises an exception).
    Reset,
    /// The guest's IDT was live: an exception could not be delivered, so the guest crashed.
    /// The text says where (RIP, control registers, IDT).
    Crash(String),
    /// The vCPU holds its reset state, not the guest's: KVM on AMD SVM re-initializes a
    /// vCPU when it shuts down, so nothing can be told from it.
    StateLost,
}

/// Reads a triple fault from the vCPU's registers and special registers after the exit.
pub fn classify_triple_fault(regs: &kvm_regs, sregs: &kvm_sregs) -> TripleFault {
    if sregs.cr0 & X86_CR0_PE == 0 {
        // Real mode at the reset vector: nothing of the guest is left. (Our guests enter
        // in protected or long mode, so a guest of ours never triple-faults in real mode.)
        return TripleFault::StateLost;
    }
    if sregs.idt.limit == 0 {
        return TripleFault::Reset;
    }
    TripleFault::Crash(format!(
        "at RIP {:#x} (RSP {:#x}, CR0 {:#x}, CR2 {:#x}, CR3 {:#x}, CR4 {:#x}, IDT {:#x}+{:#x})",
        regs.rip,
        regs.rsp,
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.idt.base,
        sregs.idt.limit
    ))
}

/// Sets the x87/SSE control words to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "FPU state",
        source,
    })
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MTRR_ENABLE: u64 = 0x800;
const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// The MSR values a vCPU boots with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Sets the boot MSRs.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        total: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
        what: "MSRs",
        source,
    })?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            total: entries.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::{MemoryBacking, create_guest_memory};

    #[test]
    fn page_tables_identity_map_4gib_with_2mib_pages() {
        let mem = create_guest_memory(16 << 20, MemoryBacking::Anonymous).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_page_tables(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        // Walk the tables for a few addresses, as the MMU would.
        for addr in [
            0u64,
            0x20_0000,
            0x1234_5678,
            MMIO_GAP_START + 0x1000,
            0xffff_ffff,
        ] {
            let pml4e: u64 = mem
                .read_obj(GuestAddress(sregs.cr3 + ((addr >> 39) & 0x1ff) * 8))
                .unwrap();
            let pdpte: u64 = mem
                .read_obj(GuestAddress((pml4e & !0xfff) + ((addr >> 30) & 0x1ff) * 8))
                .unwrap();
            let pde: u64 = mem
                .read_obj(GuestAddress((pdpte & !0xfff) + ((addr >> 21) & 0x1ff) * 8))
                .unwrap();
            assert_ne!(pde & 0x80, 0, "2 MiB page bit");
            let phys = (pde & 0x000f_ffff_ffe0_0000) | (addr & 0x1f_ffff);
            assert_eq!(phys, addr);
        }
    }

    #[test]
    fn long_mode_segments_and_gdt_in_memory() {
        let mem = create_guest_memory(16 << 20, MemoryBacking::Anonymous).unwrap();
        let mut sregs = kvm_sregs::default();
        configure_segments_and_sregs(&mem, &mut sregs, BootProtocol::Linux64).unwrap();
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.selector, 8);
        assert_eq!(sregs.ss.selector, 16);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(kvm_segment_from_gdt(code, 1).l, 1);
    }

    #[test]
    fn triple_faults_are_told_apart_by_the_idt() {
        let mem = create_guest_memory(16 << 20, MemoryBacking::Anonymous).unwrap();
        let mut sregs = kvm_sregs::default();
        configure_segments_and_sregs(&mem, &mut sregs, BootProtocol::Linux64).unwrap();
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_1234,
            ..Default::default()
        };
        // Our boot IDT (and any live IDT): an undeliverable exception, i.e. a crash.
        let TripleFault::Crash(place) = classify_triple_fault(&regs, &sregs) else {
            panic!("a live IDT means a crash");
        };
        assert!(place.contains("RIP 0xffffffff81001234"), "{place}");
        sregs.idt.limit = 0;
        assert_eq!(classify_triple_fault(&regs, &sregs), TripleFault::Reset);
        // The architectural INIT state (what AMD SVM leaves behind).
        let init = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        let reset_vector = kvm_regs {
            rip: 0xfff0,
            ..Default::default()
        };
        assert_eq!(
            classify_triple_fault(&reset_vector, &init),
            TripleFault::StateLost
        );
    }

    #[test]
    fn pvh_starts_in_flat_protected_mode() {
        let mem = create_guest_memory(16 << 20, MemoryBacking::Anonymous).unwrap();
        let mut sregs = kvm_sregs {
            cr4: X86_CR4_PAE,
            efer: EFER_LME,
            ..Default::default()
        };
        configure_segments_and_sregs(&mem, &mut sregs, BootProtocol::Pvh).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((sregs.cs.db, sregs.cs.l), (1, 0));
    }
}
