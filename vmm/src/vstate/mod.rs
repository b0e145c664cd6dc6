//! KVM state: the VM (memory slots, irqchip, PIT), its vCPUs and guest memory.

pub mod memory;
pub mod vcpu;
pub mod vm;
