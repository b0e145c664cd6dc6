//! Parsing and executing one virtio-blk request from any descriptor layout.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::ByteValued;

use crate::vstate::memory::GuestMemory;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the bounce buffer between the image and guest memory.
const CHUNK: usize = 64 << 10;

/// The request header (virtio_blk_outhdr).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RequestHeader {
    request_type: u32,
    ioprio: u32,
    sector: u64,
}

// SAFETY: plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// The image and its properties, as a request sees them.
pub struct Disk<'a> {
    /// The image file.
    pub file: &'a File,
    /// Size in sectors.
    pub sectors: u64,
    /// Whether writes are refused.
    pub read_only: bool,
    /// The id returned by GET_ID.
    pub id: &'a [u8; VIRTIO_BLK_ID_BYTES as usize],
}

/// Executes the request in `chain`; returns the number of bytes written into the chain
/// (data plus the status byte), which is what goes into the used ring.
pub fn execute(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    disk: &Disk<'_>,
    bounce: &mut Vec<u8>,
) -> u32 {
    let (mut reader, mut writer) = match (chain.clone().reader(mem), chain.writer(mem)) {
        (Ok(reader), Ok(writer)) => (reader, writer),
        _ => {
            tracing::warn!("virtio-blk: descriptor chain points outside guest memory; dropped");
            return 0;
        }
    };
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        tracing::warn!("virtio-blk: request without a writable status byte; dropped");
        return 0;
    };
    let Ok(mut status_writer) = writer.split_at(data_len) else {
        return 0;
    };
    let (status, data_written) = match reader.read_obj::<RequestHeader>() {
        Ok(header) => run(&header, &mut reader, &mut writer, data_len, disk, bounce),
        Err(_) => {
            tracing::warn!("virtio-blk: request header is shorter than 16 bytes");
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    if status_writer.write_obj(status as u8).is_err() {
        return data_written;
    }
    data_written + 1
}

/// Checks that `len` bytes at `sector` lie inside the disk; returns the byte offset.
fn checked_range(sector: u64, len: u64, sectors: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let end_sector = sector.checked_add(len / SECTOR_SIZE)?;
    (end_sector <= sectors).then(|| sector * SECTOR_SIZE)
}

fn run(
    header: &RequestHeader,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
    data_len: usize,
    disk: &Disk<'_>,
    bounce: &mut Vec<u8>,
) -> (u32, u32) {
    match header.request_type {
        VIRTIO_BLK_T_IN => {
            let Some(offset) = checked_range(header.sector, data_len as u64, disk.sectors) else {
                tracing::warn!(
                    "virtio-blk: read of {data_len} bytes at sector {} is out of bounds",
                    header.sector
                );
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            match copy_disk_to_guest(disk.file, offset, data_len, writer, bounce) {
                Ok(()) => (VIRTIO_BLK_S_OK, data_len as u32),
                Err(error) => {
                    tracing::warn!("virtio-blk: read failed: {error}");
                    (VIRTIO_BLK_S_IOERR, writer.bytes_written() as u32)
                }
            }
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let len = reader.available_bytes();
            let Some(offset) = checked_range(header.sector, len as u64, disk.sectors) else {
                tracing::warn!(
                    "virtio-blk: write of {len} bytes at sector {} is out of bounds",
                    header.sector
                );
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            match copy_guest_to_disk(reader, disk.file, offset, len, bounce) {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(error) => {
                    tracing::warn!("virtio-blk: write failed: {error}");
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if disk.read_only {
                return (VIRTIO_BLK_S_OK, 0);
            }
            match disk.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(error) => {
                    tracing::warn!("virtio-blk: flush failed: {error}");
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            let len = data_len.min(disk.id.len());
            match writer.write_all(&disk.id[..len]) {
                Ok(()) => (VIRTIO_BLK_S_OK, len as u32),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        other => {
            tracing::debug!("virtio-blk: unsupported request type {other}");
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    }
}

fn copy_disk_to_guest(
    file: &File,
    mut offset: u64,
    len: usize,
    writer: &mut Writer<'_>,
    bounce: &mut Vec<u8>,
) -> std::io::Result<()> {
    bounce.resize(CHUNK.min(len.max(1)), 0);
    let mut left = len;
    while left > 0 {
        let n = left.min(bounce.len());
        file.read_exact_at(&mut bounce[..n], offset)?;
        writer.write_all(&bounce[..n])?;
        offset += n as u64;
        left -= n;
    }
    Ok(())
}

fn copy_guest_to_disk(
    reader: &mut Reader<'_>,
    file: &File,
    mut offset: u64,
    len: usize,
    bounce: &mut Vec<u8>,
) -> std::io::Result<()> {
    bounce.resize(CHUNK.min(len.max(1)), 0);
    let mut left = len;
    while left > 0 {
        let n = left.min(bounce.len());
        reader.read_exact(&mut bounce[..n])?;
        file.write_all_at(&bounce[..n], offset)?;
        offset += n as u64;
        left -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_against_the_disk_size() {
        assert_eq!(checked_range(0, 512, 1), Some(0));
        assert_eq!(checked_range(1, 512, 2), Some(512));
        assert_eq!(checked_range(1, 1024, 2), None);
        assert_eq!(checked_range(0, 100, 8), None, "partial sector");
        assert_eq!(checked_range(u64::MAX, 512, u64::MAX), None, "overflow");
        assert_eq!(checked_range(5, 0, 5), Some(5 * 512));
    }
}
