//! Kernel, initrd and command line loading (linux-loader), and the PVM guest check.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, load_cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};
use crate::arch::x86_64::{BootProtocol, InitrdPlacement};
use crate::vstate::memory::GuestMemory;

/// Errors while loading the kernel, initrd or command line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither an x86-64 ELF nor a bzImage.
    #[error(
        "{0} is not a kernel twinbox can boot: expected an x86-64 ELF vmlinux or a bzImage (vmlinuz)"
    )]
    UnknownFormat(PathBuf),
    /// linux-loader rejected the kernel.
    #[error(
        "cannot load kernel {path}: {source} (is it an x86-64 kernel that fits in guest memory?)"
    )]
    Kernel {
        /// The kernel.
        path: PathBuf,
        /// The loader error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit.
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the kernel; give the VM more memory"
    )]
    InitrdTooLarge {
        /// The initrd.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The highest address it may end at.
        limit: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy initrd {path} into guest memory: {source}")]
    InitrdCopy {
        /// The initrd.
        path: PathBuf,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("cannot write the kernel command line into guest memory: {0}")]
    CmdlineLoad(#[source] linux_loader::loader::Error),
    /// A Linux kernel that cannot run on a PVM host.
    #[error(
        "{} is {}, but this host's /dev/kvm is PVM (the kvm_pvm module is loaded), which only runs kernels built with CONFIG_PVM_GUEST; a stock kernel would hang silently. Boot a PVM-enabled guest kernel as an uncompressed vmlinux (built with CONFIG_PVM_GUEST=y), or use a host with hardware KVM (VMX/SVM)",
        .path.display(),
        if *.compressed { "a compressed bzImage whose PVM guest support cannot be checked" } else { "a Linux kernel without PVM guest support" }
    )]
    PvmGuestKernelRequired {
        /// The kernel.
        path: PathBuf,
        /// Whether it was a bzImage (unverifiable) rather than a vmlinux without PVM code.
        compressed: bool,
    },
}

/// What loading the kernel produced.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry point.
    pub entry: u64,
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
    /// First free guest address after the kernel.
    pub end: u64,
}

/// Kernel image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF executable (vmlinux, or a test payload).
    Elf,
    /// A bzImage (vmlinuz).
    BzImage,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// Offset of the 64-bit entry point inside a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn open(path: &Path) -> Result<File, LoadError> {
    File::open(path).map_err(read_error(path))
}

/// Tells an ELF kernel from a bzImage by their magic numbers.
pub fn detect_format(path: &Path, file: &mut File) -> Result<KernelFormat, LoadError> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0)).map_err(read_error(path))?;
    if file.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    if file.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET)).is_ok()
        && file.read_exact(&mut magic).is_ok()
        && &magic == BZIMAGE_MAGIC
    {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoadError::UnknownFormat(path.to_path_buf()))
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, LoadError> {
    let mut file = open(path)?;
    let format = detect_format(path, &mut file)?;
    let kernel_err = |source| LoadError::Kernel {
        path: path.to_path_buf(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let result = Elf::load(mem, None, &mut file, himem).map_err(kernel_err)?;
            let (entry, protocol) = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => (entry.0, BootProtocol::Pvh),
                _ => (result.kernel_load.0, BootProtocol::Linux64),
            };
            Ok(LoadedKernel {
                entry,
                protocol,
                setup_header: None,
                end: result.kernel_end,
            })
        }
        KernelFormat::BzImage => {
            let result = BzImage::load(mem, None, &mut file, himem).map_err(kernel_err)?;
            Ok(LoadedKernel {
                entry: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                protocol: BootProtocol::Linux64,
                setup_header: result.setup_header,
                end: result.kernel_end,
            })
        }
    }
}

/// Highest address (exclusive) the initrd may end at: the end of RAM below the MMIO gap,
/// capped by the kernel's `initrd_addr_max` when it gives one.
fn initrd_limit(mem: &GuestMemory, header: Option<&setup_header>) -> u64 {
    let low_ram_end = mem
        .iter()
        .map(|region| region.start_addr().0 + region.len())
        .filter(|end| *end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0);
    match header.map(|h| h.initrd_addr_max) {
        Some(max) if max != 0 => low_ram_end.min(u64::from(max) + 1),
        _ => low_ram_end,
    }
}

/// Copies the initrd to the top of low memory (page aligned), above the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<InitrdPlacement, LoadError> {
    let mut file = open(path)?;
    let size = file.metadata().map_err(read_error(path))?.len();
    let limit = initrd_limit(mem, kernel.setup_header.as_ref());
    let too_large = || LoadError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        limit,
    };
    let address = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if address < kernel.end || size == 0 && address == 0 {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, size as usize)
        .map_err(|source| LoadError::InitrdCopy {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(InitrdPlacement { address, size })
}

/// Writes `cmdline` at [`CMDLINE_START`]; returns its size including the NUL.
pub fn load_command_line(mem: &GuestMemory, cmdline: &Cmdline) -> Result<usize, LoadError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(LoadError::CmdlineLoad)?;
    Ok(cmdline.as_cstring()?.as_bytes_with_nul().len())
}

/// Parses a command line string into linux-loader's builder with the x86 size limit.
pub fn parse_command_line(text: &str) -> Result<Cmdline, LoadError> {
    Ok(Cmdline::try_from(text, CMDLINE_MAX_SIZE)?)
}

/// Strings found in every Linux kernel image that is not compressed (vmlinux).
const LINUX_MARKERS: &[&[u8]] = &[b"Linux version "];
/// Strings only kernels built with CONFIG_PVM_GUEST carry (the PVM guest setup code's
/// log prefix and symbol names).
const PVM_GUEST_MARKERS: &[&[u8]] = &[b"pvm-guest: ", b"pvm_early_setup", b"kvm_pvm_guest"];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Scans a file for any of several strings, in chunks, without loading it whole.
fn scan_for(path: &Path, needles: &[&[u8]]) -> Result<bool, LoadError> {
    let mut file = open(path)?;
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut buffer = vec![0u8; 1 << 20];
    let mut carried = 0;
    loop {
        let read = file
            .read(&mut buffer[carried..])
            .map_err(read_error(path))?;
        if read == 0 {
            return Ok(false);
        }
        let filled = carried + read;
        if needles.iter().any(|n| contains(&buffer[..filled], n)) {
            return Ok(true);
        }
        carried = overlap.min(filled);
        buffer.copy_within(filled - carried..filled, 0);
    }
}

/// On a PVM host, refuses Linux kernels that cannot run there: a bzImage (its compressed
/// payload cannot be checked and stock ones hang) or a vmlinux without PVM guest code.
/// Other payloads (tiny test guests) run as they are.
pub fn check_pvm_guest(path: &Path, host_is_pvm: bool) -> Result<(), LoadError> {
    if !host_is_pvm {
        return Ok(());
    }
    let mut file = open(path)?;
    let refuse = |compressed| LoadError::PvmGuestKernelRequired {
        path: path.to_path_buf(),
        compressed,
    };
    match detect_format(path, &mut file)? {
        KernelFormat::BzImage => Err(refuse(true)),
        KernelFormat::Elf
            if scan_for(path, LINUX_MARKERS)? && !scan_for(path, PVM_GUEST_MARKERS)? =>
        {
            Err(refuse(false))
        }
        KernelFormat::Elf => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{elf_image, write_temp};
    use crate::vstate::memory::{MemoryBacking, create_guest_memory};

    #[test]
    fn elf_kernel_is_loaded_at_its_physical_address() {
        let code = [0xf4u8, 0x90, 0x90];
        let image = write_temp(&elf_image(0x20_0000, &code));
        let mem = create_guest_memory(16 << 20, MemoryBacking::Anonymous).unwrap();
        let kernel = load_kernel(&mem, image.path()).unwrap();
        assert_eq!(kernel.entry, 0x20_0000);
        assert_eq!(kernel.protocol, BootProtocol::Linux64);
        assert_eq!(kernel.end, 0x20_0000 + code.len() as u64);
        let mut loaded = [0u8; 3];
        mem.read_slice(&mut loaded, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(loaded, code);
    }

    #[test]
    fn garbage_and_oversized_kernels_get_clear_errors() {
        let mem = create_guest_memory(4 << 20, MemoryBacking::Anonymous).unwrap();
        let garbage = write_temp(b"definitely not a kernel, just some bytes");
        assert!(matches!(
            load_kernel(&mem, garbage.path()),
            Err(LoadError::UnknownFormat(_))
        ));
        let beyond = write_temp(&elf_image(0x80_0000, &[0x90; 16]));
        assert!(matches!(
            load_kernel(&mem, beyond.path()),
            Err(LoadError::Kernel { .. })
        ));
        assert!(matches!(
            load_kernel(&mem, Path::new("/nonexistent/vmlinux")),
            Err(LoadError::Read { .. })
        ));
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory() {
        let mem = create_guest_memory(16 << 20, MemoryBacking::Anonymous).unwrap();
        let content: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let initrd = write_temp(&content);
        let kernel = LoadedKernel {
            entry: HIMEM_START,
            protocol: BootProtocol::Linux64,
            setup_header: None,
            end: 2 << 20,
        };
        let placed = load_initrd(&mem, initrd.path(), &kernel).unwrap();
        assert_eq!(placed.size, content.len() as u64);
        assert_eq!(placed.address % 4096, 0);
        assert!(placed.address + placed.size <= 16 << 20);
        let mut back = vec![0u8; content.len()];
        mem.read_slice(&mut back, GuestAddress(placed.address))
            .unwrap();
        assert_eq!(back, content);

        let big = write_temp(&vec![0u8; 15 << 20]);
        assert!(matches!(
            load_initrd(&mem, big.path(), &kernel),
            Err(LoadError::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn command_line_is_written_nul_terminated() {
        let mem = create_guest_memory(4 << 20, MemoryBacking::Anonymous).unwrap();
        let cmdline = parse_command_line("console=ttyS0 reboot=t").unwrap();
        let size = load_command_line(&mem, &cmdline).unwrap();
        assert_eq!(size, "console=ttyS0 reboot=t".len() + 1);
        let mut back = vec![0u8; size];
        mem.read_slice(&mut back, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&back, b"console=ttyS0 reboot=t\0");
        assert!(parse_command_line(&"x".repeat(CMDLINE_MAX_SIZE + 1)).is_err());
    }

    #[test]
    fn pvm_check_refuses_stock_linux_and_allows_other_payloads() {
        let payload = write_temp(&elf_image(0x20_0000, &[0xf4]));
        check_pvm_guest(payload.path(), true).unwrap();

        let mut linux = elf_image(0x20_0000, &[0xf4]);
        linux.extend_from_slice(b"Linux version 6.12.0 (builder@host)");
        let stock = write_temp(&linux);
        check_pvm_guest(stock.path(), false).unwrap();
        let error = check_pvm_guest(stock.path(), true).unwrap_err();
        assert!(matches!(
            error,
            LoadError::PvmGuestKernelRequired {
                compressed: false,
                ..
            }
        ));
        assert!(error.to_string().contains("CONFIG_PVM_GUEST"));

        linux.extend_from_slice(b"\0pvm-guest: \0");
        let pvm = write_temp(&linux);
        check_pvm_guest(pvm.path(), true).unwrap();

        let mut bzimage = vec![0u8; 0x400];
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = write_temp(&bzimage);
        let error = check_pvm_guest(bz.path(), true).unwrap_err();
        assert!(error.to_string().contains("compressed bzImage"), "{error}");
    }
}
