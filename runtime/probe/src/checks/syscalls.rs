//! The dangerous syscalls, each tried with arguments that cannot change the system.
//!
//! A call counts as permitted when it succeeds or fails only on its (deliberately useless)
//! arguments, i.e. after the kernel's permission checks passed; it counts as denied when it
//! returns `EPERM`/`EACCES` (capabilities, sysctls, seccomp, LSMs) or `ENOSYS` (filtered or
//! not built in). File descriptors a successful call returns are closed at once, and calls
//! that would change the probe's own state run in a child process that exits right after.

use crate::errno::errno_name;
use crate::observations::{SyscallAttempt, SyscallOutcome};

/// errnos that mean the kernel refused the call as such.
const DENIAL_ERRNOS: [i32; 3] = [libc::EPERM, libc::EACCES, libc::ENOSYS];

/// A source path that cannot exist: procfs does not let anyone create entries.
const ABSENT_PATH: &std::ffi::CStr = c"/proc/self/twinbox-probe-absent";

/// One past `KEXEC_SEGMENT_MAX`: a `kexec_load` that passes the permission checks then fails
/// with `EINVAL` before looking at anything else.
const KEXEC_TOO_MANY_SEGMENTS: libc::c_ulong = 17;

/// Tries every dangerous syscall, in a fixed order.
pub fn try_all() -> Vec<SyscallAttempt> {
    vec![
        keyctl(),
        bpf(),
        userfaultfd(),
        perf_event_open(),
        unshare(),
        mount(),
        kexec_load(),
        io_uring_setup(),
    ]
}

/// Judges a raw syscall return value (`-1` with `errno` on failure); closes a returned fd.
fn judge(syscall: &str, tried: &str, rc: libc::c_long, returns_fd: bool) -> SyscallAttempt {
    let errno = (rc < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    if rc >= 0 && returns_fd {
        // SAFETY: the syscall just returned this fd to us and nothing else holds it.
        unsafe { libc::close(rc as libc::c_int) };
    }
    from_errno(syscall, tried, errno)
}

fn from_errno(syscall: &str, tried: &str, errno: Option<i32>) -> SyscallAttempt {
    let outcome = match errno {
        Some(code) if DENIAL_ERRNOS.contains(&code) => SyscallOutcome::Denied,
        _ => SyscallOutcome::Permitted,
    };
    SyscallAttempt {
        syscall: syscall.to_string(),
        tried: tried.to_string(),
        outcome,
        errno: errno.map(errno_name),
    }
}

fn keyctl() -> SyscallAttempt {
    const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
    const KEY_SPEC_THREAD_KEYRING: libc::c_long = -1;
    // SAFETY: integer arguments only; without the create flag nothing is created.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_THREAD_KEYRING,
            0 as libc::c_long,
        )
    };
    judge(
        "keyctl",
        "KEYCTL_GET_KEYRING_ID of the thread keyring, create=0",
        rc,
        false,
    )
}

fn bpf() -> SyscallAttempt {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr, map-create layout: map_type, key_size, value_size, max_entries, ...
    let mut attr = [0u32; 30];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: `attr` is a readable buffer of the size passed and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as libc::c_long,
        )
    };
    judge(
        "bpf",
        "BPF_MAP_CREATE of a 1-entry array map, closed at once",
        rc,
        true,
    )
}

fn userfaultfd() -> SyscallAttempt {
    // SAFETY: flag arguments only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_long,
        )
    };
    judge(
        "userfaultfd",
        "userfaultfd(O_CLOEXEC), closed at once",
        rc,
        true,
    )
}

fn perf_event_open() -> SyscallAttempt {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_DUMMY: u64 = 9;
    const DISABLED: u64 = 1;
    const EXCLUDE_KERNEL: u64 = 1 << 5;
    const EXCLUDE_HV: u64 = 1 << 6;
    const PERF_FLAG_FD_CLOEXEC: libc::c_long = 8;
    // struct perf_event_attr (PERF_ATTR_SIZE_VER7, 128 bytes): type, size, config, ...,
    // and the flag bits at byte 40.
    let mut attr = [0u64; 16];
    attr[0] = u64::from(PERF_TYPE_SOFTWARE) | (128u64 << 32);
    attr[1] = PERF_COUNT_SW_DUMMY;
    attr[5] = DISABLED | EXCLUDE_KERNEL | EXCLUDE_HV;
    // SAFETY: `attr` is a readable 128-byte perf_event_attr that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            0 as libc::c_long,
            -1 as libc::c_long,
            -1 as libc::c_long,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    judge(
        "perf_event_open",
        "disabled dummy software event on itself, user space only, closed at once",
        rc,
        true,
    )
}

fn unshare() -> SyscallAttempt {
    let tried = "unshare(CLONE_NEWUSER) in a child process that exits at once";
    // SAFETY: the child only calls async-signal-safe functions (unshare, _exit).
    match unsafe { libc::fork() } {
        -1 => SyscallAttempt {
            syscall: "unshare".into(),
            tried: format!("{tried} (fork failed: {})", crate::errno::last_errno_name()),
            outcome: SyscallOutcome::Denied,
            errno: None,
        },
        0 => {
            // SAFETY: plain syscalls in the forked child, which never returns.
            unsafe {
                let code = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                libc::_exit(code)
            }
        }
        child => {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is writable.
            let waited = unsafe { libc::waitpid(child, &mut status, 0) };
            let errno = if waited == child && libc::WIFEXITED(status) {
                Some(libc::WEXITSTATUS(status)).filter(|&code| code != 0)
            } else {
                Some(libc::ECHILD)
            };
            from_errno("unshare", tried, errno)
        }
    }
}

fn mount() -> SyscallAttempt {
    // A move of a path that cannot exist: the kernel checks CAP_SYS_ADMIN (and LSMs) first,
    // then fails the source lookup with ENOENT. Nothing can be mounted or moved.
    // SAFETY: valid NUL-terminated paths; null type and data are allowed for MS_MOVE.
    let rc = unsafe {
        libc::mount(
            ABSENT_PATH.as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    judge(
        "mount",
        "MS_MOVE of a path that cannot exist onto / (ENOENT = permitted)",
        rc.into(),
        false,
    )
}

fn kexec_load() -> SyscallAttempt {
    // SAFETY: the kernel rejects 17 segments before reading the (null) segment array.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            0 as libc::c_ulong,
            KEXEC_TOO_MANY_SEGMENTS,
            std::ptr::null::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    judge(
        "kexec_load",
        "17 segments, one over the maximum (EINVAL = permitted)",
        rc,
        false,
    )
}

fn io_uring_setup() -> SyscallAttempt {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u32; 30];
    // SAFETY: `params` is a writable io_uring_params-sized buffer that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1 as libc::c_long,
            params.as_mut_ptr(),
        )
    };
    judge(
        "io_uring_setup",
        "a 1-entry ring, closed at once without mapping it",
        rc,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_errnos() {
        let denied = from_errno("x", "t", Some(libc::EPERM));
        assert_eq!(denied.outcome, SyscallOutcome::Denied);
        assert_eq!(denied.errno.as_deref(), Some("EPERM"));
        let past_checks = from_errno("x", "t", Some(libc::EINVAL));
        assert_eq!(past_checks.outcome, SyscallOutcome::Permitted);
        assert_eq!(
            from_errno("x", "t", None).outcome,
            SyscallOutcome::Permitted
        );
    }

    #[test]
    fn tries_every_syscall_once_in_order() {
        let names: Vec<String> = try_all().into_iter().map(|a| a.syscall).collect();
        assert_eq!(
            names,
            [
                "keyctl",
                "bpf",
                "userfaultfd",
                "perf_event_open",
                "unshare",
                "mount",
                "kexec_load",
                "io_uring_setup"
            ]
        );
    }

    #[test]
    fn root_on_the_host_passes_the_mount_permission_check() {
        // The tests run as root in the host's namespaces (this machine kind): the permission
        // checks pass and the harmless arguments decide the errno.
        let mount = mount();
        assert_eq!(mount.errno.as_deref(), Some("ENOENT"), "{mount:?}");
        assert_eq!(mount.outcome, SyscallOutcome::Permitted);
    }
}
