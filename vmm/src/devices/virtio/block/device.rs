//! The virtio-blk device: configuration, features and the request queue.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_ID_BYTES};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Disk, SECTOR_SIZE};
use crate::devices::virtio::{
    ActivateError, IrqTrigger, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_VRING, VirtioDevice,
    read_config_bytes,
};
use crate::vstate::memory::GuestMemory;

/// Queue size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Errors while creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("cannot open disk image {path}{}: {source}", if *.read_only { " (read-only)" } else { "" })]
    Open {
        /// The image.
        path: PathBuf,
        /// Whether it was opened read-only.
        read_only: bool,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image is larger than zero but smaller than one sector.
    #[error(
        "disk image {0} holds less than one 512-byte sector; a disk image is empty (a \
         placeholder the guest sees as a disk without media) or at least one sector"
    )]
    PartialSector(PathBuf),
    /// eventfd creation failed.
    #[error("cannot create the block device's eventfds: {0}")]
    EventFd(#[source] std::io::Error),
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
}

/// A virtio-blk device over a raw image.
pub struct Block {
    disk: File,
    sectors: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    acked_features: u64,
    queue_events: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    active: Option<Active>,
    bounce: Vec<u8>,
}

impl Block {
    /// Opens `path` as a disk; `read_only` opens it O_RDONLY and offers VIRTIO_BLK_F_RO.
    pub fn new(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_error = |source| BlockError::Open {
            path: path.to_path_buf(),
            read_only,
            source,
        };
        let disk = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_error)?;
        let metadata = disk.metadata().map_err(open_error)?;
        // The end offset, not the metadata length: block devices (LVM volumes, loop and
        // virtio disks) have a metadata length of 0.
        let size = (&disk).seek(SeekFrom::End(0)).map_err(open_error)?;
        let sectors = size / SECTOR_SIZE;
        if sectors == 0 && size > 0 {
            return Err(BlockError::PartialSector(path.to_path_buf()));
        }
        // A stable id from the image's device and inode, as Firecracker does.
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let text = format!("{:x}{:x}", metadata.dev(), metadata.ino());
        let len = text.len().min(id.len());
        id[..len].copy_from_slice(&text.as_bytes()[..len]);
        Ok(Self {
            disk,
            sectors,
            read_only,
            id,
            acked_features: 0,
            queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?],
            interrupt: Arc::new(IrqTrigger::new().map_err(BlockError::EventFd)?),
            active: None,
            bounce: Vec::new(),
        })
    }

    /// Size of the disk in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// The disk id returned by GET_ID.
    pub fn id(&self) -> &[u8; VIRTIO_BLK_ID_BYTES as usize] {
        &self.id
    }

    /// Processes every available request; raises the interrupt when any completed.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let disk = Disk {
            file: &self.disk,
            sectors: self.sectors,
            read_only: self.read_only,
            id: &self.id,
        };
        let mut completed = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let written = request::execute(&active.mem, chain, &disk, &mut self.bounce);
            if let Err(error) = active.queue.add_used(&active.mem, head, written) {
                tracing::warn!("virtio-blk: cannot return descriptor {head}: {error}");
            }
            completed = true;
        }
        let notify = completed && active.queue.needs_notification(&active.mem).unwrap_or(true);
        if notify {
            self.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio_blk_config starts with the capacity in sectors.
        read_config_bytes(&self.sectors.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, mem: GuestMemory, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(ActivateError::QueueCount {
                expected: 1,
                actual: 0,
            });
        };
        self.active = Some(Active { mem, queue });
        // Pick up requests queued before activation in the event loop.
        let _ = self.queue_events[0].write(1);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    fn active_queues(&self) -> &[Queue] {
        self.active
            .as_ref()
            .map(|active| std::slice::from_ref(&active.queue))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_support::{desc, memory, mock_queue};
    use crate::testutil::write_temp;
    use virtio_bindings::virtio_blk::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const HEADER: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn image(sectors: usize) -> tempfile::NamedTempFile {
        let bytes: Vec<u8> = (0..sectors * 512).map(|i| (i / 512) as u8).collect();
        write_temp(&bytes)
    }

    fn header(mem: &GuestMemory, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs one chain through an activated device; returns (status byte, used length).
    fn run_chain(
        block: &mut Block,
        mem: &GuestMemory,
        chain: &[virtio_queue::desc::RawDescriptor],
    ) -> (u8, u32) {
        let queue = mock_queue(mem, 16);
        queue.build_desc_chain(chain).unwrap();
        block
            .activate(mem.clone(), vec![queue.create_queue::<Queue>().unwrap()])
            .unwrap();
        block.process_queue();
        let used = queue.used().ring().ref_at(0).unwrap().load();
        block.reset();
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), used.len())
    }

    #[test]
    fn reads_writes_flushes_and_ids() {
        let mem = memory();
        let file = image(8);
        let mut block = Block::new(file.path(), false).unwrap();
        assert_eq!(block.sectors(), 8);

        header(&mem, VIRTIO_BLK_T_IN, 2);
        let (status, used) = run_chain(
            &mut block,
            &mem,
            &[
                desc(HEADER, 16, 0),
                desc(DATA, 1024, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_OK as u8, 1025));
        let mut data = vec![0u8; 1024];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data[..512].iter().all(|b| *b == 2) && data[512..].iter().all(|b| *b == 3));

        mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 7);
        let (status, _) = run_chain(
            &mut block,
            &mem,
            &[
                desc(HEADER, 16, 0),
                desc(DATA, 512, 0),
                desc(STATUS, 1, WRITE),
            ],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let content = std::fs::read(file.path()).unwrap();
        assert!(content[7 * 512..].iter().all(|b| *b == 0xab));

        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let (status, _) = run_chain(
            &mut block,
            &mem,
            &[desc(HEADER, 16, 0), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);

        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let (status, used) = run_chain(
            &mut block,
            &mem,
            &[
                desc(HEADER, 16, 0),
                desc(DATA, 20, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        );
        assert_eq!((status, used), (VIRTIO_BLK_S_OK as u8, 21));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, block.id());
    }

    #[test]
    fn header_data_and_status_in_one_descriptor_each_way() {
        // The device must not assume a layout: header and data share a descriptor here.
        let mem = memory();
        let file = image(4);
        let mut block = Block::new(file.path(), false).unwrap();
        mem.write_slice(&[0x5a; 512], GuestAddress(HEADER + 16))
            .unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 1);
        let (status, _) = run_chain(
            &mut block,
            &mem,
            &[desc(HEADER, 16 + 512, 0), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert!(
            std::fs::read(file.path()).unwrap()[512..1024]
                .iter()
                .all(|b| *b == 0x5a)
        );

        // Data and status in one writable descriptor.
        header(&mem, VIRTIO_BLK_T_IN, 1);
        mem.write_obj(0xffu8, GuestAddress(DATA + 512)).unwrap();
        let (_, used) = run_chain(
            &mut block,
            &mem,
            &[desc(HEADER, 16, 0), desc(DATA, 513, WRITE)],
        );
        assert_eq!(used, 513);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap(),
            VIRTIO_BLK_S_OK as u8
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x5a);
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let mem = memory();
        let file = image(4);
        let before = std::fs::read(file.path()).unwrap();
        let mut block = Block::new(file.path(), true).unwrap();
        assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let (status, _) = run_chain(
            &mut block,
            &mem,
            &[
                desc(HEADER, 16, 0),
                desc(DATA, 512, 0),
                desc(STATUS, 1, WRITE),
            ],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(std::fs::read(file.path()).unwrap(), before);
    }

    #[test]
    fn malformed_requests_get_errors_not_crashes() {
        let mem = memory();
        let file = image(4);
        let mut block = Block::new(file.path(), false).unwrap();
        // Out of bounds read, past the end and with a sector number that overflows.
        for sector in [4, 3, u64::MAX] {
            header(&mem, VIRTIO_BLK_T_IN, sector);
            let (status, _) = run_chain(
                &mut block,
                &mem,
                &[
                    desc(HEADER, 16, 0),
                    desc(DATA, 1024, WRITE),
                    desc(STATUS, 1, WRITE),
                ],
            );
            assert_eq!(status, VIRTIO_BLK_S_IOERR as u8, "sector {sector}");
        }
        // Partial sector write.
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let (status, _) = run_chain(
            &mut block,
            &mem,
            &[
                desc(HEADER, 16, 0),
                desc(DATA, 100, 0),
                desc(STATUS, 1, WRITE),
            ],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Unknown type.
        header(&mem, 0x1234, 0);
        let (status, _) = run_chain(
            &mut block,
            &mem,
            &[desc(HEADER, 16, 0), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP as u8);
        // Short header.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let (status, _) = run_chain(
            &mut block,
            &mem,
            &[desc(HEADER, 8, 0), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // No writable status byte: dropped with used length 0.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let (status, used) = run_chain(&mut block, &mem, &[desc(HEADER, 16, 0)]);
        assert_eq!((status, used), (0xff, 0));
        // Descriptors outside guest memory.
        let (_, used) = run_chain(
            &mut block,
            &mem,
            &[desc(0xffff_ff00, 16, 0), desc(u64::MAX - 4, 512, WRITE)],
        );
        assert_eq!(used, 0);
        // The file was not touched by any of this.
        let content = std::fs::read(file.path()).unwrap();
        assert!(
            content
                .chunks(512)
                .enumerate()
                .all(|(i, s)| s.iter().all(|b| *b == i as u8))
        );
    }

    /// A loop device over a temporary image, detached on drop.
    struct LoopDevice {
        path: String,
        _image: tempfile::NamedTempFile,
    }

    impl LoopDevice {
        fn new(bytes: usize) -> Self {
            let image = write_temp(&vec![0x5a; bytes]);
            let out = std::process::Command::new("losetup")
                .args(["--find", "--show"])
                .arg(image.path())
                .output()
                .expect("losetup runs");
            assert!(
                out.status.success(),
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Self {
                path,
                _image: image,
            }
        }
    }

    impl Drop for LoopDevice {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["--detach", &self.path])
                .status();
        }
    }

    #[test]
    fn block_devices_are_sized_by_their_end() {
        let device = LoopDevice::new(3 << 20);
        for read_only in [true, false] {
            let block = Block::new(Path::new(&device.path), read_only).unwrap();
            assert_eq!(block.sectors(), (3 << 20) / SECTOR_SIZE);
        }
    }

    #[test]
    fn partial_sectors_and_missing_images_are_refused() {
        let partial = write_temp(&[0u8; 100]);
        assert!(matches!(
            Block::new(partial.path(), false),
            Err(BlockError::PartialSector(_))
        ));
        // An empty image is a disk without media (a template's placeholder).
        let empty = write_temp(&[]);
        assert!(Block::new(empty.path(), true).is_ok());
        assert!(matches!(
            Block::new(Path::new("/nonexistent/disk.img"), true),
            Err(BlockError::Open { .. })
        ));
    }
}
