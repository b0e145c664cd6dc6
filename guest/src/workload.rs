//! The main session: set up the sandbox from the host's create request, create the workload
//! with twinbox's container setup (stopped before its program), start it on request, relay
//! its stdio and signals, report its exit and the changes it made to volumes.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::stat::Mode;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use twinbox_protocol::{
    AGENT_RUN_DIR, AgentError, ArchiveWriter, Connection, CreateRequest, ErrorKind, Message,
    ProtocolError, REPLY_TIMEOUT, volume_dir,
};
use twinbox_sandbox::launch::{InitOptions, InitSetup, NoHooks, spawn_init};

use crate::rootfs::{self, Layout};
use crate::session::{
    Conn, Flow, SOFTWARE, Stdio, Supervised, child_signals, failed, launch_error, reply_error,
    send_signal, workload_cgroup,
};
use crate::volumes::Snapshot;

/// What request sessions need to know about the workload (written once it exists).
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// The workload init's pid in the guest.
    pub pid: i32,
    /// The spec as the guest applies it.
    pub spec: Spec,
    /// Its seccomp profile compiled by the host, for exec'd processes too (base64, which
    /// every exec parses faster than an array of numbers).
    #[serde(default, with = "twinbox_protocol::base64_bytes")]
    pub seccomp_program: Option<Vec<u8>>,
}

/// Hands the host's compiled seccomp program for `spec`'s profile to the container setup, so
/// that neither the workload nor an exec'd process compiles the profile in the guest.
pub fn provide_seccomp_program(spec: &Spec, program: Option<&[u8]>) {
    let profile = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    if let (Some(program), Some(profile)) = (program, profile)
        && let Err(error) = twinbox_sandbox::seccomp::provide_program(profile, program.to_vec())
    {
        // Compiling it here instead is slower, not wrong.
        eprintln!("twinbox-agent: the host's seccomp program: {error}");
    }
}

/// Where [`WorkloadRecord`] is kept.
pub fn record_path() -> PathBuf {
    Path::new(AGENT_RUN_DIR).join("workload.json")
}

impl WorkloadRecord {
    /// The record of the created workload.
    pub fn load() -> Result<Self, AgentError> {
        let text = std::fs::read(record_path()).map_err(|_| {
            AgentError::new(ErrorKind::Invalid, "the workload has not been created yet")
        })?;
        serde_json::from_slice(&text).map_err(failed("reading the workload record"))
    }
}

/// How long `start` waits for the workload's init to take the start signal.
const START_TIMEOUT: Duration = Duration::from_secs(10);

struct Workload {
    process: Supervised,
    exec_fifo: PathBuf,
    volumes: Vec<(u32, Snapshot)>,
}

/// Serves the main session on `conn`; returns the handler's exit code. When it returns, PID
/// 1 powers the VM off.
pub fn serve(conn: File) -> i32 {
    let mut conn = Connection::new(conn);
    if let Err(error) = conn.handshake(SOFTWARE, REPLY_TIMEOUT) {
        eprintln!("twinbox-agent: the host's hello failed: {error}");
        return 1;
    }
    let request = match conn.recv_message(Some(REPLY_TIMEOUT)) {
        Ok(Message::Create(request)) => request,
        Ok(Message::Shutdown) => return 0,
        Ok(other) => {
            reply_error(
                &mut conn,
                AgentError::new(
                    ErrorKind::Invalid,
                    format!("expected create, got {}", other.name()),
                ),
            );
            return 1;
        }
        Err(error) => {
            eprintln!("twinbox-agent: no create request: {error}");
            return 1;
        }
    };
    let signals = match child_signals() {
        Ok(signals) => signals,
        Err(error) => {
            reply_error(&mut conn, error);
            return 1;
        }
    };
    let mut workload = match create(&request) {
        Ok(workload) => workload,
        Err(error) => {
            reply_error(&mut conn, error);
            return 1;
        }
    };
    match run(&mut conn, &mut workload, &signals, request.start) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("twinbox-agent: main session: {error}");
            // Nobody can use the workload any more.
            let _ = send_signal(workload.process.pid, libc::SIGKILL, true);
            1
        }
    }
}

fn run(
    conn: &mut Conn,
    workload: &mut Workload,
    signals: &nix::sys::signalfd::SignalFd,
    start_now: bool,
) -> Result<(), ProtocolError> {
    conn.send(&Message::Created {
        pid: workload.process.pid,
    })?;
    let exec_fifo = workload.exec_fifo.clone();
    let pid = workload.process.pid;
    let start = |conn: &mut Conn| {
        if let Err(error) = release(&exec_fifo) {
            // The init is gone or stuck: make sure it is gone; its exit ends the session.
            let _ = send_signal(pid, libc::SIGKILL, true);
            reply_error(conn, error);
        }
    };
    if start_now {
        start(conn);
    }
    let status = workload
        .process
        .run(conn, signals, |message, conn| match message {
            Message::Start => {
                start(conn);
                Ok(Flow::Continue)
            }
            Message::Shutdown => Ok(Flow::Shutdown),
            other => {
                eprintln!(
                    "twinbox-agent: ignoring {} in the main session",
                    other.name()
                );
                Ok(Flow::Continue)
            }
        })?;
    let Some(status) = status else {
        let _ = send_signal(pid, libc::SIGKILL, true);
        return Ok(());
    };
    conn.send(&Message::Exit(status))?;
    for (index, snapshot) in &workload.volumes {
        conn.send(&Message::VolumeChanges { index: *index })?;
        let mut writer = ArchiveWriter::new(conn);
        if let Err(error) = snapshot.write_changes(&mut writer) {
            eprintln!("twinbox-agent: collecting the changes of volume {index}: {error}");
        }
        writer.finish().map_err(ProtocolError::Io)?;
    }
    conn.send(&Message::Done)
}

/// Sets up the sandbox and creates the workload, stopped on its exec fifo.
fn create(request: &CreateRequest) -> Result<Workload, AgentError> {
    rootfs::set_clock(request.host_time_ns);
    if let Some(entropy) = &request.entropy {
        // A clone of a template must not share its random numbers with the others.
        crate::boot::reseed_random(entropy)
            .map_err(failed("reseeding the guest's random generator"))?;
    }
    let layout = Layout::standard();
    let root = rootfs::assemble_rootfs(&request.rootfs, &layout)?;
    rootfs::mount_volumes(&request.volumes)?;
    rootfs::write_files(request)?;
    let mut volumes = Vec::new();
    for (index, volume) in request.volumes.iter().enumerate() {
        if volume.sync_back {
            let snapshot = Snapshot::take(Path::new(&volume_dir(index)))
                .map_err(failed(&format!("listing volume {index}")))?;
            volumes.push((index as u32, snapshot));
        }
    }
    rootfs::create_cwd(&request.spec, &root)?;
    let spec = rootfs::guest_spec(request.spec.clone(), &root)?;
    provide_seccomp_program(&spec, request.seccomp_program.as_deref());
    let cgroup = workload_cgroup()?;
    cgroup
        .create()
        .map_err(failed("creating the workload cgroup"))?;
    if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        cgroup
            .apply(resources)
            .map_err(failed("applying the workload's limits"))?;
    }
    let exec_fifo = Path::new(AGENT_RUN_DIR).join("exec.fifo");
    nix::unistd::mkfifo(&exec_fifo, Mode::from_bits_truncate(0o600))
        .map_err(failed("creating the exec fifo"))?;
    // The workload's init opens it for writing after it took the workload's user.
    std::fs::set_permissions(&exec_fifo, std::fs::Permissions::from_mode(0o622))
        .map_err(failed("making the exec fifo writable"))?;
    let fifo_handle: OwnedFd = nix::fcntl::open(
        &exec_fifo,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed("opening the exec fifo"))?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let mut stdio = Stdio::new(terminal)?;
    // Orphans of a workload without its own pid namespace are reaped here.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let setup = InitSetup::new(
        &spec,
        &root,
        Some(&cgroup),
        InitOptions {
            no_pivot: false,
            session_keyring: None,
            exec_fifo: Some(fifo_handle),
            console_socket: stdio.console_socket(),
            preserve_fds: 0,
            stdio: stdio.child_pipes(),
        },
    )
    .map_err(launch_error)?;
    let pid = spawn_init(setup, Some(&cgroup), &mut NoHooks).map_err(launch_error)?;
    let (relay, master) = stdio.into_relay()?;
    let record = WorkloadRecord {
        pid,
        spec,
        seccomp_program: request.seccomp_program.clone(),
    };
    let text = serde_json::to_vec(&record).map_err(failed("recording the workload"))?;
    std::fs::write(record_path(), text).map_err(failed("recording the workload"))?;
    Ok(Workload {
        process: Supervised { pid, relay, master },
        exec_fifo,
        volumes,
    })
}

/// Lets the workload's init run its program: it waits in `open` of the fifo for writing.
fn release(fifo: &Path) -> Result<(), AgentError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .map_err(failed("opening the exec fifo"))?;
    let ready = twinbox_protocol::wait_readable(file.as_raw_fd(), Some(START_TIMEOUT))
        .map_err(failed("waiting for the workload's init"))?;
    if !ready {
        return Err(AgentError::new(
            ErrorKind::Failed,
            format!("the workload's init did not take the start signal within {START_TIMEOUT:?}"),
        ));
    }
    let mut byte = [0u8; 1];
    let _ = std::io::Read::read(&mut &file, &mut byte);
    let _ = std::fs::remove_file(fifo);
    Ok(())
}
