//! Guest RAM: MAP_SHARED mappings of a memfd (default) or of anonymous memory, laid out
//! around the MMIO gap below 4 GiB.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

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
    /// memfd_create or ftruncate failed.
    #[error("cannot create the memfd backing guest memory: {0}")]
    Memfd(#[source] std::io::Error),
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

/// How guest RAM is backed on the host. Both are MAP_SHARED, so the memory can later be
/// snapshotted or shared with another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryBacking {
    /// A sealed-size memfd (`/memfd:twinbox-guest-ram`), shareable by passing the fd.
    #[default]
    Memfd,
    /// Anonymous shared memory.
    Anonymous,
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

/// Creates `size` bytes of guest RAM.
pub fn create_guest_memory(size: u64, backing: MemoryBacking) -> Result<GuestMemory, MemoryError> {
    const MAX_SIZE: u64 = 1 << 40;
    if size == 0 || !size.is_multiple_of(4096) || size > MAX_SIZE {
        return Err(MemoryError::InvalidSize(size));
    }
    let memfd = match backing {
        MemoryBacking::Memfd => Some(create_memfd(size)?),
        MemoryBacking::Anonymous => None,
    };
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (guest_addr, len) in ram_ranges(size) {
        let offset = memfd
            .as_ref()
            .map(|file| {
                file.try_clone()
                    .map(|f| FileOffset::new(f, file_offset))
                    .map_err(MemoryError::Memfd)
            })
            .transpose()?;
        let flags = libc::MAP_SHARED
            | libc::MAP_NORESERVE
            | if offset.is_none() {
                libc::MAP_ANONYMOUS
            } else {
                0
            };
        let mapping = MmapRegion::build(
            offset,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
        )
        .map_err(|source| MemoryError::Mmap { size: len, source })?;
        advise_huge_pages(&mapping);
        let region = GuestRegionMmap::new(mapping, guest_addr)
            .ok_or_else(|| MemoryError::Layout(format!("region at {guest_addr:?} overflows")))?;
        regions.push(region);
        file_offset += len;
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))
}

/// Asks for transparent huge pages on guest RAM: far fewer EPT/NPT faults and TLB misses
/// while the guest touches its memory. Shared memory gets them when the host allows it
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` = `advise` or more); otherwise this
/// is a no-op, so failures are not errors.
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
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

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
    fn bad_sizes_are_rejected() {
        for size in [0, 4095, 1 << 41] {
            assert!(matches!(
                create_guest_memory(size, MemoryBacking::Memfd),
                Err(MemoryError::InvalidSize(_))
            ));
        }
    }
}
