//! CPUID normalization: start from what KVM supports (KVM_GET_SUPPORTED_CPUID) and make
//! each vCPU describe itself consistently: its APIC id, the topology (one thread per core,
//! all cores in one package) and the hypervisor bit.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const CMP_LEGACY_BIT: u32 = 1 << 1; // leaf 0x8000_0001 ECX (AMD)
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

const TSC_DEADLINE_BIT: u32 = 1 << 24; // leaf 1 ECX
const BRAND_LEAVES: [u32; 3] = [0x8000_0002, 0x8000_0003, 0x8000_0004];

/// Adds what KVM_GET_SUPPORTED_CPUID leaves to the VMM: the TSC-deadline timer (KVM
/// emulates it when it has KVM_CAP_TSC_DEADLINE_TIMER; without the bit Linux calibrates
/// the LAPIC timer, slowly and sometimes unsuccessfully) and the host's processor brand
/// string.
pub fn add_vmm_features(cpuid: &mut CpuId, tsc_deadline: bool) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == 1 && tsc_deadline {
            entry.ecx |= TSC_DEADLINE_BIT;
        }
    }
    let max_extended = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0000)
        .map(|e| e.eax)
        .unwrap_or(0);
    for leaf in BRAND_LEAVES
        .into_iter()
        .filter(|leaf| *leaf <= max_extended)
    {
        let host = std::arch::x86_64::__cpuid(leaf);
        let brand = kvm_cpuid_entry2 {
            function: leaf,
            eax: host.eax,
            ebx: host.ebx,
            ecx: host.ecx,
            edx: host.edx,
            ..Default::default()
        };
        match cpuid.as_mut_slice().iter_mut().find(|e| e.function == leaf) {
            Some(entry) => *entry = brand,
            None => {
                if cpuid.push(brand).is_err() {
                    tracing::debug!("cpuid: no room for the brand string leaf {leaf:#x}");
                }
            }
        }
    }
}

/// Number of APIC-id bits needed to number `count` vCPUs.
fn id_bits(count: u8) -> u32 {
    (u32::from(count).max(1))
        .next_power_of_two()
        .trailing_zeros()
}

/// Rewrites `cpuid` (a copy of KVM's supported CPUID) for vCPU `cpu_index` of `cpu_count`.
pub fn normalize(cpuid: &mut CpuId, cpu_index: u8, cpu_count: u8) {
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, cpu_index, cpu_count);
    }
}

fn normalize_entry(entry: &mut kvm_cpuid_entry2, cpu_index: u8, cpu_count: u8) {
    let apic_id = u32::from(cpu_index);
    let count = u32::from(cpu_count);
    match entry.function {
        0x1 => {
            // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
            entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
            entry.ecx |= HYPERVISOR_BIT;
            if cpu_count > 1 {
                entry.edx |= HTT_BIT;
            } else {
                entry.edx &= !HTT_BIT;
            }
        }
        0x4 => {
            // Deterministic cache parameters (Intel): EAX[31:26] cores per package - 1,
            // EAX[25:14] logical processors sharing the cache - 1 (only the L3 is shared).
            let level = (entry.eax >> 5) & 0x7;
            entry.eax &= !((0x3f << 26) | (0xfff << 14));
            entry.eax |= (count - 1) << 26;
            if level == 3 {
                entry.eax |= (count - 1) << 14;
            }
        }
        0xb | 0x1f => {
            // Extended topology: level 0 = SMT (one thread per core), level 1 = core.
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = LEVEL_TYPE_SMT << 8;
                }
                1 => {
                    entry.eax = id_bits(cpu_count);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | 1;
                }
                index => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = index & 0xff;
                }
            }
        }
        0x8000_0001 => {
            if cpu_count > 1 {
                entry.ecx |= CMP_LEGACY_BIT;
            } else {
                entry.ecx &= !CMP_LEGACY_BIT;
            }
        }
        0x8000_0008 => {
            // ECX[15:12] APIC id size, ECX[7:0] number of cores - 1 (AMD).
            entry.ecx = (entry.ecx & !0xf0ff) | (id_bits(cpu_count) << 12) | (count - 1);
        }
        0x8000_001e => {
            // Extended APIC id, core id (one thread per core), node id 0.
            entry.eax = apic_id;
            entry.ebx = (entry.ebx & !0xffff) | (apic_id & 0xff);
            entry.ecx &= !0x7ff;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn normalized(entries: &[kvm_cpuid_entry2], cpu: u8, count: u8) -> Vec<kvm_cpuid_entry2> {
        let mut cpuid = CpuId::from_entries(entries).unwrap();
        normalize(&mut cpuid, cpu, count);
        cpuid.as_slice().to_vec()
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let out = normalized(&[leaf(1, 0)], 2, 4);
        assert_eq!(out[0].ebx >> 24, 2);
        assert_eq!((out[0].ebx >> 16) & 0xff, 4);
        assert_eq!(out[0].ebx & 0xffff, 0xffff, "brand/clflush bits kept");
        assert_ne!(out[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(out[0].edx & HTT_BIT, 0);
        let single = normalized(&[leaf(1, 0)], 0, 1);
        assert_eq!(single[0].edx & HTT_BIT, 0);
    }

    #[test]
    fn extended_topology_describes_cores() {
        let out = normalized(&[leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)], 3, 5);
        assert!(out.iter().all(|e| e.edx == 3));
        assert_eq!((out[0].ebx, out[0].ecx >> 8), (1, LEVEL_TYPE_SMT));
        assert_eq!(
            (out[1].eax, out[1].ebx, out[1].ecx >> 8),
            (3, 5, LEVEL_TYPE_CORE)
        );
        assert_eq!((out[2].ebx, out[2].ecx >> 8), (0, 0));
    }

    #[test]
    fn tsc_deadline_and_brand_string_are_added() {
        let mut cpuid = CpuId::from_entries(&[
            leaf(1, 0),
            kvm_cpuid_entry2 {
                function: 0x8000_0000,
                eax: 0x8000_0004,
                ..Default::default()
            },
        ])
        .unwrap();
        add_vmm_features(&mut cpuid, true);
        let entries = cpuid.as_slice();
        assert_ne!(entries[0].ecx & TSC_DEADLINE_BIT, 0);
        let host = std::arch::x86_64::__cpuid(0x8000_0002);
        let brand = entries.iter().find(|e| e.function == 0x8000_0002).unwrap();
        assert_eq!((brand.eax, brand.ebx), (host.eax, host.ebx));
        assert_eq!(
            entries.iter().filter(|e| e.function >= 0x8000_0002).count(),
            3
        );

        let mut without = CpuId::from_entries(&[leaf(1, 0)]).unwrap();
        add_vmm_features(&mut without, false);
        assert_eq!(without.as_slice()[0].ecx & TSC_DEADLINE_BIT, 0);
        assert_eq!(
            without.as_slice().len(),
            1,
            "no extended range, no brand leaves"
        );
    }

    #[test]
    fn amd_leaves_count_cores() {
        let out = normalized(
            &[
                leaf(0x8000_0008, 0),
                leaf(0x8000_001e, 0),
                leaf(0x8000_0001, 0),
            ],
            1,
            2,
        );
        assert_eq!(out[0].ecx & 0xff, 1);
        assert_eq!((out[0].ecx >> 12) & 0xf, 1);
        assert_eq!(out[1].eax, 1);
        assert_ne!(out[2].ecx & CMP_LEGACY_BIT, 0);
    }
}
