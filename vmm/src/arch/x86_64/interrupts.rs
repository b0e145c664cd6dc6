//! Local APIC setup: LINT0 delivers the legacy PIC's interrupts (ExtINT), LINT1 NMIs.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_register(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

fn with_delivery_mode(register: u32, mode: u32) -> u32 {
    (register & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_register(lapic, APIC_LVT0);
    set_register(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_register(lapic, APIC_LVT1);
    set_register(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Reads the vCPU's local APIC, programs LINT0/LINT1 and writes it back.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut lapic = vcpu.get_lapic()?;
    set_lint(&mut lapic);
    vcpu.set_lapic(&lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes_are_set_and_other_bits_kept() {
        let mut lapic = kvm_lapic_state::default();
        set_register(&mut lapic, APIC_LVT0, 0x0001_0000 | 0x200);
        set_register(&mut lapic, APIC_LVT1, 0x0001_0000);
        set_lint(&mut lapic);
        assert_eq!(get_register(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_register(&lapic, APIC_LVT1), 0x0001_0400);
    }
}
