//! Guest RAM: mappings of a memfd, of shared or of private anonymous memory (see
//! [`MemoryBacking`]), laid out around the MMIO gap below 4 GiB.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion,
};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory as the VMM uses it everywhere.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is unusable.
    #[error(
        "guest memory size {0} bytes is invalid: it must be a non-zero multiple of 4 KiB of at most 1 TiB"
    )]
    InvalidSize(u64),
    /// memfd_create or ftruncate failed, or the backing file cannot be shared.
    #[error("cannot set up the file backing guest memory: {0}")]
    BackingFile(#[source] std::io::Error),
    /// mmap failed.
    #[error("cannot map {size} bytes of guest memory (is the host short of memory?): {source}")]
    Mmap {
        /// Bytes requested.
        size: u64,
        /// The mmap error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The regions overlap or overflow (a bug in the layout).
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
}

/// How guest RAM is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryBacking {
    /// The fastest backing this host offers: [`MemoryBacking::Memfd`] when the host gives
    /// shared memory transparent huge pages (`shmem_enabled` is `advise` or more), else
    /// [`MemoryBacking::Private`]. Guest RAM on 4 KiB pages costs the guest one nested page
    /// fault per page it touches and many TLB misses: a Linux guest's early memory setup
    /// took 0.26 s instead of 0.02 s that way in the emulated KVM host.
    #[default]
    Auto,
    /// A memfd (`/memfd:twinbox-guest-ram`, MAP_SHARED), shareable by passing the fd and
    /// ready for snapshots. Huge pages only where the host's `shmem_enabled` allows them
    /// (most distributions ship `never`).
    Memfd,
    /// Anonymous shared memory; huge pages as for [`MemoryBacking::Memfd`].
    Anonymous,
    /// Private anonymous memory, as Firecracker and QEMU use by default: transparent huge
    /// pages whenever the host's THP setting is not `never`. Not shareable with another
    /// process.
    Private,
}

/// Where the host says whether shared memory may use transparent huge pages.
const SHMEM_THP_SETTING: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

impl MemoryBacking {
    /// The concrete backing: [`MemoryBacking::Auto`] resolved for this host.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto => {
                let setting = std::fs::read_to_string(SHMEM_THP_SETTING).unwrap_or_default();
                if shmem_gets_huge_pages(&setting) {
                    Self::Memfd
                } else {
                    Self::Private
                }
            }
            other => other,
        }
    }
}

/// Whether shared memory that asks for huge pages (MADV_HUGEPAGE) gets them under this
/// `shmem_enabled` setting (the selected value is in brackets).
fn shmem_gets_huge_pages(setting: &str) -> bool {
    let selected = setting
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'));
    matches!(
        selected,
        Some("always" | "within_size" | "advise" | "force")
    )
}

/// The (guest address, size) pairs that hold `size` bytes of RAM: below the MMIO gap first,
/// the rest from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Checks a guest RAM size.
fn check_size(size: u64) -> Result<(), MemoryError> {
    const MAX_SIZE: u64 = 1 << 40;
    if size == 0 || !size.is_multiple_of(4096) || size > MAX_SIZE {
        return Err(MemoryError::InvalidSize(size));
    }
    Ok(())
}

/// Creates `size` bytes of guest RAM.
pub fn create_guest_memory(size: u64, backing: MemoryBacking) -> Result<GuestMemory, MemoryError> {
    check_size(size)?;
    let backing = backing.resolve();
    tracing::debug!("guest memory: {} MiB, {backing:?}", size >> 20);
    let memfd = match backing {
        MemoryBacking::Memfd => Some(create_memfd(size)?),
        _ => None,
    };
    let sharing = match backing {
        MemoryBacking::Private => libc::MAP_PRIVATE,
        _ => libc::MAP_SHARED,
    };
    map_ram(size, sharing, memfd.as_ref())
}

/// Maps `size` bytes of guest RAM from `file`, which holds the RAM regions one after the
/// other (a snapshot's memory), privately: the guest reads a page from the file when it
/// first touches it and gets its own copy when it first writes it. Nothing is copied up
/// front, and every VM restored from one file shares the pages it only reads through the
/// host's page cache.
///
/// Only the 2 MiB chunks of `data` (file offsets `[start, end)` that hold data) come from
/// the file; the rest is anonymous memory with huge pages, as at boot. A hole of the file
/// that the guest writes would otherwise cost a zeroed page cache page besides the guest's
/// copy, which a tmpfs cannot even reclaim.
pub fn map_guest_memory_file(
    file: &File,
    size: u64,
    data: &[(u64, u64)],
) -> Result<GuestMemory, MemoryError> {
    check_size(size)?;
    let mem = map_ram(size, libc::MAP_PRIVATE, None)?;
    let mut region_file_start = 0u64;
    for region in mem.iter() {
        let region_file_end = region_file_start + region.len();
        for (start, end) in huge_page_chunks(data) {
            let (from, to) = (start.max(region_file_start), end.min(region_file_end));
            if from >= to {
                continue;
            }
            let host = region.as_ptr() as usize + (from - region_file_start) as usize;
            // SAFETY: [host, host + (to - from)) lies inside this region's live mapping,
            // which vm-memory never unmaps; MAP_FIXED replaces that part of it with the file's
            // pages at the same guest addresses, before any vCPU runs.
            let mapped = unsafe {
                libc::mmap(
                    host as *mut libc::c_void,
                    (to - from) as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    from as libc::off_t,
                )
            };
            if mapped == libc::MAP_FAILED {
                return Err(MemoryError::Mmap {
                    size: to - from,
                    source: MmapRegionError::Mmap(std::io::Error::last_os_error()),
                });
            }
        }
        region_file_start = region_file_end;
    }
    Ok(mem)
}

/// `ranges` (sorted, `[start, end)`) widened to whole 2 MiB chunks and merged: the parts of
/// guest RAM that come from the file, on huge-page boundaries so the rest can have huge
/// pages.
fn huge_page_chunks(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let huge = HUGE_PAGE as u64;
    let mut chunks: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in ranges.iter().filter(|(start, end)| start < end) {
        let (start, end) = (start / huge * huge, end.div_ceil(huge) * huge);
        match chunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => chunks.push((start, end)),
        }
    }
    chunks
}

/// Maps the RAM regions of `size` bytes (`sharing`: MAP_SHARED or MAP_PRIVATE), from `file`
/// laid out region after region, or anonymous.
fn map_ram(
    size: u64,
    sharing: libc::c_int,
    file: Option<&File>,
) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (guest_addr, len) in ram_ranges(size) {
        let offset = file
            .map(|file| {
                file.try_clone()
                    .map(|f| FileOffset::new(f, file_offset))
                    .map_err(MemoryError::BackingFile)
            })
            .transpose()?;
        let flags = sharing
            | libc::MAP_NORESERVE
            | if offset.is_none() {
                libc::MAP_ANONYMOUS
            } else {
                0
            };
        let mapping = map_aligned(len as usize, flags, offset)?;
        advise_huge_pages(&mapping);
        let region = GuestRegionMmap::new(mapping, guest_addr)
            .ok_or_else(|| MemoryError::Layout(format!("region at {guest_addr:?} overflows")))?;
        regions.push(region);
        file_offset += len;
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))
}

/// Alignment of guest RAM in the VMM's address space: one huge page. KVM maps guest memory
/// with 2 MiB pages only where guest-physical and host-virtual addresses agree modulo 2 MiB,
/// and mmap aligns to 4 KiB only (before Linux 6.7): unaligned, every 4 KiB of guest RAM
/// costs its own nested page fault and TLB entry even when the host backs it with huge
/// pages. QEMU aligns its RAM the same way.
const HUGE_PAGE: usize = 2 << 20;

/// Maps `len` bytes of guest RAM (`flags`; from `file` if given) at a 2 MiB-aligned address.
/// Like Firecracker's guest memory, the mapping lasts as long as the process (a VMM process
/// runs one VM): vm-memory does not unmap regions it did not map itself.
fn map_aligned(
    len: usize,
    flags: libc::c_int,
    file: Option<FileOffset>,
) -> Result<MmapRegion, MemoryError> {
    let mmap_error = |error: std::io::Error| MemoryError::Mmap {
        size: len as u64,
        source: MmapRegionError::Mmap(error),
    };
    let reserved = len + HUGE_PAGE;
    // SAFETY: a new inaccessible anonymous mapping where the kernel chooses; it touches no
    // existing memory.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserved,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(mmap_error(std::io::Error::last_os_error()));
    }
    let base = base as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let (fd, offset) = file.as_ref().map_or((-1, 0), |f| {
        (f.file().as_raw_fd(), f.start() as libc::off_t)
    });
    // SAFETY: [start, start + len) lies inside the reservation just made, which nothing else
    // uses; MAP_FIXED replaces only that part of it.
    let mapped = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED,
            fd,
            offset,
        )
    };
    let failed = (mapped == libc::MAP_FAILED).then(std::io::Error::last_os_error);
    // Give back what the mapping does not use: all of the reservation if it failed.
    let unused = match failed {
        Some(_) => vec![(base, reserved)],
        None => vec![
            (base, start - base),
            (start + len, base + reserved - start - len),
        ],
    };
    for (address, size) in unused.into_iter().filter(|&(_, size)| size > 0) {
        // SAFETY: the range is part of our own reservation and holds nothing anyone uses.
        unsafe { libc::munmap(address as *mut libc::c_void, size) };
    }
    if let Some(error) = failed {
        return Err(mmap_error(error));
    }
    let builder = MmapRegionBuilder::new(len)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags);
    let builder = match file {
        Some(file) => builder.with_file_offset(file),
        None => builder,
    };
    // SAFETY: [start, start + len) is a live read-write mapping of ours that is never
    // unmapped.
    unsafe { builder.with_raw_mmap_pointer(start as *mut u8) }
        .build()
        .map_err(|source| MemoryError::Mmap {
            size: len as u64,
            source,
        })
}

/// Asks for transparent huge pages on guest RAM: far fewer EPT/NPT faults and TLB misses
/// while the guest touches its memory. Private memory gets them unless THP is `never`;
/// shared memory when the host allows it (`shmem_enabled` = `advise` or more). Otherwise
/// this is a no-op, so failures are not errors.
fn advise_huge_pages(mapping: &MmapRegion) {
    // SAFETY: the range is exactly the live mapping owned by `mapping`; MADV_HUGEPAGE only
    // changes how the kernel backs it, never its contents.
    let result =
        unsafe { libc::madvise(mapping.as_ptr().cast(), mapping.size(), libc::MADV_HUGEPAGE) };
    if result != 0 {
        tracing::debug!(
            "guest memory: no transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn create_memfd(size: u64) -> Result<File, MemoryError> {
    let name = CString::new("twinbox-guest-ram").expect("static name has no NUL");
    // SAFETY: `name` is a valid NUL-terminated string; the returned fd is checked below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::BackingFile(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::BackingFile)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_data_is_mapped_in_whole_merged_huge_pages() {
        const M: u64 = 1 << 20;
        assert_eq!(
            huge_page_chunks(&[(4096, 8192), (M, M + 4096), (5 * M, 5 * M), (9 * M, 13 * M)]),
            [(0, 2 * M), (8 * M, 14 * M)]
        );
        assert_eq!(huge_page_chunks(&[]), []);
    }
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_region_below_the_gap() {
        let mem = create_guest_memory(64 << 20, MemoryBacking::Memfd).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let size = MMIO_GAP_START + (256 << 20);
        let mem = create_guest_memory(size, MemoryBacking::Anonymous).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(!mem.address_in_range(GuestAddress(MMIO_GAP_START)));
        assert!(mem.address_in_range(GuestAddress(MMIO_GAP_END)));
        assert_eq!(
            mem.last_addr(),
            GuestAddress(MMIO_GAP_END + (256 << 20) - 1)
        );
    }

    #[test]
    fn every_backing_holds_data() {
        for backing in [
            MemoryBacking::Auto,
            MemoryBacking::Memfd,
            MemoryBacking::Anonymous,
            MemoryBacking::Private,
        ] {
            let mem = create_guest_memory(8 << 20, backing).unwrap();
            mem.write_obj(0x1234_5678u32, GuestAddress(0x10_0000))
                .unwrap();
            assert_eq!(
                mem.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
                0x1234_5678,
                "{backing:?}"
            );
        }
    }

    #[test]
    fn guest_ram_is_aligned_to_huge_pages() {
        for backing in [
            MemoryBacking::Memfd,
            MemoryBacking::Anonymous,
            MemoryBacking::Private,
        ] {
            // Below and above the MMIO gap: two regions.
            let mem = create_guest_memory(MMIO_GAP_START + (6 << 20), backing).unwrap();
            assert_eq!(mem.num_regions(), 2);
            for region in mem.iter() {
                let host = region
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .unwrap() as usize;
                assert_eq!(host % HUGE_PAGE, 0, "{backing:?} at {host:#x}");
            }
            mem.write_obj(7u64, GuestAddress(MMIO_GAP_END + 8)).unwrap();
            assert_eq!(
                mem.read_obj::<u64>(GuestAddress(MMIO_GAP_END + 8)).unwrap(),
                7
            );
        }
    }

    #[test]
    fn auto_backing_follows_the_hosts_shared_memory_huge_pages() {
        assert!(!shmem_gets_huge_pages(
            "always within_size advise [never] deny force"
        ));
        assert!(!shmem_gets_huge_pages(
            "always within_size advise never [deny] force"
        ));
        assert!(shmem_gets_huge_pages(
            "always within_size [advise] never deny force"
        ));
        assert!(shmem_gets_huge_pages(
            "[always] within_size advise never deny force"
        ));
        assert!(!shmem_gets_huge_pages(""));
        let setting = std::fs::read_to_string(SHMEM_THP_SETTING).unwrap_or_default();
        let expected = if shmem_gets_huge_pages(&setting) {
            MemoryBacking::Memfd
        } else {
            MemoryBacking::Private
        };
        assert_eq!(MemoryBacking::Auto.resolve(), expected);
        assert_eq!(MemoryBacking::Anonymous.resolve(), MemoryBacking::Anonymous);
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for size in [0, 4095, 1 << 41] {
            assert!(matches!(
                create_guest_memory(size, MemoryBacking::Memfd),
                Err(MemoryError::InvalidSize(_))
            ));
        }
    }
}
