//! Starting container processes: the container's init (one clone(2) with every new namespace,
//! then mounts, pivot_root, identity and seccomp, then a wait on the exec fifo) and exec'd
//! processes (setns into a running container).
//!
//! The caller must be single-threaded: the child continues in a copy of the caller after a
//! raw clone, as crun does, with no re-exec of the runtime binary.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{Hook, LinuxIdMapping, LinuxSeccomp, PosixRlimit, Process, Spec};

use crate::cgroups::{Cgroup, CgroupError, CgroupJoin};
use crate::hooks::{self, HookError};
use crate::namespaces::{self, JOIN_ORDER, JoinNamespace, NamespaceError, NamespacePlan};
use crate::process::{self, Identity, ProcessError};
use crate::rootfs::{self, RootfsConfig};
use crate::seccomp::{Filter, SeccompError};
use crate::sync::{Channel, Failure, Message};
use crate::syscall::{LinuxSyscall, Syscall};

/// Errors while starting a container process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The spec cannot be run as given.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// Namespace configuration or entry failed.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// The seccomp profile cannot be compiled.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// cgroup setup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// rlimits failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A runtime-namespace hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The runtime's own bookkeeping (state file) failed.
    #[error("{0}")]
    Runtime(String),
    /// A syscall in the runtime failed.
    #[error("{step}: {source}")]
    Os {
        /// What was being done.
        step: String,
        /// The OS error.
        source: io::Error,
    },
    /// The container process reported a setup failure.
    #[error("{message}")]
    Child {
        /// Why (for exit codes).
        failure: Failure,
        /// What it said.
        message: String,
    },
    /// The container process died during setup without saying why.
    #[error("the container process died during setup ({0})")]
    Died(String),
}

impl LaunchError {
    /// The conventional exit code for this failure: 127 when the program does not exist, 126
    /// when it cannot be executed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Child {
                failure: Failure::NotFound,
                ..
            } => 127,
            LaunchError::Child {
                failure: Failure::NotExecutable,
                ..
            } => 126,
            _ => 1,
        }
    }
}

fn os(step: impl Into<String>) -> impl FnOnce(io::Error) -> LaunchError {
    let step = step.into();
    move |source| LaunchError::Os { step, source }
}

/// The process part shared by the container's init and exec'd processes.
#[derive(Debug)]
pub struct ProcessSetup {
    args: Vec<String>,
    env: Vec<String>,
    cwd: PathBuf,
    identity: Identity,
    seccomp: Option<Filter>,
    console_size: Option<(u16, u16)>,
    console_socket: Option<OwnedFd>,
    rlimits: Vec<PosixRlimit>,
    oom_score_adj: Option<i32>,
    preserve_fds: u32,
    stdio: Option<[OwnedFd; 3]>,
}

impl ProcessSetup {
    /// The spec's `process`, with the container's seccomp profile. A terminal needs a
    /// connected console socket to hand the pty master to.
    pub fn new(
        process: &Process,
        seccomp: Option<&LinuxSeccomp>,
        console_socket: Option<OwnedFd>,
    ) -> Result<Self, LaunchError> {
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(ProcessError::NoArgs.into());
        }
        let terminal = process.terminal().unwrap_or(false);
        if terminal && console_socket.is_none() {
            return Err(LaunchError::Invalid(
                "process.terminal is true but no console socket was given: pass \
                 --console-socket, or set terminal to false"
                    .into(),
            ));
        }
        if !process.cwd().is_absolute() {
            return Err(LaunchError::Invalid(format!(
                "process.cwd {:?} must be an absolute path",
                process.cwd()
            )));
        }
        Ok(ProcessSetup {
            args,
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().clone(),
            identity: Identity::from_process(process),
            seccomp: seccomp.map(Filter::compile).transpose()?,
            console_size: process
                .console_size()
                .map(|b| (b.height() as u16, b.width() as u16)),
            console_socket: if terminal { console_socket } else { None },
            rlimits: process.rlimits().clone().unwrap_or_default(),
            oom_score_adj: process.oom_score_adj(),
            preserve_fds: 0,
            stdio: None,
        })
    }

    /// Keeps fds 3..3+n open in the process (socket activation, as runc's --preserve-fds).
    pub fn preserve_fds(mut self, n: u32) -> Self {
        self.preserve_fds = n;
        self
    }

    /// Gives the process these stdin, stdout and stderr instead of the caller's.
    pub fn stdio(mut self, stdio: [OwnedFd; 3]) -> Self {
        self.stdio = Some(stdio);
        self
    }
}

/// What the container's init needs, prepared by the runtime before clone.
#[derive(Debug)]
pub struct InitSetup {
    rootfs: RootfsConfig,
    no_pivot: bool,
    root_readonly: bool,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
    hostname: Option<String>,
    domainname: Option<String>,
    sysctls: HashMap<String, String>,
    session_keyring: Option<String>,
    create_container_hooks: Vec<Hook>,
    start_container_hooks: Vec<Hook>,
    namespaces: NamespacePlan,
    uid_mappings: Vec<LinuxIdMapping>,
    gid_mappings: Vec<LinuxIdMapping>,
    exec_fifo: Option<OwnedFd>,
    process: ProcessSetup,
}

/// Options of the runtime that are not in the spec.
#[derive(Debug, Default)]
pub struct InitOptions {
    /// Use MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Name of the new session keyring (None: keep the caller's, as --no-new-keyring).
    pub session_keyring: Option<String>,
    /// An O_PATH fd of the exec fifo to block on before exec (None: exec right away).
    pub exec_fifo: Option<OwnedFd>,
    /// A connected console socket (needed when process.terminal).
    pub console_socket: Option<OwnedFd>,
    /// Extra fds to keep (3..3+n).
    pub preserve_fds: u32,
    /// stdin, stdout, stderr for the container (default: the caller's).
    pub stdio: Option<[OwnedFd; 3]>,
}

impl InitSetup {
    /// Prepares the container init for `spec` (with `rootfs` resolved) in `cgroup`.
    pub fn new(
        spec: &Spec,
        rootfs: &Path,
        cgroup: Option<&Cgroup>,
        options: InitOptions,
    ) -> Result<Self, LaunchError> {
        let linux = spec.linux().clone().unwrap_or_default();
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| LaunchError::Invalid("the config has no process to run".into()))?;
        let namespaces = NamespacePlan::from_spec(&linux)?;
        let sysctls = linux.sysctl().clone().unwrap_or_default();
        namespaces::validate_sysctls(&sysctls, &namespaces)?;
        let new_uts = namespaces.isolates(CloneFlags::CLONE_NEWUTS);
        if (spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
            || spec.domainname().as_ref().is_some_and(|h| !h.is_empty()))
            && !new_uts
        {
            return Err(LaunchError::Invalid(
                "hostname/domainname need the container's own uts namespace".into(),
            ));
        }
        let user_ns = namespaces.creates(CloneFlags::CLONE_NEWUSER);
        let uid_mappings = linux.uid_mappings().clone().unwrap_or_default();
        let gid_mappings = linux.gid_mappings().clone().unwrap_or_default();
        if user_ns && (uid_mappings.is_empty() || gid_mappings.is_empty()) {
            return Err(LaunchError::Invalid(
                "a user namespace needs linux.uidMappings and linux.gidMappings".into(),
            ));
        }
        let mut process_setup =
            ProcessSetup::new(process, linux.seccomp().as_ref(), options.console_socket)?
                .preserve_fds(options.preserve_fds);
        if let Some(stdio) = options.stdio {
            process_setup = process_setup.stdio(stdio);
        }
        let hooks = spec.hooks().clone().unwrap_or_default();
        Ok(InitSetup {
            rootfs: RootfsConfig {
                rootfs: rootfs.to_path_buf(),
                mounts: spec.mounts().clone().unwrap_or_default(),
                devices: linux.devices().clone().unwrap_or_default(),
                propagation: linux.rootfs_propagation().clone(),
                in_user_namespace: user_ns,
                cgroup_namespace: namespaces.isolates(CloneFlags::CLONE_NEWCGROUP),
                cgroup_hierarchies: cgroup.map(|c| c.hierarchies().to_vec()).unwrap_or_default(),
            },
            no_pivot: options.no_pivot,
            root_readonly: spec
                .root()
                .as_ref()
                .is_some_and(|r| r.readonly() == Some(true)),
            masked_paths: linux.masked_paths().clone().unwrap_or_default(),
            readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
            hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
            domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
            sysctls,
            session_keyring: options.session_keyring,
            create_container_hooks: hooks.create_container().clone().unwrap_or_default(),
            start_container_hooks: hooks.start_container().clone().unwrap_or_default(),
            namespaces,
            uid_mappings,
            gid_mappings,
            exec_fifo: options.exec_fifo,
            process: process_setup,
        })
    }
}

/// The runtime's part of container setup, called by [`spawn_init`] at the right moments.
pub trait SetupObserver {
    /// The init process exists (host pid): record it, so that it can be cleaned up whatever
    /// happens next.
    fn spawned(&mut self, pid: i32) -> Result<(), String>;
    /// The mounts are ready: run the prestart and createRuntime hooks. Returns the state JSON
    /// for the createContainer and startContainer hooks.
    fn runtime_hooks(&mut self, pid: i32) -> Result<String, String>;
}

/// Kills and reaps a child that setup gave up on.
struct ChildGuard(Option<i32>);

impl ChildGuard {
    fn disarm(&mut self) -> i32 {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill and waitpid on our own child with plain integers.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// clone3(2) arguments (include/uapi/linux/sched.h).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A new process, like fork(2) (no new stack: the child continues here on its copy), with
/// namespace `flags`, born directly in the cgroup v2 directory `cgroup` when given (no
/// migration afterwards). Returns the child's pid (0 in the child) and whether it was born in
/// `cgroup`: kernels without clone3 or CLONE_INTO_CGROUP fall back to a plain clone.
fn clone_process(flags: CloneFlags, cgroup: Option<BorrowedFd<'_>>) -> io::Result<(i32, bool)> {
    if let Some(dir) = cgroup {
        let args = CloneArgs {
            flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork; args is a
        // valid clone_args of the given size. The caller is single-threaded.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if ret >= 0 {
            return Ok((ret as i32, true));
        }
        let err = io::Error::last_os_error();
        if !matches!(
            err.raw_os_error(),
            Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::E2BIG) | Some(libc::EOPNOTSUPP)
        ) {
            return Err(err);
        }
        tracing::debug!("clone3(CLONE_INTO_CGROUP) unavailable ({err}); migrating after clone");
    }
    // SAFETY: a raw clone without CLONE_VM behaves like fork: the child gets a copy of the
    // address space and continues on its own copy of the stack. The caller is single-threaded.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((ret as i32, false))
    }
}

/// Where the new process stands with its cgroup.
struct CgroupPlacement<'a> {
    cgroup: &'a Cgroup,
    join: CgroupJoin,
}

impl CgroupPlacement<'_> {
    /// In the child: joins the v1 hierarchies itself (no global lock, see
    /// [`Cgroup::open_join`]).
    fn join_in_child(&self) -> Result<(), ChildFailure> {
        self.join
            .join_current_thread()
            .map_err(fail("joining the container's cgroup"))
    }
}

fn write_id_map(pid: i32, file: &str, mappings: &[LinuxIdMapping]) -> Result<(), LaunchError> {
    let text: String = mappings
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text).map_err(os(format!("writing {path}")))
}

fn exit_description(pid: i32) -> String {
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit status {}", libc::WEXITSTATUS(status))
    }
}

/// Runtime side of the handshake after the child exists: ids, cgroup, limits, then the
/// messages until the child is ready.
fn drive_setup(
    channel: &Channel,
    guard: &mut ChildGuard,
    pid: i32,
    unified_fallback: Option<&Cgroup>,
    process: &ProcessSetup,
    observer: &mut dyn SetupObserver,
) -> Result<i32, LaunchError> {
    if let Some(cgroup) = unified_fallback {
        cgroup.add_process_unified(pid)?;
        tracing::debug!(pid, "container process moved into its cgroup v2");
    }
    process::apply_rlimits(pid, &process.rlimits)?;
    if let Some(adj) = process.oom_score_adj {
        let path = format!("/proc/{pid}/oom_score_adj");
        std::fs::write(&path, adj.to_string()).map_err(os(format!("writing {path}")))?;
    }
    channel
        .send(&Message::Go)
        .map_err(os("signalling the container process"))?;
    loop {
        match channel
            .recv()
            .map_err(os("reading from the container process"))?
        {
            Some(Message::RuntimeHooks) => {
                tracing::debug!(pid, "container mounts ready, running runtime hooks");
                let state = observer.runtime_hooks(pid).map_err(LaunchError::Runtime)?;
                channel
                    .send(&Message::HooksDone(state))
                    .map_err(os("signalling the container process"))?;
            }
            Some(Message::Ready) => {
                tracing::debug!(pid, "container process ready");
                return Ok(guard.disarm());
            }
            Some(Message::Error(failure, message)) => {
                return Err(LaunchError::Child { failure, message });
            }
            Some(other) => {
                return Err(LaunchError::Runtime(format!(
                    "unexpected message {other:?} from the container process"
                )));
            }
            None => {
                let pid = guard.disarm();
                return Err(LaunchError::Died(exit_description(pid)));
            }
        }
    }
}

/// Creates the container's init: returns its host pid once it is fully set up and blocked on
/// the exec fifo (or about to exec when there is none). On error the process is gone.
pub fn spawn_init(
    setup: InitSetup,
    cgroup: Option<&Cgroup>,
    observer: &mut dyn SetupObserver,
) -> Result<i32, LaunchError> {
    let flags = setup.namespaces.clone_flags;
    let pid_ns = setup.namespaces.join_pid.as_ref().map(|j| j.fd.as_fd());
    spawn(
        Spawn {
            flags,
            pid_ns,
            cgroup,
            process: &setup.process,
        },
        observer,
        |pid, observer| {
            tracing::debug!(pid, ?flags, "container init cloned");
            observer.spawned(pid).map_err(LaunchError::Runtime)?;
            if setup.namespaces.creates(CloneFlags::CLONE_NEWUSER) {
                write_id_map(pid, "uid_map", &setup.uid_mappings)?;
                write_id_map(pid, "gid_map", &setup.gid_mappings)?;
            }
            Ok(())
        },
        |channel| init_child(&setup, channel),
    )
}

/// The runtime-side parameters of one new container process.
struct Spawn<'a> {
    flags: CloneFlags,
    pid_ns: Option<BorrowedFd<'a>>,
    cgroup: Option<&'a Cgroup>,
    process: &'a ProcessSetup,
}

/// Clones the child (into the pid namespace and cgroup), runs `child` in it, and drives the
/// setup handshake from the runtime side after `spawned` ran with the new pid.
fn spawn(
    spawn: Spawn<'_>,
    observer: &mut dyn SetupObserver,
    spawned: impl FnOnce(i32, &mut dyn SetupObserver) -> Result<(), LaunchError>,
    child: impl FnOnce(&Channel) -> Result<(), ChildFailure>,
) -> Result<i32, LaunchError> {
    let (runtime_end, child_end) = Channel::pair().map_err(os("creating the setup channel"))?;
    if let Some(pid_ns) = spawn.pid_ns {
        LinuxSyscall
            .setns(pid_ns, CloneFlags::CLONE_NEWPID)
            .map_err(|source| NamespaceError::Enter {
                action: "joining",
                kind: "pid",
                source,
            })?;
    }
    let placement = match spawn.cgroup {
        Some(cgroup) => Some(CgroupPlacement {
            cgroup,
            join: cgroup.open_join()?,
        }),
        None => None,
    };
    let (pid, born_in_cgroup) = clone_process(
        spawn.flags,
        placement.as_ref().and_then(|p| p.join.unified_dir()),
    )
    .map_err(os(format!("clone with flags {:?}", spawn.flags)))?;
    if pid == 0 {
        drop(runtime_end);
        child_main(&child_end, |channel| {
            if let Some(placement) = &placement {
                placement.join_in_child()?;
            }
            child(channel)
        });
    }
    drop(child_end);
    let mut guard = ChildGuard(Some(pid));
    spawned(pid, observer)?;
    let fallback = placement.filter(|_| !born_in_cgroup).map(|p| p.cgroup);
    drive_setup(
        &runtime_end,
        &mut guard,
        pid,
        fallback,
        spawn.process,
        observer,
    )
}

/// What exec needs to join a running container.
#[derive(Debug)]
pub struct ExecSetup {
    namespaces: Vec<JoinNamespace>,
    pid_namespace: Option<OwnedFd>,
    process: ProcessSetup,
}

impl ExecSetup {
    /// Joins the namespaces of the container whose init is `init_pid` (those that differ from
    /// the caller's) and runs `process` there.
    pub fn new(init_pid: i32, process: ProcessSetup) -> Result<Self, LaunchError> {
        let mut namespaces = Vec::new();
        let differs = |name: &str| -> Result<Option<OwnedFd>, LaunchError> {
            let theirs = PathBuf::from(format!("/proc/{init_pid}/ns/{name}"));
            let fd = crate::open_fd(&theirs).map_err(|source| NamespaceError::Open {
                kind: "container",
                path: theirs.clone(),
                source,
            })?;
            let ours = std::fs::metadata(format!("/proc/self/ns/{name}"));
            let theirs_meta = std::fs::metadata(&theirs);
            use std::os::unix::fs::MetadataExt;
            match (ours, theirs_meta) {
                (Ok(a), Ok(b)) if a.ino() == b.ino() && a.dev() == b.dev() => Ok(None),
                _ => Ok(Some(fd)),
            }
        };
        for flag in JOIN_ORDER {
            if let Some(fd) = differs(namespaces::proc_name(flag))? {
                namespaces.push(JoinNamespace { flag, fd });
            }
        }
        let pid_namespace = differs("pid")?;
        Ok(ExecSetup {
            namespaces,
            pid_namespace,
            process,
        })
    }
}

/// An observer with nothing to record and no hooks to run (exec setup, and runtimes such
/// as the guest agent whose host runs the hooks).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl SetupObserver for NoHooks {
    fn spawned(&mut self, _pid: i32) -> Result<(), String> {
        Ok(())
    }
    fn runtime_hooks(&mut self, _pid: i32) -> Result<String, String> {
        Ok(String::new())
    }
}

/// Starts a process inside a running container; returns its host pid once it is about to
/// exec. The caller's children land in the container's pid namespace from here on.
pub fn spawn_exec(setup: ExecSetup, cgroup: Option<&Cgroup>) -> Result<i32, LaunchError> {
    spawn(
        Spawn {
            flags: CloneFlags::empty(),
            pid_ns: setup.pid_namespace.as_ref().map(|fd| fd.as_fd()),
            cgroup,
            process: &setup.process,
        },
        &mut NoHooks,
        |_, _| Ok(()),
        |channel| exec_child(&setup, channel),
    )
}

/// A failure inside the child, sent to the runtime before exiting.
struct ChildFailure(Failure, String);

impl<E: std::fmt::Display> From<E> for ChildFailure {
    fn from(err: E) -> Self {
        ChildFailure(Failure::Setup, err.to_string())
    }
}

fn fail(step: &str) -> impl FnOnce(io::Error) -> ChildFailure + '_ {
    move |err| ChildFailure(Failure::Setup, format!("{step}: {err}"))
}

/// Runs `body` in the freshly cloned child and never returns: reports a failure to the runtime
/// and exits.
fn child_main(channel: &Channel, body: impl FnOnce(&Channel) -> Result<(), ChildFailure>) -> ! {
    reset_signals();
    // SAFETY: prctl with integer arguments: die with the runtime while it sets us up.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let code = match body(channel) {
        Ok(()) => 0,
        Err(ChildFailure(failure, message)) => {
            // After Ready the runtime may be gone (create returned): the container's stderr
            // is then the place to say why it stopped.
            if channel
                .send(&Message::Error(failure, message.clone()))
                .is_err()
            {
                eprintln!("twinbox: {message}");
            }
            1
        }
    };
    // SAFETY: leaving the child without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(code) }
}

/// Default dispositions and an empty mask: the runtime may ignore SIGPIPE or forward signals,
/// the container must not inherit that.
fn reset_signals() {
    for signal in 1..libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring the default disposition is always valid.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised set is unblocked for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn wait_for_go(channel: &Channel) -> Result<(), ChildFailure> {
    match channel.recv() {
        Ok(Some(Message::Go)) => Ok(()),
        // The runtime is gone: nothing to report to.
        // SAFETY: exiting the orphaned child.
        _ => unsafe { libc::_exit(1) },
    }
}

fn init_child(setup: &InitSetup, channel: &Channel) -> Result<(), ChildFailure> {
    let sys = LinuxSyscall;
    if let Some(stdio) = &setup.process.stdio {
        install_stdio(stdio)?;
    }
    wait_for_go(channel)?;
    if setup.namespaces.creates(CloneFlags::CLONE_NEWUSER) {
        sys.setgid(0)
            .map_err(fail("becoming gid 0 in the user namespace (is 0 mapped?)"))?;
        sys.setuid(0)
            .map_err(fail("becoming uid 0 in the user namespace (is 0 mapped?)"))?;
    }
    setup.namespaces.enter(&sys)?;
    if let Some(name) = &setup.session_keyring {
        join_session_keyring(name)?;
    }
    rootfs::prepare(&sys, &setup.rootfs)?;
    channel
        .send(&Message::RuntimeHooks)
        .map_err(fail("asking for the runtime hooks"))?;
    let state = match channel.recv() {
        Ok(Some(Message::HooksDone(state))) => state,
        // SAFETY: the runtime gave up on us (hook failure): exit quietly.
        _ => unsafe { libc::_exit(1) },
    };
    hooks::run_hooks("createContainer", &setup.create_container_hooks, &state)?;
    if setup.no_pivot {
        rootfs::move_root(&sys, &setup.rootfs.rootfs)?;
    } else {
        rootfs::pivot_root(&sys, &setup.rootfs.rootfs)?;
    }
    let root = Path::new("/");
    if let Some(hostname) = &setup.hostname {
        sys.sethostname(hostname)
            .map_err(fail("setting the hostname"))?;
    }
    if let Some(domainname) = &setup.domainname {
        sys.setdomainname(domainname)
            .map_err(fail("setting the domainname"))?;
    }
    for (key, value) in &setup.sysctls {
        let path = root.join("proc/sys").join(key.replace('.', "/"));
        sys.write_file(&path, value).map_err(|e| {
            ChildFailure(Failure::Setup, format!("setting sysctl {key}={value}: {e}"))
        })?;
    }
    rootfs::readonly_paths(&sys, root, &setup.readonly_paths)?;
    rootfs::mask_paths(&sys, root, &setup.masked_paths)?;
    if setup.root_readonly {
        rootfs::remount_readonly(&sys, root)?;
    }
    finish_process(
        &setup.process,
        channel,
        setup.exec_fifo.as_ref(),
        &setup.start_container_hooks,
        &state,
    )
}

fn exec_child(setup: &ExecSetup, channel: &Channel) -> Result<(), ChildFailure> {
    let sys = LinuxSyscall;
    if let Some(stdio) = &setup.process.stdio {
        install_stdio(stdio)?;
    }
    wait_for_go(channel)?;
    for ns in &setup.namespaces {
        sys.setns(ns.fd.as_fd(), ns.flag).map_err(|e| {
            ChildFailure(
                Failure::Setup,
                format!(
                    "joining the container's {} namespace: {e}",
                    namespaces::proc_name(ns.flag)
                ),
            )
        })?;
    }
    finish_process(&setup.process, channel, None, &[], "")
}

fn install_stdio(stdio: &[OwnedFd; 3]) -> Result<(), ChildFailure> {
    for (target, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 onto 0..2 with a valid open fd.
        if unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) } < 0 {
            return Err(fail("setting up stdio")(io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn join_session_keyring(name: &str) -> Result<(), ChildFailure> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_int = 1;
    let name =
        CString::new(name).map_err(|_| ChildFailure(Failure::Setup, "bad keyring name".into()))?;
    // SAFETY: keyctl with a valid NUL-terminated name.
    let ret =
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    let err = io::Error::last_os_error();
    // Kernels without keyrings, or refused in nested setups: keep the inherited keyring.
    if ret < 0
        && !matches!(
            err.raw_os_error(),
            Some(libc::ENOSYS) | Some(libc::EACCES) | Some(libc::EPERM)
        )
    {
        return Err(fail("creating the session keyring")(err));
    }
    Ok(())
}

/// The common tail of init and exec: terminal, session, privileges, cwd, program lookup,
/// then (after telling the runtime) the exec fifo, startContainer hooks and execve.
fn finish_process(
    process: &ProcessSetup,
    channel: &Channel,
    exec_fifo: Option<&OwnedFd>,
    start_container_hooks: &[Hook],
    state: &str,
) -> Result<(), ChildFailure> {
    let sys = LinuxSyscall;
    // SAFETY: setsid has no arguments; failing (already a leader) is harmless.
    unsafe { libc::setsid() };
    if let Some(socket) = &process.console_socket {
        setup_console(socket, process.console_size)?;
    }
    let identity = &process.identity;
    if identity.no_new_privileges {
        sys.set_no_new_privs()
            .map_err(fail("setting no_new_privs"))?;
    }
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it before dropping it.
    if let Some(filter) = process
        .seccomp
        .as_ref()
        .filter(|_| !identity.no_new_privileges)
    {
        filter.load().map_err(fail("loading the seccomp filter"))?;
    }
    identity.apply(&sys)?;
    sys.chdir(&process.cwd).map_err(|source| {
        ChildFailure(
            Failure::Setup,
            ProcessError::Cwd {
                path: process.cwd.clone(),
                source,
            }
            .to_string(),
        )
    })?;
    let mut env = process.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_dir(identity.uid)));
    }
    let program = process::find_executable(&process.args[0], &env).map_err(|err| {
        let failure = match err {
            ProcessError::NotFound(_) => Failure::NotFound,
            ProcessError::NotExecutable(_) => Failure::NotExecutable,
            _ => Failure::Setup,
        };
        ChildFailure(failure, err.to_string())
    })?;
    let argv = to_cstrings(&process.args)?;
    let envp = to_cstrings(&env)?;
    let path = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| ChildFailure(Failure::Setup, "program path contains NUL".into()))?;
    // From here on the runtime may exit: do not die with it.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    channel
        .send(&Message::Ready)
        .map_err(fail("reporting readiness"))?;
    if let Some(fifo) = exec_fifo {
        wait_for_start(fifo)?;
    }
    hooks::run_hooks("startContainer", start_container_hooks, state)?;
    if let Some(filter) = process
        .seccomp
        .as_ref()
        .filter(|_| identity.no_new_privileges)
    {
        filter.load().map_err(fail("loading the seccomp filter"))?;
    }
    // Everything but stdio and the preserved fds is closed by execve.
    // SAFETY: close_range with integer arguments only sets close-on-exec flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 + process.preserve_fds,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: path, argv and envp are NUL-terminated arrays of valid C strings that outlive
    // the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    let err = io::Error::last_os_error();
    // The runtime has returned already: the container's stderr is the only place to say it.
    eprintln!("twinbox: exec {}: {err}", process.args[0]);
    let code = if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    // SAFETY: exiting the child after a failed exec.
    unsafe { libc::_exit(code) }
}

fn to_cstrings(items: &[String]) -> Result<Vec<CString>, ChildFailure> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_str())
                .map_err(|_| ChildFailure(Failure::Setup, format!("{s:?} contains a NUL byte")))
        })
        .collect()
}

/// The home directory of `uid` from the container's /etc/passwd, or "/".
fn home_dir(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() >= 6 && fields[2].parse() == Ok(uid)).then(|| fields[5].to_string())
            })
        })
        .unwrap_or_else(|| "/".to_string())
}

/// Blocks until `start` opens the exec fifo: reopen it for writing through /proc/self/fd (the
/// fd is an O_PATH handle opened before pivot_root) and write one byte.
fn wait_for_start(fifo: &OwnedFd) -> Result<(), ChildFailure> {
    let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(fail(
            "opening the exec fifo (is /proc mounted in the container?)",
        ))?;
    use std::io::Write;
    (&file)
        .write_all(b"0")
        .map_err(fail("writing the exec fifo"))?;
    Ok(())
}

/// Creates the container's pty (in its own devpts), makes it the controlling terminal and
/// stdio, and sends the master to the console socket.
fn setup_console(socket: &OwnedFd, size: Option<(u16, u16)>) -> Result<(), ChildFailure> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| fail("opening /dev/ptmx")(e.into()))?;
    nix::pty::unlockpt(&master).map_err(|e| fail("unlocking the pty")(e.into()))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| fail("naming the pty")(e.into()))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .map_err(fail("opening the pty"))?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    send_fd(socket, master.as_fd(), &name)
        .map_err(fail("sending the pty to the console socket"))?;
    drop(master);
    // SAFETY: TIOCSCTTY on our session's new terminal; dup2 onto stdio with a valid fd.
    unsafe {
        libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0);
        for target in 0..3 {
            libc::dup2(slave.as_raw_fd(), target);
        }
    }
    Ok(())
}

/// Sends `fd` over a unix socket with SCM_RIGHTS (the message carries the pty's name).
pub fn send_fd(socket: &OwnedFd, fd: std::os::fd::BorrowedFd<'_>, name: &str) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    let iov = [io::IoSlice::new(name.as_bytes())];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives a descriptor sent with [`send_fd`] (SCM_RIGHTS) on a unix socket.
pub fn receive_fd(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut name = [0u8; 256];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us; nobody else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "the message carried no file descriptor",
    ))
}
