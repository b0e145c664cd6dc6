//! Files that leak kernel information or trigger actions on the host.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use crate::errno::io_error_name;
use crate::observations::{AccessMode, KallsymsView, MountEntry, OpenAttempt};

/// Open for reading, then read once.
pub const READ: AccessMode = AccessMode::Read;
/// Open for writing, then close without writing.
pub const WRITE: AccessMode = AccessMode::Write;

/// The host-trigger files outside cgroupfs.
const TRIGGER_FILES: [&str; 2] = ["/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger"];

/// Opens `path` and, for reads, reads once (at most 4 KiB, without blocking). Writes
/// nothing: a write-mode open is closed straight away.
pub fn try_open(path: &str, mode: AccessMode) -> OpenAttempt {
    let mut options = std::fs::OpenOptions::new();
    match mode {
        AccessMode::Read => options.read(true),
        AccessMode::Write => options.write(true),
    };
    options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC);
    let mut attempt = OpenAttempt {
        path: path.to_string(),
        mode,
        opened: false,
        bytes_read: None,
        errno: None,
    };
    match options.open(path) {
        Err(error) => attempt.errno = Some(io_error_name(&error)),
        Ok(mut file) => {
            attempt.opened = true;
            if mode == AccessMode::Read {
                let mut buffer = vec![0u8; 4096];
                match file.read(&mut buffer) {
                    Ok(n) => attempt.bytes_read = Some(n as u64),
                    // /dev/kmsg with no new record: readable, nothing to read yet.
                    Err(error) if error.raw_os_error() == Some(libc::EAGAIN) => {
                        attempt.bytes_read = Some(0);
                        attempt.errno = Some(io_error_name(&error));
                    }
                    Err(error) => attempt.errno = Some(io_error_name(&error)),
                }
            }
        }
    }
    attempt
}

/// Counts symbols and non-zero addresses in a `/proc/kallsyms` excerpt.
pub fn parse_kallsyms(text: &str) -> KallsymsView {
    let addresses: Vec<u64> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|address| u64::from_str_radix(address, 16).ok())
        .collect();
    KallsymsView {
        symbols_read: addresses.len() as u32,
        nonzero_addresses: addresses.iter().filter(|&&a| a != 0).count() as u32,
    }
}

/// Whether `/proc/kallsyms` shows real addresses (reads its first 16 KiB).
pub fn kallsyms() -> Result<KallsymsView, String> {
    let file = std::fs::File::open("/proc/kallsyms")
        .map_err(|e| format!("/proc/kallsyms: {}", io_error_name(&e)))?;
    let mut text = String::new();
    file.take(16 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("/proc/kallsyms: {}", io_error_name(&e)))?;
    // The last line may be cut in the middle.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    Ok(parse_kallsyms(complete))
}

/// The cgroup v1 `release_agent` files visible in `mounts` (at the root of each hierarchy).
pub fn release_agents(mounts: &[MountEntry]) -> Vec<String> {
    let mut paths: Vec<String> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .map(|m| format!("{}/release_agent", m.mount_point.trim_end_matches('/')))
        .filter(|path| std::path::Path::new(path).exists())
        .collect();
    paths.dedup();
    paths
}

/// Opens every host-trigger file for writing, writes nothing: core_pattern, sysrq-trigger,
/// and each visible cgroup v1 release_agent. A release_agent that is not visible is not
/// listed (the `mount` syscall check covers mounting cgroupfs to reach one).
pub fn host_triggers(mounts: &[MountEntry]) -> Vec<OpenAttempt> {
    TRIGGER_FILES
        .iter()
        .map(|path| path.to_string())
        .chain(release_agents(mounts))
        .map(|path| try_open(&path, WRITE))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_real_and_zeroed_kallsyms_addresses() {
        let zeroed = "0000000000000000 A fixed_percpu_data\n0000000000000000 T _stext\n";
        assert_eq!(
            parse_kallsyms(zeroed),
            KallsymsView {
                symbols_read: 2,
                nonzero_addresses: 0
            }
        );
        let real = "0000000000000000 A fixed_percpu_data\nffffffff81000000 T _stext\n";
        assert_eq!(parse_kallsyms(real).nonzero_addresses, 1);
    }

    #[test]
    fn open_attempts_record_errno_and_bytes() {
        let absent = try_open("/proc/self/twinbox-probe-absent", READ);
        assert!(!absent.opened);
        assert_eq!(absent.errno.as_deref(), Some("ENOENT"));
        let null = try_open("/dev/null", READ);
        assert!(null.opened);
        assert_eq!(null.bytes_read, Some(0));
        let status = try_open("/proc/self/status", READ);
        assert!(status.bytes_read.unwrap() > 0);
        let writable = try_open("/dev/null", WRITE);
        assert!(writable.opened && writable.bytes_read.is_none());
    }
}
