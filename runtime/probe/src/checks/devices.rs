//! Device nodes: block devices and `/dev/kvm`.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::files::{READ, WRITE, try_open};
use crate::observations::Devices;

/// At most this many block devices are listed (hosts may have hundreds of loop devices).
const MAX_BLOCK_DEVICES: usize = 64;

/// How deep below `/dev` to look (`/dev/mapper/x`, `/dev/disk/by-id/x` are symlinks anyway).
const MAX_DEPTH: usize = 2;

fn find_block_devices(dir: &Path, depth: usize, found: &mut Vec<String>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        if found.len() >= MAX_BLOCK_DEVICES {
            break;
        }
        // file_type does not follow symlinks, so /dev/disk/by-* aliases are not counted.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_block_device() {
            found.push(entry.path().to_string_lossy().into_owned());
        } else if kind.is_dir() && depth < MAX_DEPTH {
            // Unreadable subdirectories are skipped; the devices above them still count.
            let _ = find_block_devices(&entry.path(), depth + 1, found);
        }
    }
    Ok(())
}

/// Block device nodes (opened and read once) and `/dev/kvm` (opened for writing).
pub fn devices() -> Result<Devices, String> {
    let mut block = Vec::new();
    find_block_devices(Path::new("/dev"), 1, &mut block)
        .map_err(|e| format!("/dev: {}", crate::errno::io_error_name(&e)))?;
    Ok(Devices {
        block: block.iter().map(|path| try_open(path, READ)).collect(),
        kvm: try_open("/dev/kvm", WRITE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dev_lists_only_block_devices() {
        let devices = devices().unwrap();
        for attempt in &devices.block {
            let kind = std::fs::symlink_metadata(&attempt.path)
                .unwrap()
                .file_type();
            assert!(kind.is_block_device(), "{}", attempt.path);
        }
        // This machine kind has /dev/kvm (PVM) and the tests run as root.
        assert!(devices.kvm.opened, "{:?}", devices.kvm);
    }
}
