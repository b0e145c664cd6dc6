//! twinbox's microVM monitor.
//!
//! One process per VM: it creates a KVM VM, loads a Linux kernel and runs it with a minimal
//! device set (serial console, i8042, boot timer, virtio-mmio block and vsock).
