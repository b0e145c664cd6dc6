//! The default seccomp profile: an allowlist with the same effect as Docker's default
//! profile, written here as data. Everything not listed fails with EPERM. Syscalls that
//! need a capability the container does not have stay blocked; adding the capability
//! (`--cap-add`) unblocks its group, as with Docker.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::SpecError;

/// Syscalls every container may make: file I/O, memory, signals, time, processes and
/// threads (namespace flags excluded, see [`CLONE_NAMESPACE_FLAGS`]), sockets, IPC,
/// polling, and the identity calls a process needs to drop privileges.
const ALWAYS_ALLOWED: &[&str] = &[
    // Files and directories.
    "access",
    "faccessat",
    "faccessat2",
    "chdir",
    "fchdir",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "chown32",
    "fchown",
    "fchown32",
    "fchownat",
    "lchown",
    "lchown32",
    "close",
    "close_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fsync",
    "sync",
    "syncfs",
    "sync_file_range",
    "flock",
    "fstat",
    "fstat64",
    "fstatat64",
    "newfstatat",
    "lstat",
    "lstat64",
    "stat",
    "stat64",
    "statx",
    "fstatfs",
    "fstatfs64",
    "statfs",
    "statfs64",
    "ftruncate",
    "ftruncate64",
    "truncate",
    "truncate64",
    "getcwd",
    "getdents",
    "getdents64",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "readlink",
    "readlinkat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "rmdir",
    "mknod",
    "mknodat",
    "open",
    "openat",
    "openat2",
    "read",
    "readv",
    "pread64",
    "preadv",
    "preadv2",
    "write",
    "writev",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "lseek",
    "_llseek",
    "sendfile",
    "sendfile64",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "umask",
    "utime",
    "utimes",
    "utimensat",
    "utimensat_time64",
    "futimesat",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "getxattrat",
    "listxattrat",
    "setxattrat",
    "removexattrat",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    "fanotify_mark",
    "ioctl",
    "io_setup",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_submit",
    "io_cancel",
    "memfd_create",
    "memfd_secret",
    "name_to_handle_at",
    "readahead",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "cachestat",
    // Memory.
    "brk",
    "mmap",
    "mmap2",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mlock",
    "mlock2",
    "mlockall",
    "munlock",
    "munlockall",
    "mincore",
    "msync",
    "remap_file_pages",
    "membarrier",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "process_madvise",
    "map_shadow_stack",
    "mseal",
    // Processes, threads and scheduling.
    "arch_prctl",
    "prctl",
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "getpgrp",
    "setpgid",
    "getsid",
    "setsid",
    "getpriority",
    "setpriority",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getattr",
    "sched_setattr",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_yield",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "set_thread_area",
    "get_thread_area",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futex_wake",
    "futex_wait",
    "futex_requeue",
    "rseq",
    "getrlimit",
    "ugetrlimit",
    "setrlimit",
    "prlimit64",
    "getrusage",
    "times",
    "uname",
    "sysinfo",
    "getcpu",
    "restart_syscall",
    "seccomp",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "process_mrelease",
    // Credentials.
    "getuid",
    "getuid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getegid",
    "getegid32",
    "getresuid",
    "getresuid32",
    "getresgid",
    "getresgid32",
    "getgroups",
    "getgroups32",
    "setuid",
    "setuid32",
    "setgid",
    "setgid32",
    "setreuid",
    "setreuid32",
    "setregid",
    "setregid32",
    "setresuid",
    "setresuid32",
    "setresgid",
    "setresgid32",
    "setgroups",
    "setgroups32",
    "setfsuid",
    "setfsuid32",
    "setfsgid",
    "setfsgid32",
    // Signals.
    "kill",
    "tkill",
    "tgkill",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "sigaction",
    "sigaltstack",
    "signal",
    "signalfd",
    "signalfd4",
    "sigpending",
    "sigprocmask",
    "sigreturn",
    "sigsuspend",
    "pause",
    // Time and timers.
    "alarm",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "gettimeofday",
    "time",
    "nanosleep",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    // Polling and events.
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "select",
    "_newselect",
    "pselect6",
    "pselect6_time64",
    // Sockets and pipes.
    "socket",
    "socketpair",
    "socketcall",
    "bind",
    "connect",
    "listen",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "shutdown",
    "recv",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "recvmmsg_time64",
    "send",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "pipe",
    "pipe2",
    // System V and POSIX IPC.
    "ipc",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    // Misc.
    "getrandom",
    "ioprio_get",
    "ioprio_set",
    "modify_ldt",
    "uretprobe",
];

/// `personality(2)` values allowed without CAP_SYS_ADMIN: Linux, 32-bit-compat and the
/// "query" value, as Docker allows.
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// clone(2) flags that create namespaces; clone with any of them needs CAP_SYS_ADMIN.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Syscalls unlocked by a capability (when the container has it).
const CAPABILITY_GROUPS: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "personality",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
            "open_by_handle_at",
            "listmount",
            "statmount",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "adjtimex",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

fn rule(names: &[&str], action: LinuxSeccompAction) -> Result<LinuxSyscall, SpecError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action)
        .build()
        .map_err(SpecError::build)
}

/// The default profile for a container with capabilities `caps` (its bounding set).
pub fn default_profile(caps: &[Capability]) -> Result<LinuxSeccomp, SpecError> {
    let has = |c: &Capability| caps.contains(c);
    let mut syscalls = vec![rule(ALWAYS_ALLOWED, LinuxSeccompAction::ScmpActAllow)?];
    for (cap, names) in CAPABILITY_GROUPS {
        if has(cap) {
            syscalls.push(rule(names, LinuxSeccompAction::ScmpActAllow)?);
        }
    }
    if !has(&Capability::SysAdmin) {
        // clone without namespace flags (flags are argument 0 on x86_64).
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![
                    LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(0u64)
                        .value_two(CLONE_NAMESPACE_FLAGS)
                        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                        .build()
                        .map_err(SpecError::build)?,
                ])
                .build()
                .map_err(SpecError::build)?,
        );
        // clone3 passes flags in memory, where seccomp cannot look: answer ENOSYS so libcs
        // fall back to clone, which is checked above.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()
                .map_err(SpecError::build)?,
        );
        for persona in PERSONALITIES {
            syscalls.push(
                LinuxSyscallBuilder::default()
                    .names(vec!["personality".to_string()])
                    .action(LinuxSeccompAction::ScmpActAllow)
                    .args(vec![
                        LinuxSeccompArgBuilder::default()
                            .index(0usize)
                            .value(*persona)
                            .op(LinuxSeccompOperator::ScmpCmpEq)
                            .build()
                            .map_err(SpecError::build)?,
                    ])
                    .build()
                    .map_err(SpecError::build)?,
            );
        }
    }
    let architectures = match std::env::consts::ARCH {
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
    };
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(architectures)
        .syscalls(syscalls)
        .build()
        .map_err(SpecError::build)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &LinuxSeccomp) -> Vec<String> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|rule| rule.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|rule| rule.names().clone())
            .collect()
    }

    #[test]
    fn io_uring_is_refused_even_with_every_capability() {
        // io_uring bypasses seccomp for the operations it submits (Docker blocks it too).
        let all_caps: Vec<Capability> = CAPABILITY_GROUPS.iter().map(|(c, _)| *c).collect();
        for caps in [&[][..], &all_caps[..]] {
            let names = allowed(&default_profile(caps).unwrap());
            assert!(names.iter().any(|n| n == "read"), "sanity: read is allowed");
            for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
                assert!(
                    !names.iter().any(|n| n == call),
                    "{call} must not be allowed"
                );
            }
        }
    }
}
