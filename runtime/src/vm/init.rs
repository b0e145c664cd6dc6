//! The VM's init process: `twinbox-vmm init CONFIG`, started in the jail by `create`. It is
//! what the caller sees as the container: it boots the guest with twinbox's VMM, waits for
//! the agent, has it create the workload, reports to the creator, blocks on the exec fifo
//! until `start`, then relays stdio, signals and terminal resizes, writes the workload's
//! volume changes back, and exits with the workload's exit code once the guest powered off.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use twinbox_protocol::{
    ArchiveReader, Connection, CreateRequest, Event, ExitStatus, HOST_PORT, Message, ProtocolError,
    REPLY_TIMEOUT,
};

use super::diagnose::{self, Ending};
use super::hostio::{self, Signals};
use super::jail::paths;
use super::notify::{self, Notice};
use super::phases::{BootPhases, Milestone};
use crate::image::unpack::{WhiteoutMode, apply_layer};

/// The init's configuration file in the VM directory.
pub const CONFIG_FILE: &str = "init.json";
/// The VMM's hybrid vsock socket in the VM directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The guest console's log in the VM directory.
pub const CONSOLE_LOG: &str = "console.log";
/// Where the init reports readiness, in the VM directory.
pub const NOTIFY_SOCKET: &str = "notify.sock";
/// The init's own log in the VM directory.
pub const LOG_FILE: &str = "vmm.log";

/// Random bytes the guest reseeds its generator from (`CreateRequest::entropy`): 256 bits,
/// a full reseed.
const GUEST_ENTROPY_BYTES: usize = 32;

/// The guest's vsock context id.
const GUEST_CID: u32 = 3;

/// The exit code when the guest dies before its workload exits.
pub const GUEST_DIED: i32 = 255;

/// How long the guest may take to power off after the workload's end.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the workload's last output may take to reach a slow reader.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the init of a container started on create stays for `run`'s own `start` call
/// after the workload ended.
const START_GRACE: Duration = Duration::from_secs(10);

/// What the init is told (paths are inside the jail).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Disk images and whether they are read-only, in order.
    pub disks: Vec<(PathBuf, bool)>,
    /// Directories that take volume changes: (volume index, directory).
    pub sync_dirs: Vec<(u32, PathBuf)>,
    /// The agent's create request.
    pub request: CreateRequest,
    /// How long the agent may take to connect.
    pub boot_timeout_ms: u64,
    /// The template snapshot to restore instead of booting (see [`super::template`]).
    #[serde(default)]
    pub restore_from: Option<PathBuf>,
}

/// The VMM configuration of a twinbox VM: the kernel, `disks` (path, read-only) in order,
/// the hybrid vsock socket and the console log in `vm_dir`.
pub fn vm_config(
    kernel: &Path,
    cmdline: &str,
    memory: u64,
    vcpus: u8,
    disks: &[(PathBuf, bool)],
    vm_dir: &Path,
) -> vmm::VmConfig {
    let mut vm = vmm::VmConfig::new(kernel);
    vm.cmdline = cmdline.to_string();
    vm.mem_size = memory;
    vm.vcpus = vcpus;
    vm.disks = disks
        .iter()
        .map(|(path, read_only)| vmm::DiskConfig {
            path: path.clone(),
            read_only: *read_only,
        })
        .collect();
    vm.vsock = Some(vmm::VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: vm_dir.join(VSOCK_SOCKET),
    });
    vm.console = vmm::ConsoleConfig::File(vm_dir.join(CONSOLE_LOG));
    vm
}

/// A failure to get the workload ready: what the creator reports, and the init's exit code.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The VM running on a thread of its own.
struct RunningVm {
    handle: vmm::VmHandle,
    done: OwnedFd,
    result: Arc<Mutex<Option<Result<vmm::VmExit, String>>>>,
    thread: Option<JoinHandle<()>>,
    console: PathBuf,
    boot_times: Arc<vmm::devices::legacy::BootTimes>,
}

impl RunningVm {
    fn start(config: &InitConfig, vm_dir: &Path) -> Result<Self, String> {
        let mut vm = vm_config(
            &config.kernel,
            &config.cmdline,
            config.memory,
            config.vcpus,
            &config.disks,
            vm_dir,
        );
        let console = vm_dir.join(CONSOLE_LOG);
        vm.restore_from = config.restore_from.clone();
        let vmm = match vmm::Vmm::build(vm.clone()) {
            Ok(vmm) => vmm,
            Err(error) if vm.restore_from.is_some() => {
                tracing::warn!("restoring the VM template failed ({error}); booting instead");
                vm.restore_from = None;
                vmm::Vmm::build(vm).map_err(|e| e.to_string())?
            }
            Err(error) => return Err(error.to_string()),
        };
        let handle = vmm.handle();
        let boot_times = vmm.boot_times();
        let (done, done_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("creating a pipe: {e}"))?;
        let result = Arc::new(Mutex::new(None));
        let slot = result.clone();
        let thread = std::thread::Builder::new()
            .name("vm".into())
            .spawn(move || {
                let outcome = vmm.run().map_err(|e| e.to_string());
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                let _ = std::fs::File::from(done_write).write_all(b"x");
            })
            .map_err(|e| format!("starting the VM thread: {e}"))?;
        Ok(RunningVm {
            handle,
            done,
            result,
            thread: Some(thread),
            console,
            boot_times,
        })
    }

    /// How the VM stands now.
    fn ending(&self) -> Ending {
        match &*self.result.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ending::Running,
            Some(Ok(_)) => Ending::Stopped,
            Some(Err(error)) => Ending::Failed(error.clone()),
        }
    }

    /// Explains why the guest did not do `waiting_for`.
    fn explain(&self, waiting_for: &str) -> String {
        // A guest that just died needs a moment for its VMM thread to notice.
        let _ = twinbox_protocol::wait_readable(
            self.done.as_raw_fd(),
            Some(Duration::from_millis(500)),
        );
        diagnose::explain(waiting_for, &self.ending(), &self.console)
    }

    /// Waits up to `timeout` for the guest to stop on its own, then stops it.
    fn finish(mut self, timeout: Duration) {
        let stopped =
            twinbox_protocol::wait_readable(self.done.as_raw_fd(), Some(timeout)).unwrap_or(false);
        if !stopped {
            tracing::warn!("the guest did not power off within {timeout:?}; stopping it");
            self.handle.stop();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the init; returns its exit code (the workload's).
pub fn main(config_path: &Path) -> i32 {
    let mut phases = BootPhases::default();
    phases.mark_now(Milestone::VmmStarted);
    let vm_dir = config_path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let notify_path = vm_dir.join(NOTIFY_SOCKET);
    let fail = |failure: Failure| {
        notify::send(
            &notify_path,
            &Notice::Failed {
                code: failure.code,
                message: failure.message,
            },
        );
        failure.code
    };
    let config: InitConfig = match std::fs::read(config_path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_slice(&text).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(error) => {
            return fail(Failure::new(
                1,
                format!("reading {}: {error}", config_path.display()),
            ));
        }
    };
    let signals = match Signals::block() {
        Ok(signals) => signals,
        Err(error) => return fail(Failure::new(1, format!("setting up signals: {error}"))),
    };
    let listener_path = vm_dir.join(format!("{VSOCK_SOCKET}_{HOST_PORT}"));
    let _ = std::fs::remove_file(&listener_path);
    let listener = match UnixListener::bind(&listener_path) {
        Ok(listener) => listener,
        Err(error) => return fail(Failure::new(1, format!("listening for the agent: {error}"))),
    };
    let started = Instant::now();
    let vm = match RunningVm::start(&config, &vm_dir) {
        Ok(vm) => vm,
        Err(error) => return fail(Failure::new(1, format!("cannot start the VM: {error}"))),
    };
    let booted = boot(&config, &vm, &listener, &signals, &mut phases);
    drop(listener);
    let _ = std::fs::remove_file(&listener_path);
    let conn = match booted {
        Ok(conn) => conn,
        Err(failure) => {
            vm.finish(Duration::ZERO);
            return fail(failure);
        }
    };
    tracing::info!(
        "workload created {:.1} ms after the VMM started",
        started.elapsed().as_secs_f64() * 1e3
    );
    if let Some(entered) = vm.boot_times.entered() {
        phases.mark(Milestone::VmEntered, entered);
    }
    if let Some(mark) = vm.boot_times.first() {
        phases.mark(Milestone::KernelBooted, mark.monotonic);
    }
    phases.write(&vm_dir);
    notify::send(&notify_path, &Notice::Ready);
    let terminal = config
        .request
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    run(
        conn,
        vm,
        &signals,
        terminal,
        &config.sync_dirs,
        config.request.start,
    )
}

/// The signals that end the wait for a guest that is not ready yet.
fn is_stop_signal(signal: i32) -> bool {
    !matches!(
        signal,
        libc::SIGWINCH | libc::SIGCONT | libc::SIGURG | libc::SIGCHLD
    )
}

/// Waits for the agent, checks its version, and has it create the workload; marks when the
/// agent was ready and the workload created in `phases`.
fn boot(
    config: &InitConfig,
    vm: &RunningVm,
    listener: &UnixListener,
    signals: &Signals,
    phases: &mut BootPhases,
) -> Result<Connection<UnixStream>, Failure> {
    let timeout = Duration::from_millis(config.boot_timeout_ms);
    let deadline = Instant::now() + timeout;
    let waiting = "the guest agent to connect";
    let stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::new(
                1,
                format!("after {timeout:?}: {}", vm.explain(waiting)),
            ));
        }
        let mut fds = [
            listener.as_raw_fd(),
            vm.done.as_raw_fd(),
            signals.fd().as_raw_fd(),
        ]
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: a valid array of three pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 3, left.as_millis().max(1) as i32) };
        if fds[2].revents != 0
            && let Some(signal) = signals.take().into_iter().find(|s| is_stop_signal(*s))
        {
            return Err(Failure::new(
                128 + signal,
                format!("stopped by signal {signal} while the VM booted"),
            ));
        }
        if fds[1].revents != 0 {
            return Err(Failure::new(1, vm.explain(waiting)));
        }
        if fds[0].revents != 0 {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(error) => tracing::warn!("accepting the agent's connection: {error}"),
            }
        }
    };
    let mut conn = Connection::new(stream);
    let lost = |vm: &RunningVm, error: ProtocolError, what: &str| {
        Failure::new(
            1,
            format!(
                "{what}: {error}; {}",
                vm.explain("the guest agent's answer")
            ),
        )
    };
    let mut request = config.request.clone();
    request.host_time_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    request.entropy = Some(crate::engine::random_bytes(GUEST_ENTROPY_BYTES));
    match conn.open(
        &super::host_software(),
        &Message::Create(Box::new(request)),
        REPLY_TIMEOUT,
    ) {
        Ok(_) => phases.mark_now(Milestone::AgentReady),
        Err(ProtocolError::VersionMismatch {
            ours,
            theirs,
            software,
        }) => {
            let age = if theirs < ours { "older" } else { "newer" };
            return Err(Failure::new(
                1,
                format!(
                    "the guest agent ({software}) speaks protocol version {theirs}, this twinbox \
                     speaks version {ours}: the agent is {age} than twinbox; install the \
                     twinbox-agent built with this twinbox (or set `[vm] agent` in the config file)"
                ),
            ));
        }
        Err(error) => return Err(lost(vm, error, "the guest agent's hello failed")),
    }
    match conn.recv_message(Some(REPLY_TIMEOUT)) {
        Ok(Message::Created { pid }) => {
            phases.mark_now(Milestone::WorkloadCreated);
            tracing::debug!(pid, "the guest created the workload");
            Ok(conn)
        }
        Ok(Message::Error(error)) => Err(Failure::new(error.exit_code(), error.message)),
        Ok(other) => Err(Failure::new(
            1,
            format!("the guest agent answered {} to create", other.name()),
        )),
        Err(error) => Err(lost(vm, error, "creating the workload in the guest")),
    }
}

/// Starts a thread that blocks opening the exec fifo for writing (until `twinbox start`
/// opens it for reading), writes one byte to it, then makes the returned descriptor readable.
fn wait_for_start() -> std::io::Result<OwnedFd> {
    let (ready, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    std::thread::Builder::new()
        .name("start".into())
        .spawn(move || {
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .open(paths::EXEC_FIFO)
                .and_then(|mut fifo| fifo.write_all(b"0"));
            if let Err(error) = opened {
                tracing::warn!("waiting on the exec fifo: {error}");
            }
            let _ = std::fs::File::from(ready_write).write_all(b"s");
        })?;
    Ok(ready)
}

/// Writes the changes of volume `index` that follow on `conn` to its host directory.
fn write_volume_changes(
    conn: &mut Connection<UnixStream>,
    index: u32,
    sync_dirs: &[(u32, PathBuf)],
) {
    let mut archive = ArchiveReader::new(conn);
    let Some((_, dir)) = sync_dirs.iter().find(|(i, _)| *i == index) else {
        tracing::warn!("the guest sent changes of volume {index}, which has no host directory");
        let _ = archive.discard();
        return;
    };
    match apply_layer(&mut archive, dir, WhiteoutMode::Apply) {
        Ok(stats) => tracing::debug!(
            index,
            entries = stats.entries,
            "volume changes written back"
        ),
        Err(error) => eprintln!(
            "twinbox: writing the changes of volume {index} back to its directory failed: {error}"
        ),
    }
    let _ = archive.discard();
}

/// After the workload is created: start on `twinbox start`, relay until it exits, write the
/// volume changes, let the guest power off. Returns the exit code.
fn run(
    mut conn: Connection<UnixStream>,
    vm: RunningVm,
    signals: &Signals,
    terminal: bool,
    sync_dirs: &[(u32, PathBuf)],
    started_on_create: bool,
) -> i32 {
    let (terminal, mut relay) = match hostio::attach(&mut conn, terminal) {
        Ok(attached) => attached,
        Err(error) => {
            eprintln!("twinbox: relaying stdio: {error}");
            vm.finish(Duration::ZERO);
            return 1;
        }
    };
    let mut start = match wait_for_start() {
        Ok(start) => Some(start),
        Err(error) => {
            eprintln!("twinbox: waiting for start: {error}");
            vm.finish(Duration::ZERO);
            return 1;
        }
    };
    let mut exit: Option<ExitStatus> = None;
    let mut guest_failure = None;
    loop {
        let mut extra: Vec<BorrowedFd<'_>> = vec![signals.fd(), vm.done.as_fd()];
        if let Some(start) = &start {
            extra.push(start.as_fd());
        }
        let events = match relay.poll(&mut conn, &extra, None) {
            Ok(events) => events,
            Err(error) => {
                if exit.is_none() {
                    guest_failure = Some(format!("the guest agent's connection failed ({error})"));
                }
                break;
            }
        };
        let mut done = false;
        for event in events {
            match event {
                Event::Extra(0) => {
                    if let Err(error) = hostio::forward_signals(signals, &terminal, &mut conn) {
                        tracing::warn!("forwarding signals: {error}");
                    }
                }
                Event::Extra(1) => {
                    if exit.is_none() {
                        guest_failure = Some(String::new());
                    }
                    done = true;
                }
                Event::Extra(_) => {
                    start = None;
                    if !started_on_create && let Err(error) = conn.send(&Message::Start) {
                        tracing::warn!("sending start: {error}");
                    }
                }
                Event::Message(Message::Exit(status)) => exit = Some(status),
                Event::Message(Message::VolumeChanges { index }) => {
                    write_volume_changes(&mut conn, index, sync_dirs)
                }
                Event::Message(Message::Done) => done = true,
                Event::Message(Message::Error(error)) => eprintln!("twinbox: {error}"),
                Event::Message(other) => {
                    tracing::debug!("ignoring {} from the guest", other.name())
                }
            }
        }
        if done {
            break;
        }
    }
    relay.flush(FLUSH_TIMEOUT);
    drop(terminal);
    if started_on_create && let Some(start) = &start {
        // `run` started the workload with its creation and calls `start` next: stay until
        // it has, so it finds the container created, not gone.
        let _ = twinbox_protocol::wait_readable(start.as_raw_fd(), Some(START_GRACE));
    }
    let code = match (exit, guest_failure) {
        (Some(status), _) => status.code,
        (None, reason) => {
            let detail = vm.explain("the workload to exit");
            // A connection that broke because the VM died needs no mention of its own.
            match reason.filter(|r| !r.is_empty() && vm.ending() == Ending::Running) {
                Some(reason) => eprintln!("twinbox: {reason}; {detail}"),
                None => eprintln!("twinbox: {detail}"),
            }
            GUEST_DIED
        }
    };
    vm.finish(POWER_OFF_TIMEOUT);
    code
}
