//! VM snapshots on disk: a directory with guest RAM as a sparse file, one JSON state file
//! (format version, the VM's device layout, VM, vCPU and device state) and a `complete`
//! marker written last.
//!
//! A snapshot is taken when the guest asks for it (see
//! [`crate::devices::legacy::SNAPSHOT_MAGIC`]) and restored by [`crate::Vmm::build`] with
//! [`crate::VmConfig::restore_from`]. It is only meant for the host that made it (CPUID is
//! derived again, not saved), for a VM of the same layout; disks may be other files.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};

use crate::builder::VmmError;
use crate::config::VmConfig;
use crate::devices::legacy::SerialSnapshot;
use crate::devices::virtio::mmio::TransportSnapshot;
use crate::vstate::memory::{GuestMemory, map_guest_memory_file};
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// Version of the state file's format; snapshots of another version are refused.
pub const FORMAT_VERSION: u32 = 1;
/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// Guest RAM in a snapshot directory: the RAM regions one after the other, all-zero
/// 4 KiB pages left as holes.
pub const MEMORY_FILE: &str = "memory";
/// Created once everything else is written and synced: a directory without it is a
/// half-written snapshot and is never restored.
pub const COMPLETE_MARKER: &str = "complete";

const PAGE_SIZE: usize = 4096;
/// Guest RAM is saved through a buffer of this size.
const COPY_CHUNK: usize = 2 << 20;

/// What must match between a snapshot and the VM that restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The disks in order, by their read-only flags (the files and sizes may differ).
    pub read_only_disks: Vec<bool>,
    /// The vsock device's guest CID, if there is one.
    pub vsock_cid: Option<u32>,
}

impl Layout {
    /// The layout `config` asks for.
    pub fn of(config: &VmConfig) -> Self {
        Self {
            mem_size: config.mem_size,
            vcpus: config.vcpus,
            read_only_disks: config.disks.iter().map(|disk| disk.read_only).collect(),
            vsock_cid: config.vsock.as_ref().map(|vsock| vsock.guest_cid),
        }
    }

    /// What differs between this (saved) layout and `wanted`, one phrase each.
    pub fn differences(&self, wanted: &Layout) -> Vec<String> {
        let mut differences = Vec::new();
        if self.mem_size != wanted.mem_size {
            differences.push(format!(
                "guest RAM is {} MiB in the snapshot, {} MiB in this VM",
                self.mem_size >> 20,
                wanted.mem_size >> 20
            ));
        }
        if self.vcpus != wanted.vcpus {
            differences.push(format!(
                "{} vCPUs in the snapshot, {} in this VM",
                self.vcpus, wanted.vcpus
            ));
        }
        if self.read_only_disks.len() != wanted.read_only_disks.len() {
            differences.push(format!(
                "{} disks in the snapshot, {} in this VM",
                self.read_only_disks.len(),
                wanted.read_only_disks.len()
            ));
        }
        let disks = self.read_only_disks.iter().zip(&wanted.read_only_disks);
        for (index, (&saved, &now)) in disks.enumerate() {
            if saved != now {
                let mode = |read_only| if read_only { "read-only" } else { "writable" };
                differences.push(format!(
                    "disk {index} is {} in the snapshot, {} in this VM",
                    mode(saved),
                    mode(now)
                ));
            }
        }
        if self.vsock_cid != wanted.vsock_cid {
            let describe = |cid: Option<u32>| match cid {
                Some(cid) => format!("vsock with guest CID {cid}"),
                None => "no vsock".to_string(),
            };
            differences.push(format!(
                "{} in the snapshot, {} in this VM",
                describe(self.vsock_cid),
                describe(wanted.vsock_cid)
            ));
        }
        differences
    }
}

/// Everything a snapshot holds besides guest RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// [`FORMAT_VERSION`] of the program that wrote it.
    pub version: u32,
    /// The VM's layout.
    pub layout: Layout,
    /// Each disk's size in 512-byte sectors: a restored disk of another size gets a
    /// config-change interrupt.
    pub disk_sectors: Vec<u64>,
    /// The guest resets by triple fault (`reboot=t` on its command line).
    pub resets_by_triple_fault: bool,
    /// Interrupt controllers, PIT and clock.
    pub vm: VmState,
    /// Each vCPU's state, in order.
    pub vcpus: Vec<VcpuState>,
    /// Each virtio-mmio transport's state, in device order (disks, then vsock).
    pub transports: Vec<TransportSnapshot>,
    /// The serial port, if the VM had one.
    pub serial: Option<SerialSnapshot>,
}

/// The version field alone, read before the rest so that an old format gets a clear error.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

fn error(path: &Path, message: impl std::fmt::Display) -> VmmError {
    VmmError::Snapshot {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// What to do about an unusable snapshot, for error messages.
pub(crate) const REBUILD: &str = "remove the snapshot directory to rebuild it";

/// Writes a snapshot into `dir` (created if missing; an earlier snapshot there is
/// replaced): guest RAM, then the state, then the [`COMPLETE_MARKER`]. On failure the files
/// written so far are removed again.
pub fn write(dir: &Path, state: &SnapshotState, mem: &GuestMemory) -> Result<(), VmmError> {
    std::fs::create_dir_all(dir).map_err(|e| error(dir, format!("cannot create it: {e}")))?;
    let marker = dir.join(COMPLETE_MARKER);
    match std::fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(&marker, format!("cannot remove it: {e}"))),
    }
    let result = write_files(dir, state, mem);
    if result.is_err() {
        for file in [MEMORY_FILE, STATE_FILE] {
            let _ = std::fs::remove_file(dir.join(file));
        }
    }
    result
}

fn write_files(dir: &Path, state: &SnapshotState, mem: &GuestMemory) -> Result<(), VmmError> {
    let marker = dir.join(COMPLETE_MARKER);
    let memory = dir.join(MEMORY_FILE);
    save_memory(&memory, mem).map_err(|e| error(&memory, format!("cannot write it: {e}")))?;
    let state_path = dir.join(STATE_FILE);
    let json = serde_json::to_vec(state).map_err(|e| error(&state_path, e))?;
    write_synced(&state_path, &json)
        .map_err(|e| error(&state_path, format!("cannot write it: {e}")))?;
    write_synced(&marker, b"").map_err(|e| error(&marker, format!("cannot write it: {e}")))?;
    Ok(())
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let file = File::create(path)?;
    file.write_all_at(data, 0)?;
    file.sync_all()
}

/// Reads the state of the complete snapshot in `dir` and checks that it fits a VM of
/// `wanted` layout.
pub fn read(dir: &Path, wanted: &Layout) -> Result<SnapshotState, VmmError> {
    if !dir.join(COMPLETE_MARKER).exists() {
        return Err(error(
            dir,
            format!(
                "it is not a complete snapshot (no `{COMPLETE_MARKER}` marker: missing, or its \
                 writing failed); {REBUILD}"
            ),
        ));
    }
    let state_path = dir.join(STATE_FILE);
    let json = std::fs::read(&state_path)
        .map_err(|e| error(&state_path, format!("cannot read it: {e}; {REBUILD}")))?;
    let state = parse_state(&json).map_err(|message| error(&state_path, message))?;
    let differences = state.layout.differences(wanted);
    if !differences.is_empty() {
        return Err(error(
            dir,
            format!(
                "it was taken of another VM layout: {}; {REBUILD}",
                differences.join(", ")
            ),
        ));
    }
    if state.vcpus.len() != usize::from(state.layout.vcpus) {
        return Err(error(
            &state_path,
            format!(
                "it holds {} vCPU states for {} vCPUs; {REBUILD}",
                state.vcpus.len(),
                state.layout.vcpus
            ),
        ));
    }
    Ok(state)
}

/// Parses a state file, checking its format version first.
fn parse_state(json: &[u8]) -> Result<SnapshotState, String> {
    let VersionOnly { version } = serde_json::from_slice(json)
        .map_err(|e| format!("it is no snapshot state file ({e}); {REBUILD}"))?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "snapshot format version {version}, this twinbox reads version {FORMAT_VERSION}; \
             {REBUILD}"
        ));
    }
    serde_json::from_slice(json).map_err(|e| format!("it is malformed ({e}); {REBUILD}"))
}

/// Writes guest RAM to `path`, leaving all-zero pages as holes.
fn save_memory(path: &Path, mem: &GuestMemory) -> std::io::Result<()> {
    let file = File::create(path)?;
    file.set_len(total_size(mem))?;
    let mut buffer = vec![0u8; COPY_CHUNK];
    let mut file_start = 0u64;
    for region in mem.iter() {
        let mut done = 0u64;
        while done < region.len() {
            let len = COPY_CHUNK.min((region.len() - done) as usize);
            let address = region.start_addr().unchecked_add(done);
            let host = mem
                .get_host_address(address)
                .map_err(std::io::Error::other)?;
            if !any_page_resident(host, len) {
                done += len as u64;
                continue;
            }
            let chunk = &mut buffer[..len];
            mem.read_slice(chunk, address)
                .map_err(std::io::Error::other)?;
            for (offset, run) in nonzero_runs(chunk) {
                file.write_all_at(run, file_start + done + offset as u64)?;
            }
            done += len as u64;
        }
        file_start += region.len();
    }
    file.sync_all()
}

/// Whether any page of the host mapping `[host, host + len)` is in memory. Guest RAM that
/// the guest never touched is not, and holds only zeros: the save skips it without reading
/// it, which matters for large guests that touched little (and under emulation). When the
/// kernel cannot tell, the range counts as resident.
fn any_page_resident(host: *mut u8, len: usize) -> bool {
    let mut resident = vec![0u8; len.div_ceil(PAGE_SIZE)];
    // SAFETY: `host` is the page-aligned start of `len` bytes of a live guest RAM mapping,
    // and `resident` has one byte per page of it for mincore to fill.
    let result = unsafe { libc::mincore(host.cast(), len, resident.as_mut_ptr()) };
    result != 0 || resident.iter().any(|page| page & 1 != 0)
}

/// The runs of consecutive 4 KiB pages of `data` that are not all zero, with their offsets.
fn nonzero_runs(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let is_data = |page: &[u8]| page.iter().any(|byte| *byte != 0);
    let pages: Vec<bool> = data.chunks(PAGE_SIZE).map(is_data).collect();
    let mut runs = Vec::new();
    let mut index = 0;
    while index < pages.len() {
        if !pages[index] {
            index += 1;
            continue;
        }
        let start = index;
        while index < pages.len() && pages[index] {
            index += 1;
        }
        let from = start * PAGE_SIZE;
        let to = (index * PAGE_SIZE).min(data.len());
        runs.push((from, &data[from..to]));
    }
    runs.into_iter()
}

fn total_size(mem: &GuestMemory) -> u64 {
    mem.iter().map(|region| region.len()).sum()
}

/// Maps the memory file of the snapshot in `dir` as the guest RAM (`size` bytes) of the VM
/// that restores it, privately where it holds data: see [`map_guest_memory_file`].
pub fn map_memory(dir: &Path, size: u64) -> Result<GuestMemory, VmmError> {
    let path = dir.join(MEMORY_FILE);
    let fail = |message: String| error(&path, format!("{message}; {REBUILD}"));
    let file = File::open(&path).map_err(|e| fail(format!("cannot open it: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| fail(format!("cannot read it: {e}")))?
        .len();
    if len != size {
        return Err(fail(format!(
            "it holds {len} bytes of RAM, the VM has {size}"
        )));
    }
    let data = data_ranges(&file).map_err(|e| fail(format!("cannot read it: {e}")))?;
    map_guest_memory_file(&file, size, &data).map_err(|e| fail(e.to_string()))
}

/// The ranges `[start, end)` of `file` that hold data (not holes), in order.
fn data_ranges(file: &File) -> std::io::Result<Vec<(u64, u64)>> {
    let seek = |offset: u64, whence| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on an open fd changes only the file position; no memory is touched.
        let position = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        if position >= 0 {
            return Ok(Some(position as u64));
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            // No data at or after `offset`.
            Some(libc::ENXIO) => Ok(None),
            _ => Err(error),
        }
    };
    let mut ranges = Vec::new();
    let mut offset = 0;
    while let Some(start) = seek(offset, libc::SEEK_DATA)? {
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(start);
        if end <= start {
            break;
        }
        ranges.push((start, end));
        offset = end;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::config::{DiskConfig, VsockConfig};
    use crate::vstate::memory::{MemoryBacking, create_guest_memory};

    #[test]
    fn memory_is_saved_sparse_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let mem = create_guest_memory(16 << 20, MemoryBacking::Private).unwrap();
        let pattern: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 251) as u8 + 1).collect();
        mem.write_slice(&pattern, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0xff_f000 + 8))
            .unwrap();
        mem.write_obj(0x42u8, GuestAddress(0x3_2000)).unwrap();
        save_memory(&dir.path().join(MEMORY_FILE), &mem).unwrap();

        let file = File::open(dir.path().join(MEMORY_FILE)).unwrap();
        let metadata = file.metadata().unwrap();
        assert_eq!(metadata.len(), 16 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            metadata.blocks() * 512 <= 64 * PAGE_SIZE as u64,
            "{} bytes allocated for 5 pages of data",
            metadata.blocks() * 512
        );
        let restored = map_memory(dir.path(), 16 << 20).unwrap();
        let mut all_saved = vec![0u8; 16 << 20];
        let mut all_restored = vec![0u8; 16 << 20];
        mem.read_slice(&mut all_saved, GuestAddress(0)).unwrap();
        restored
            .read_slice(&mut all_restored, GuestAddress(0))
            .unwrap();
        assert!(all_saved == all_restored, "restored RAM differs");

        let error = map_memory(dir.path(), 8 << 20).unwrap_err().to_string();
        assert!(error.contains("the VM has 8388608"), "{error}");
        // The restored VM's writes are its own: the file keeps the snapshot.
        restored.write_obj(0u8, GuestAddress(0x3_2000)).unwrap();
        let again = map_memory(dir.path(), 16 << 20).unwrap();
        assert_eq!(again.read_obj::<u8>(GuestAddress(0x3_2000)).unwrap(), 0x42);
    }

    #[test]
    fn untouched_guest_ram_is_not_resident() {
        let mem = create_guest_memory(8 << 20, MemoryBacking::Private).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        assert!(!any_page_resident(host, 8 << 20), "fresh RAM is resident");
        mem.write_obj(1u8, GuestAddress(0x40_1000)).unwrap();
        assert!(any_page_resident(host, 8 << 20));
    }

    #[test]
    fn nonzero_runs_skip_zero_pages() {
        let mut data = vec![0u8; 6 * PAGE_SIZE];
        data[PAGE_SIZE] = 1;
        data[2 * PAGE_SIZE + 5] = 2;
        data[5 * PAGE_SIZE + PAGE_SIZE - 1] = 3;
        let runs: Vec<(usize, usize)> = nonzero_runs(&data)
            .map(|(offset, run)| (offset, run.len()))
            .collect();
        assert_eq!(
            runs,
            [(PAGE_SIZE, 2 * PAGE_SIZE), (5 * PAGE_SIZE, PAGE_SIZE)]
        );
    }

    fn layout() -> Layout {
        let mut config = VmConfig::new("/unused");
        config.mem_size = 256 << 20;
        config.vcpus = 2;
        config.disks = vec![
            DiskConfig {
                path: "/a".into(),
                read_only: true,
            },
            DiskConfig {
                path: "/b".into(),
                read_only: false,
            },
        ];
        config.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/v".into(),
        });
        Layout::of(&config)
    }

    #[test]
    fn layout_differences_name_what_differs() {
        let saved = layout();
        assert!(saved.differences(&layout()).is_empty());
        let mut other = layout();
        other.mem_size = 512 << 20;
        other.vcpus = 1;
        other.read_only_disks[0] = false;
        other.vsock_cid = None;
        assert_eq!(
            saved.differences(&other),
            [
                "guest RAM is 256 MiB in the snapshot, 512 MiB in this VM",
                "2 vCPUs in the snapshot, 1 in this VM",
                "disk 0 is read-only in the snapshot, writable in this VM",
                "vsock with guest CID 3 in the snapshot, no vsock in this VM",
            ]
        );
        other = layout();
        other.read_only_disks.pop();
        other.vsock_cid = Some(4);
        assert_eq!(
            saved.differences(&other),
            [
                "2 disks in the snapshot, 1 in this VM",
                "vsock with guest CID 3 in the snapshot, vsock with guest CID 4 in this VM",
            ]
        );
    }

    fn state() -> SnapshotState {
        SnapshotState {
            version: FORMAT_VERSION,
            layout: layout(),
            disk_sectors: vec![8, 16],
            resets_by_triple_fault: true,
            vm: VmState::default(),
            vcpus: vec![VcpuState::default(), VcpuState::default()],
            transports: Vec::new(),
            serial: None,
        }
    }

    #[test]
    fn a_written_snapshot_reads_back_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("snap");
        let mem = create_guest_memory(4 << 20, MemoryBacking::Private).unwrap();
        write(&snapshot, &state(), &mem).unwrap();
        let read_back = read(&snapshot, &layout()).unwrap();
        assert_eq!(read_back.layout, layout());
        assert_eq!(read_back.disk_sectors, [8, 16]);
        assert!(read_back.resets_by_triple_fault);
        assert_eq!(read_back.vcpus.len(), 2);

        let mut wrong = layout();
        wrong.vcpus = 1;
        let error = read(&snapshot, &wrong).unwrap_err().to_string();
        assert!(
            error.contains("another VM layout: 2 vCPUs in the snapshot, 1 in this VM"),
            "{error}"
        );

        // The state file cannot be created: the memory file goes again, and no marker.
        let broken = dir.path().join("broken");
        std::fs::create_dir_all(broken.join(STATE_FILE)).unwrap();
        let error = write(&broken, &state(), &mem).unwrap_err().to_string();
        assert!(error.contains(STATE_FILE), "{error}");
        assert!(!broken.join(MEMORY_FILE).exists());
        assert!(!broken.join(COMPLETE_MARKER).exists());
    }

    #[test]
    fn incomplete_and_foreign_snapshots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{}").unwrap();
        let error = read(dir.path(), &layout()).unwrap_err().to_string();
        assert!(
            error.contains("not a complete snapshot") && error.contains(REBUILD),
            "{error}"
        );
        std::fs::write(dir.path().join(COMPLETE_MARKER), b"").unwrap();
        let error = read(dir.path(), &layout()).unwrap_err().to_string();
        assert!(error.contains("no snapshot state file"), "{error}");
        std::fs::write(dir.path().join(STATE_FILE), br#"{"version": 999}"#).unwrap();
        let error = read(dir.path(), &layout()).unwrap_err().to_string();
        assert!(
            error.contains("format version 999") && error.contains(REBUILD),
            "{error}"
        );
        std::fs::write(
            dir.path().join(STATE_FILE),
            br#"{"version": 1, "layout": 3}"#,
        )
        .unwrap();
        let error = read(dir.path(), &layout()).unwrap_err().to_string();
        assert!(error.contains("malformed"), "{error}");
    }
}
