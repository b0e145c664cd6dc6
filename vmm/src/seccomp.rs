//! Per-thread seccomp filters (seccompiler): each VMM thread may make only the system calls
//! it really uses once the guest runs. Anything else traps, and the VMM reports the call
//! and exits: a guest that took over a device emulation thread gets no further.

use std::collections::BTreeMap;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors while building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled (a bug in the allow-list).
    #[error("cannot build the {thread} seccomp filter: {source}")]
    Build {
        /// Which thread kind.
        thread: &'static str,
        /// The seccompiler error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
    /// The SIGSYS reporter could not be installed.
    #[error("cannot install the seccomp violation handler: {0}")]
    Handler(#[source] vmm_sys_util::errno::Error),
}

/// The compiled filters for the VMM's two thread kinds.
#[derive(Debug, Clone)]
pub struct Filters {
    /// For the event-loop thread (device emulation, host sockets and files).
    pub vmm: BpfProgram,
    /// For vCPU threads (KVM_RUN and bus dispatch).
    pub vcpu: BpfProgram,
}

/// System calls both thread kinds make: memory allocation, locks, time, logging, hash-map
/// seeds (getrandom), signal return from the kick handler, thread exit.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_clock_gettime,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The event-loop thread: epoll, disk I/O, vsock's Unix sockets.
const VMM_ONLY: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
];

/// ioctls a vCPU thread makes: running, and reading its registers to tell why the guest
/// triple-faulted.
const VCPU_IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS];
/// ioctls the event-loop thread makes (non-blocking mode on new sockets).
const VMM_IOCTLS: &[u64] = &[libc::FIONBIO];

/// KVM_RUN = _IO(KVMIO, 0x80).
const KVM_RUN: u64 = 0xae80;
/// KVM_GET_REGS = _IOR(KVMIO, 0x81, struct kvm_regs).
const KVM_GET_REGS: u64 = kvm_ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// KVM_GET_SREGS = _IOR(KVMIO, 0x83, struct kvm_sregs).
const KVM_GET_SREGS: u64 = kvm_ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

/// `_IOR(KVMIO, nr, size)`: a KVM ioctl number that reads `size` bytes.
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    const IOC_READ: u64 = 2;
    const KVMIO: u64 = 0xae;
    (IOC_READ << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

fn rules_for(
    thread: &'static str,
    syscalls: &[&[i64]],
    ioctls: &[u64],
) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { thread, source };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for syscall in syscalls.iter().flat_map(|list| list.iter()) {
        rules.insert(*syscall, Vec::new());
    }
    let ioctl_rules = ioctls
        .iter()
        .map(|request| {
            SeccompRule::new(vec![
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *request)
                    .map_err(build)?,
            ])
            .map_err(build)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// Compiles both filters.
pub fn filters() -> Result<Filters, SeccompError> {
    Ok(Filters {
        vmm: rules_for("event loop", &[COMMON, VMM_ONLY], VMM_IOCTLS)?,
        vcpu: rules_for("vCPU", &[COMMON], VCPU_IOCTLS)?,
    })
}

/// Number of system calls each filter allows: `(event loop, vCPU)`. ioctl counts once.
pub fn allowed_counts() -> (usize, usize) {
    (COMMON.len() + VMM_ONLY.len() + 1, COMMON.len() + 1)
}

extern "C" fn report_violation(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; for SYS_SECCOMP its
    // `si_syscall` field (an int at byte offset 24 on x86_64) holds the system call number.
    let syscall = unsafe { *(info.cast::<u8>().add(24).cast::<libc::c_int>()) };
    let mut message = *b"twinbox vmm: seccomp blocked system call 000; stopping\n";
    let digits = [syscall / 100 % 10, syscall / 10 % 10, syscall % 10];
    for (slot, digit) in message[41..44].iter_mut().zip(digits) {
        *slot = b'0' + digit as u8;
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// Keeps glibc's allocator within the filters: when a thread's heap shrinks, glibc reads
/// `/proc/sys/vm/overcommit_memory` (an `openat` no filter allows) the first time. That
/// happens once a vCPU or the event loop frees enough memory, e.g. after a large vsock
/// transfer. A trim threshold no heap reaches means heaps are never shrunk (freed memory
/// stays with the process for reuse; whole heaps are still unmapped).
fn keep_allocator_within_filters() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes an allocator parameter; glibc serializes it internally.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Prepares the process for filtered threads (once): installs the SIGSYS reporter and
/// keeps the allocator from making calls the filters refuse.
pub fn prepare_process() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        keep_allocator_within_filters();
        result = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, report_violation)
            .map_err(SeccompError::Handler);
    });
    result
}

/// Installs `filter` on the calling thread.
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ioctl_numbers_match_the_linux_headers() {
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn filters_compile_and_count() {
        let filters = filters().unwrap();
        assert!(!filters.vmm.is_empty() && !filters.vcpu.is_empty());
        let (vmm, vcpu) = allowed_counts();
        assert!(vmm > vcpu);
    }

    /// Runs `body` in a forked child with the vCPU filter installed; returns its wait
    /// status. The child makes raw system calls only (no allocation after fork).
    fn in_filtered_child(filter: &BpfProgram, body: fn()) -> i32 {
        // SAFETY: the child only makes raw system calls before it exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if apply(filter).is_err() {
                // SAFETY: raw exit of the child.
                unsafe { libc::syscall(libc::SYS_exit, 2) };
            }
            body();
            // SAFETY: raw thread exit, which the filter allows.
            unsafe { libc::syscall(libc::SYS_exit, 7) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    #[test]
    fn a_filtered_thread_can_do_its_work_but_not_more() {
        let filters = filters().unwrap();
        let allowed = in_filtered_child(&filters.vcpu, || {
            // SAFETY: harmless calls on an invalid fd.
            unsafe {
                libc::write(-1, std::ptr::null(), 0);
                libc::read(-1, std::ptr::null_mut(), 0);
            }
        });
        assert!(libc::WIFEXITED(allowed), "status {allowed:#x}");
        assert_eq!(libc::WEXITSTATUS(allowed), 7);
        let denied = in_filtered_child(&filters.vcpu, || {
            // SAFETY: eventfd creation is harmless, but not on the vCPU allow-list.
            unsafe { libc::eventfd(0, 0) };
        });
        assert!(libc::WIFSIGNALED(denied), "status {denied:#x}");
        assert_eq!(libc::WTERMSIG(denied), libc::SIGSYS);
    }

    /// Set in the fresh process that [`a_filtered_thread_may_free_much_memory`] starts.
    const FRESH_PROCESS: &str = "TWINBOX_SECCOMP_FRESH_PROCESS";

    #[test]
    fn a_filtered_thread_may_free_much_memory() {
        if std::env::var_os(FRESH_PROCESS).is_some() {
            // glibc asks /proc once per process, so this runs in a process of its own.
            prepare_process().unwrap();
            let filters = filters().unwrap();
            // A new thread, so its allocations come from a heap of its own (a glibc arena)
            // whose shrinking is what left the filter.
            let worker = std::thread::spawn(move || {
                apply(&filters.vmm).unwrap();
                for _ in 0..4 {
                    let buffers: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 64 << 10]).collect();
                    drop(buffers);
                }
            });
            worker.join().unwrap();
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::a_filtered_thread_may_free_much_memory",
                "--test-threads=1",
            ])
            .env(FRESH_PROCESS, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
