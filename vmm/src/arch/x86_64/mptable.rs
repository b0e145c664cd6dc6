//! The Intel MultiProcessor table (MP spec 1.4) that tells a guest without ACPI about its
//! vCPUs, the IOAPIC and how ISA interrupts are wired.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_ADDRESS, IOAPIC_ADDRESS, IRQ_MAX, MAX_VCPUS, MPTABLE_START};
use crate::vstate::memory::GuestMemory;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the table's space.
    #[error("{0} vCPUs requested; the MP table holds at most {MAX_VCPUS}")]
    TooManyCpus(u8),
    /// No vCPU at all.
    #[error("a VM needs at least one vCPU")]
    NoCpus,
    /// The table does not fit in guest memory.
    #[error("cannot write the MP table at {MPTABLE_START:#x}: guest memory is too small")]
    GuestMemory,
}

const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// Builds the MP floating pointer and configuration table for `cpus` vCPUs, as the bytes
/// to place at [`MPTABLE_START`].
pub fn build(cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend([ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend(0x600u32.to_le_bytes()); // signature: family 6
        entries.extend(0x201u32.to_le_bytes()); // feature flags: FPU, APIC
        entries.extend([0u8; 8]);
        entry_count += 1;
    }
    entries.extend([ENTRY_BUS, 0]);
    entries.extend(*b"ISA   ");
    entry_count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_ADDRESS as u32).to_le_bytes());
    entry_count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        entry_count += 1;
    }
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entry_count += 2;

    let table_address = MPTABLE_START as u32 + FLOATING_POINTER_SIZE as u32;
    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend(*b"PCMP");
    header.extend(((HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    header.extend([SPEC_REVISION, 0]); // checksum filled below
    header.extend(*b"TWINBOX ");
    header.extend(*b"MICROVM     ");
    header.extend(0u32.to_le_bytes()); // OEM table pointer
    header.extend(0u16.to_le_bytes()); // OEM table size
    header.extend(entry_count.to_le_bytes());
    header.extend((APIC_ADDRESS as u32).to_le_bytes());
    header.extend([0u8; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_POINTER_SIZE);
    floating.extend(*b"_MP_");
    floating.extend(table_address.to_le_bytes());
    floating.extend([1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend(table);
    Ok(floating)
}

/// Writes the MP table for `cpus` vCPUs into guest memory.
pub fn setup_mptable(mem: &GuestMemory, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| MptableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::EBDA_START;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_pointers_are_consistent() {
        for cpus in [1, 2, MAX_VCPUS] {
            let bytes = build(cpus).unwrap();
            assert!(MPTABLE_START + bytes.len() as u64 <= EBDA_START + 1024);
            assert_eq!(&bytes[..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0);
            let table_address = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
            let table = &bytes[(table_address - MPTABLE_START) as usize..];
            assert_eq!(&table[..4], b"PCMP");
            let length = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(length, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            // Walk the entries: processors are 20 bytes, the rest 8.
            let mut offset = HEADER_SIZE;
            let mut processors = 0;
            for _ in 0..count {
                let size = if table[offset] == ENTRY_PROCESSOR {
                    processors += 1;
                    20
                } else {
                    8
                };
                offset += size;
            }
            assert_eq!(offset, length);
            assert_eq!(processors, cpus as usize);
        }
    }

    #[test]
    fn cpu_counts_out_of_range_are_rejected() {
        assert!(matches!(build(0), Err(MptableError::NoCpus)));
        assert!(matches!(
            build(MAX_VCPUS + 1),
            Err(MptableError::TooManyCpus(_))
        ));
    }
}
