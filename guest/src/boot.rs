//! Early boot of the guest: the boot-timer signal, the API filesystems, and powering off.
//! The guest's root is the agent disk, read-only (its mount points are on it). /dev/console
//! and /dev/mem are there before the first mount: in the devtmpfs the kernel mounts on /dev,
//! or, with a kernel that does not, as nodes on the disk itself.

use std::os::fd::AsRawFd;

use nix::mount::{MsFlags, mount};

/// The boot timer's MMIO address in twinbox's VMM (Firecracker's protocol).
const BOOT_TIMER_ADDRESS: libc::off_t = 0xd000_0000;
/// What the boot timer expects.
const BOOT_TIMER_MAGIC: u8 = 123;
/// What asks twinbox's VMM for a snapshot (`vmm::devices::legacy::SNAPSHOT_MAGIC`).
const SNAPSHOT_MAGIC: u8 = 0x73;

/// Errors of early boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A mount or root switch failed.
    #[error("{step}: {source}")]
    Step {
        /// What was being done.
        step: String,
        /// The OS error.
        source: nix::Error,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(nix::Error) -> BootError {
    let step = what.into();
    move |source| BootError::Step { step, source }
}

/// Tells the VMM's boot timer that the guest reached its init. Best effort: a kernel without
/// /dev/mem or another VMM simply records nothing.
pub fn signal_boot_timer() {
    write_boot_timer(BOOT_TIMER_MAGIC);
}

/// Asks twinbox's VMM to snapshot the VM here, as a template that later VMs are restored
/// from. The VMM of a template boot writes the snapshot and stops, so this returns only in
/// the VMs restored from it, and in a VM whose VMM takes no snapshot (which just goes on).
pub fn request_snapshot() {
    write_boot_timer(SNAPSHOT_MAGIC);
}

/// Writes `value` to the boot timer's first byte.
fn write_boot_timer(value: u8) {
    // SAFETY: open, mmap, a volatile one-byte store into the mapping and munmap; every
    // result is checked before use and the mapping is private to this function.
    unsafe {
        let fd = libc::open(
            c"/dev/mem".as_ptr(),
            libc::O_RDWR | libc::O_SYNC | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            BOOT_TIMER_ADDRESS,
        );
        libc::close(fd);
        if page == libc::MAP_FAILED {
            return;
        }
        std::ptr::write_volatile(page.cast::<u8>(), value);
        libc::munmap(page, 4096);
    }
}

/// Mixes `bytes` from the host into the guest's entropy pool, crediting them, and reseeds the
/// kernel's random generator at once, so that VMs restored from one template snapshot each
/// draw their own random numbers from here on. Needs CAP_SYS_ADMIN.
pub fn reseed_random(bytes: &[u8]) -> std::io::Result<()> {
    /// `_IOW('R', 0x03, int[2])`: add entropy (struct rand_pool_info).
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    /// `_IO('R', 0x07)`: reseed the generator now.
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let random = std::fs::File::open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: RNDADDENTROPY on an open /dev/urandom reads the rand_pool_info laid out in
    // `info` (header, then `buf_size` bytes), which outlives the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts what the agent and the workload setup need: /proc, /sys, /dev (+pts, shm), /run,
/// /tmp and the cgroup2 hierarchy.
pub fn mount_api_filesystems() -> Result<(), BootError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, &str); 8] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, ""),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            "mode=0755",
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=1777",
        ),
        (
            "run",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=0755",
        ),
        (
            "tmp",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=1777",
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            "",
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        std::fs::create_dir_all(target).map_err(|e| {
            step(format!("creating {target}"))(nix::Error::from_raw(
                e.raw_os_error().unwrap_or(libc::EIO),
            ))
        })?;
        match mount(Some(source), target, Some(fstype), flags, Some(data)) {
            // The kernel mounted devtmpfs on /dev already (CONFIG_DEVTMPFS_MOUNT): only
            // its flags change.
            Err(nix::Error::EBUSY) if fstype == "devtmpfs" => mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
                None::<&str>,
            ),
            other => other,
        }
        .map_err(step(format!("mounting {fstype} on {target}")))?;
    }
    Ok(())
}

/// Flushes the filesystems and resets the machine (the VMM then exits).
pub fn power_off() -> ! {
    nix::unistd::sync();
    // SAFETY: reboot(2) with the restart command; as PID 1 with CAP_SYS_BOOT it does not return
    // on success.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // Without the capability there is nothing left to do but stop: the kernel panics when
    // PID 1 exits, which also ends the VM.
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_takes_host_entropy_and_reseeds() {
        // The tests run as root, as the agent does (PID 1 of the guest).
        reseed_random(&[0x5a; 32]).expect("RNDADDENTROPY and RNDRESEEDCRNG as root");
    }
}
