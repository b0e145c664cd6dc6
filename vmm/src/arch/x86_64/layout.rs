//! The guest physical address map.
//!
//! Low memory holds the boot structures (GDT, zero page or PVH start info, page tables,
//! command line, MP table), the kernel is loaded at 1 MiB, RAM that does not fit below the
//! MMIO gap continues at 4 GiB. Device MMIO windows live in the gap below 4 GiB.

/// Boot GDT (four 8-byte entries).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty, limit only).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map. Only one of the PVH memory map and the zero page is written for a boot.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, then `PDE_COUNT` page directories of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
/// The page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// The first page directory.
pub const PDE_START: u64 = 0xb000;
/// Page directories mapped at boot: 4 x 1 GiB = the whole 32-bit address space, so tiny
/// guests can reach the MMIO gap before they build their own tables.
pub const PDE_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (Linux's x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable by the guest.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table lives in the last KiB of base memory, where Linux scans for it.
pub const MPTABLE_START: u64 = EBDA_START;
/// Where the kernel is loaded (1 MiB) and where high memory starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap (exclusive): 4 GiB.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Address of the KVM TSS (three pages), inside the MMIO gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Address of KVM's identity map page (one page below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// IOAPIC registers.
pub const IOAPIC_ADDRESS: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_ADDRESS: u64 = 0xfee0_0000;
/// The boot-timer device: the guest writes [`crate::devices::legacy::BOOT_TIMER_MAGIC`] here.
pub const BOOT_TIMER_ADDRESS: u64 = MMIO_GAP_START;
/// Size of each MMIO device window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// First virtio-mmio device window; further devices follow every `MMIO_DEVICE_SIZE`.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + MMIO_DEVICE_SIZE;
/// First IOAPIC pin handed to virtio devices (0-4 belong to the legacy devices).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
/// The serial console's IRQ (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// Most vCPUs the boot structures (MP table in the last KiB of base memory) hold.
pub const MAX_VCPUS: u8 = 32;
