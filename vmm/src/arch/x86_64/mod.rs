//! x86_64 guest setup: the address map, boot structures (zero page or PVH start info with
//! the E820 map, GDT, page tables, MP table) and per-vCPU state (registers, CPUID, MSRs,
//! LAPIC).

pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod regs;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams, linux::LinuxBootConfigurator};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use self::layout::*;
pub use self::regs::BootProtocol;
use crate::vstate::memory::{GuestMemory, ram_ranges};

/// Errors while writing the boot structures.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    /// linux-loader could not write the zero page or the PVH start info.
    #[error("cannot write the boot parameters into guest memory: {0}")]
    BootParams(#[from] linux_loader::configurator::Error),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
}

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Where the initrd was placed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest physical address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// What the boot structures describe.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// The kernel's setup header (bzImage only).
    pub setup_header: Option<setup_header>,
    /// Guest address and length (including the NUL) of the command line.
    pub cmdline_address: u64,
    /// Length of the command line including its NUL.
    pub cmdline_size: usize,
    /// The initrd, if any.
    pub initrd: Option<InitrdPlacement>,
    /// Number of vCPUs (for the MP table).
    pub cpus: u8,
}

/// RAM ranges as the guest's memory map lists them: base memory below the EBDA, then
/// everything from 1 MiB up, skipping the MMIO gap.
pub fn e820_ram_entries(mem: &GuestMemory) -> Vec<(u64, u64)> {
    let total: u64 = mem.iter().map(vm_memory::GuestMemoryRegion::len).sum();
    let mut entries = vec![(0, EBDA_START)];
    for (start, len) in ram_ranges(total) {
        let begin = start.0.max(HIMEM_START);
        let end = start.0 + len;
        if end > begin {
            entries.push((begin, end - begin));
        }
    }
    entries
}

/// Writes the MP table and the zero page (64-bit boot protocol) or the PVH start info.
pub fn configure_system(mem: &GuestMemory, info: &BootInfo) -> Result<(), ConfigureError> {
    mptable::setup_mptable(mem, info.cpus)?;
    match info.protocol {
        BootProtocol::Linux64 => configure_zero_page(mem, info),
        BootProtocol::Pvh => configure_pvh(mem, info),
    }
}

fn configure_zero_page(mem: &GuestMemory, info: &BootInfo) -> Result<(), ConfigureError> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = info.cmdline_address as u32;
    params.hdr.cmdline_size = info.cmdline_size as u32;
    if let Some(initrd) = info.initrd {
        params.hdr.ramdisk_image = initrd.address as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let entries = e820_ram_entries(mem);
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(&entries) {
        slot.addr = *addr;
        slot.size = *size;
        slot.r#type = E820_RAM;
    }
    params.e820_entries = entries.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )?;
    Ok(())
}

fn configure_pvh(mem: &GuestMemory, info: &BootInfo) -> Result<(), ConfigureError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_ram_entries(mem)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: info.cmdline_address,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = info
        .initrd
        .iter()
        .map(|initrd| hvm_modlist_entry {
            paddr: initrd.address,
            size: initrd.size,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new::<hvm_start_info>(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::{MemoryBacking, create_guest_memory};
    use vm_memory::Bytes;

    fn info(protocol: BootProtocol) -> BootInfo {
        BootInfo {
            protocol,
            setup_header: None,
            cmdline_address: CMDLINE_START,
            cmdline_size: 10,
            initrd: Some(InitrdPlacement {
                address: 0x40_0000,
                size: 0x1234,
            }),
            cpus: 2,
        }
    }

    #[test]
    fn zero_page_describes_memory_cmdline_and_initrd() {
        let mem = create_guest_memory(128 << 20, MemoryBacking::Anonymous).unwrap();
        configure_system(&mem, &info(BootProtocol::Linux64)).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.ramdisk_image }, 0x40_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x1234);
        assert_eq!(params.e820_entries, 2);
        assert_eq!({ params.e820_table[1].addr }, HIMEM_START);
        assert_eq!({ params.e820_table[1].size }, (128 << 20) - HIMEM_START);
        let mp: [u8; 4] = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&mp, b"_MP_");
    }

    #[test]
    fn memory_above_the_gap_gets_its_own_e820_entry() {
        let mem =
            create_guest_memory(MMIO_GAP_START + (64 << 20), MemoryBacking::Anonymous).unwrap();
        let entries = e820_ram_entries(&mem);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2], (MMIO_GAP_END, 64 << 20));
        assert_eq!(entries[1].0 + entries[1].1, MMIO_GAP_START);
    }

    #[test]
    fn pvh_start_info_points_at_memmap_and_initrd() {
        let mem = create_guest_memory(64 << 20, MemoryBacking::Anonymous).unwrap();
        configure_system(&mem, &info(BootProtocol::Pvh)).unwrap();
        let start: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(start.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(start.memmap_entries, 2);
        assert_eq!(start.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(start.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x40_0000, 0x1234));
        let last: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(last.addr + last.size, 64 << 20);
    }
}
