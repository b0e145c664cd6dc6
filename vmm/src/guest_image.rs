//! Tiny guest payloads: wraps raw 64-bit code in a minimal bootable ELF, and assembles
//! NASM source into such code. Used by the VMM's tests and benchmarks, and handy for anyone
//! probing the VMM without a Linux kernel.
//!
//! The VMM enters an ELF payload like a vmlinux with the 64-bit boot protocol: long mode,
//! identity-mapped 2 MiB pages over the low 4 GiB, RSI = zero page.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Builds an ELF64 x86-64 executable with one loadable segment holding `code` at physical
/// and virtual address `load_address`, entered at its first byte.
pub fn elf_image(load_address: u64, code: &[u8]) -> Vec<u8> {
    const EHDR_SIZE: u16 = 64;
    const PHDR_SIZE: u16 = 56;
    let code_offset = u64::from(EHDR_SIZE + PHDR_SIZE);
    let mut image = Vec::with_capacity(code_offset as usize + code.len());
    // ELF header.
    image.extend(b"\x7fELF");
    image.extend([2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV ABI
    image.extend([0u8; 8]);
    image.extend(2u16.to_le_bytes()); // ET_EXEC
    image.extend(0x3eu16.to_le_bytes()); // EM_X86_64
    image.extend(1u32.to_le_bytes());
    image.extend(load_address.to_le_bytes()); // e_entry
    image.extend(u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    image.extend(0u64.to_le_bytes()); // e_shoff
    image.extend(0u32.to_le_bytes()); // e_flags
    image.extend(EHDR_SIZE.to_le_bytes());
    image.extend(PHDR_SIZE.to_le_bytes());
    image.extend(1u16.to_le_bytes()); // e_phnum
    image.extend(64u16.to_le_bytes()); // e_shentsize
    image.extend(0u16.to_le_bytes()); // e_shnum
    image.extend(0u16.to_le_bytes()); // e_shstrndx
    // Program header: PT_LOAD, RWX.
    image.extend(1u32.to_le_bytes());
    image.extend(7u32.to_le_bytes());
    image.extend(code_offset.to_le_bytes());
    image.extend(load_address.to_le_bytes()); // p_vaddr
    image.extend(load_address.to_le_bytes()); // p_paddr
    image.extend((code.len() as u64).to_le_bytes()); // p_filesz
    image.extend((code.len() as u64).to_le_bytes()); // p_memsz
    image.extend(0x1000u64.to_le_bytes()); // p_align
    image.extend(code);
    image
}

/// Errors while assembling a payload.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// nasm could not be run.
    #[error("cannot run nasm (install Debian's `nasm` package): {0}")]
    Spawn(#[source] std::io::Error),
    /// nasm rejected the source.
    #[error("nasm failed: {0}")]
    Nasm(String),
    /// Temporary files failed.
    #[error("cannot write assembler files: {0}")]
    Io(#[from] std::io::Error),
}

/// Assembles `source` (NASM syntax) to flat binary code. The source should start with
/// `bits 64` and `org <load address>`.
pub fn assemble(source: &str, work_dir: &Path) -> Result<Vec<u8>, AssembleError> {
    let input = work_dir.join("guest.asm");
    let output = work_dir.join("guest.bin");
    std::fs::File::create(&input)?.write_all(source.as_bytes())?;
    let result = Command::new("nasm")
        .arg("-f")
        .arg("bin")
        .arg("-o")
        .arg(&output)
        .arg(&input)
        .output()
        .map_err(AssembleError::Spawn)?;
    if !result.status.success() {
        return Err(AssembleError::Nasm(
            String::from_utf8_lossy(&result.stderr).into_owned(),
        ));
    }
    Ok(std::fs::read(output)?)
}
