//! The syscall seam: every privileged operation of container setup goes through [`Syscall`],
//! so the mount and namespace plan can be checked without root by a recording fake
//! (`RecordingSyscall` in the unit tests), and run for real by [`LinuxSyscall`].

use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};

/// The effective, permitted and inheritable capability sets of a thread, as bit masks of
/// capability numbers (set together by one capset(2), as the kernel's subset rules require).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    /// What the kernel checks.
    pub effective: u64,
    /// What the thread may make effective.
    pub permitted: u64,
    /// What is kept across execve.
    pub inheritable: u64,
}

/// The privileged operations of container setup.
pub trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// mknod(2) of a device node.
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()>;
    /// chown(2).
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// symlink(2): `link` points at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Creates a directory and its parents (mount points).
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates an empty file if missing (mount point of a file bind mount).
    fn create_file(&self, path: &Path) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// setdomainname(2).
    fn setdomainname(&self, name: &str) -> io::Result<()>;
    /// Writes a whole file (sysctls under /proc/sys).
    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()>;
    /// unshare(2).
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// setns(2).
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> io::Result<()>;
    /// setgroups(2).
    fn setgroups(&self, gids: &[u32]) -> io::Result<()>;
    /// setresgid(2) with all three ids equal.
    fn setgid(&self, gid: u32) -> io::Result<()>;
    /// setresuid(2) with all three ids equal.
    fn setuid(&self, uid: u32) -> io::Result<()>;
    /// prctl(PR_SET_KEEPCAPS).
    fn set_keep_caps(&self, keep: bool) -> io::Result<()>;
    /// Drops every capability not in `keep` from the bounding set (PR_CAPBSET_DROP).
    fn drop_bounding(&self, keep: u64) -> io::Result<()>;
    /// capset(2) of the effective, permitted and inheritable sets.
    fn capset(&self, sets: CapSets) -> io::Result<()>;
    /// Makes the ambient set exactly `caps` (PR_CAP_AMBIENT).
    fn set_ambient(&self, caps: u64) -> io::Result<()>;
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn set_no_new_privs(&self) -> io::Result<()>;
    /// Sets the loopback interface of the current network namespace up (SIOCSIFFLAGS).
    fn loopback_up(&self) -> io::Result<()>;
}

/// The real syscalls.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn errno_result(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Highest capability number this kernel knows (from /proc/sys/kernel/cap_last_cap).
pub fn last_cap() -> u8 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io::Error::from)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io::Error::from)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(io::Error::from)
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chroot(path).map_err(io::Error::from)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(io::Error::from)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev).map_err(io::Error::from)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
        let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        errno_result(ret.into())
    }

    fn write_file(&self, path: &Path, contents: &str) -> io::Result<()> {
        fs::write(path, contents)
    }

    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        nix::sched::unshare(flags).map_err(io::Error::from)
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> io::Result<()> {
        nix::sched::setns(fd, nstype).map_err(io::Error::from)
    }

    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `gids`, which outlives the call.
        let ret = unsafe { libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) };
        errno_result(ret)
    }

    fn setgid(&self, gid: u32) -> io::Result<()> {
        // The raw syscall changes only this thread, which is the whole process here (container
        // setup is single-threaded), and avoids glibc's all-threads signal broadcast.
        // SAFETY: plain integer arguments.
        let ret = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
        errno_result(ret)
    }

    fn setuid(&self, uid: u32) -> io::Result<()> {
        // SAFETY: plain integer arguments (see setgid).
        let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        errno_result(ret)
    }

    fn set_keep_caps(&self, keep: bool) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        let ret = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep), 0, 0, 0) };
        errno_result(ret.into())
    }

    fn drop_bounding(&self, keep: u64) -> io::Result<()> {
        for cap in 0..=last_cap() {
            if keep & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments.
                let ret = unsafe {
                    libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
                };
                errno_result(ret.into())?;
            }
        }
        Ok(())
    }

    fn capset(&self, sets: CapSets) -> io::Result<()> {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // Two 32-bit words per set: low words first, then high words (kernel v3 layout).
        let data: [libc::c_uint; 6] = [
            sets.effective as u32,
            sets.permitted as u32,
            sets.inheritable as u32,
            (sets.effective >> 32) as u32,
            (sets.permitted >> 32) as u32,
            (sets.inheritable >> 32) as u32,
        ];
        // SAFETY: header and data follow the kernel's v3 layout and outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            )
        };
        errno_result(ret)
    }

    fn set_ambient(&self, caps: u64) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        let ret = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        errno_result(ret.into())?;
        for cap in 0..=last_cap() {
            if caps & (1 << cap) != 0 {
                // SAFETY: prctl with integer arguments.
                let ret = unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE,
                        libc::c_ulong::from(cap),
                        0,
                        0,
                    )
                };
                errno_result(ret.into())?;
            }
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        errno_result(ret.into())
    }

    fn loopback_up(&self) -> io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero ifreq is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS with a valid ifreq naming "lo"; the flags member
        // of the union is the one these requests read and write.
        unsafe {
            errno_result(libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request).into())?;
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            errno_result(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request).into())
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording fake of the syscall seam for unit tests without root.

    use super::*;
    use std::cell::RefCell;
    use std::path::PathBuf;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mount {
            source: Option<PathBuf>,
            target: PathBuf,
            fstype: Option<String>,
            flags: MsFlags,
            data: Option<String>,
        },
        Umount(PathBuf),
        PivotRoot(PathBuf),
        Chroot(PathBuf),
        Chdir(PathBuf),
        Mknod(PathBuf, u64),
        Chown(PathBuf, u32, u32),
        Symlink(PathBuf, PathBuf),
        MkdirAll(PathBuf),
        CreateFile(PathBuf),
        Hostname(String),
        Domainname(String),
        WriteFile(PathBuf, String),
        Unshare(CloneFlags),
        Setns(CloneFlags),
        Setgroups(Vec<u32>),
        Setgid(u32),
        Setuid(u32),
        KeepCaps(bool),
        Bounding(u64),
        Capset(CapSets),
        Ambient(u64),
        NoNewPrivs,
        LoopbackUp,
    }

    /// Records every call and succeeds, except for mounts of the listed fstypes.
    #[derive(Default)]
    pub struct RecordingSyscall {
        pub calls: RefCell<Vec<Call>>,
        pub failing_fstypes: Vec<&'static str>,
    }

    impl RecordingSyscall {
        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }
        pub fn mounts(&self) -> Vec<Call> {
            self.calls()
                .into_iter()
                .filter(|c| matches!(c, Call::Mount { .. }))
                .collect()
        }
        fn record(&self, call: Call) -> io::Result<()> {
            self.calls.borrow_mut().push(call);
            Ok(())
        }
    }

    impl Syscall for RecordingSyscall {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> io::Result<()> {
            if fstype.is_some_and(|f| self.failing_fstypes.contains(&f)) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            self.record(Call::Mount {
                source: source.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            })
        }
        fn umount2(&self, target: &Path, _flags: MntFlags) -> io::Result<()> {
            self.record(Call::Umount(target.to_path_buf()))
        }
        fn pivot_root(&self, new_root: &Path, _put_old: &Path) -> io::Result<()> {
            self.record(Call::PivotRoot(new_root.to_path_buf()))
        }
        fn chroot(&self, path: &Path) -> io::Result<()> {
            self.record(Call::Chroot(path.to_path_buf()))
        }
        fn chdir(&self, path: &Path) -> io::Result<()> {
            self.record(Call::Chdir(path.to_path_buf()))
        }
        fn mknod(&self, path: &Path, _kind: SFlag, _perm: Mode, dev: u64) -> io::Result<()> {
            self.record(Call::Mknod(path.to_path_buf(), dev))
        }
        fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
            self.record(Call::Chown(path.to_path_buf(), uid, gid))
        }
        fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
            self.record(Call::Symlink(target.to_path_buf(), link.to_path_buf()))
        }
        fn mkdir_all(&self, path: &Path) -> io::Result<()> {
            self.record(Call::MkdirAll(path.to_path_buf()))
        }
        fn create_file(&self, path: &Path) -> io::Result<()> {
            self.record(Call::CreateFile(path.to_path_buf()))
        }
        fn sethostname(&self, name: &str) -> io::Result<()> {
            self.record(Call::Hostname(name.to_string()))
        }
        fn setdomainname(&self, name: &str) -> io::Result<()> {
            self.record(Call::Domainname(name.to_string()))
        }
        fn write_file(&self, path: &Path, contents: &str) -> io::Result<()> {
            self.record(Call::WriteFile(path.to_path_buf(), contents.to_string()))
        }
        fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
            self.record(Call::Unshare(flags))
        }
        fn setns(&self, _fd: BorrowedFd<'_>, nstype: CloneFlags) -> io::Result<()> {
            self.record(Call::Setns(nstype))
        }
        fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
            self.record(Call::Setgroups(gids.to_vec()))
        }
        fn setgid(&self, gid: u32) -> io::Result<()> {
            self.record(Call::Setgid(gid))
        }
        fn setuid(&self, uid: u32) -> io::Result<()> {
            self.record(Call::Setuid(uid))
        }
        fn set_keep_caps(&self, keep: bool) -> io::Result<()> {
            self.record(Call::KeepCaps(keep))
        }
        fn drop_bounding(&self, keep: u64) -> io::Result<()> {
            self.record(Call::Bounding(keep))
        }
        fn capset(&self, sets: CapSets) -> io::Result<()> {
            self.record(Call::Capset(sets))
        }
        fn set_ambient(&self, caps: u64) -> io::Result<()> {
            self.record(Call::Ambient(caps))
        }
        fn set_no_new_privs(&self) -> io::Result<()> {
            self.record(Call::NoNewPrivs)
        }
        fn loopback_up(&self) -> io::Result<()> {
            self.record(Call::LoopbackUp)
        }
    }
}
