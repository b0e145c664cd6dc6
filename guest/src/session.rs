//! Running one process over a session, shared by the workload (main session) and exec
//! (request sessions): its stdio as pipes or a terminal, the relay, signals, resizes, and
//! waiting for it to exit.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use twinbox_protocol::{
    AgentError, Connection, ErrorKind, Event, ExitStatus, Message, ProtocolError, Relay, Stream,
};
use twinbox_sandbox::cgroups::Cgroup;
use twinbox_sandbox::launch::LaunchError;

/// A session connection.
pub type Conn = Connection<File>;

/// The agent's name and version in hellos.
pub const SOFTWARE: &str = concat!("twinbox-agent ", env!("CARGO_PKG_VERSION"));

/// How long the process's output is still forwarded after it exited (a leftover background
/// process may hold its pipes open).
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// The workload's cgroup in the guest (cgroup2 at /sys/fs/cgroup).
pub const WORKLOAD_CGROUP: &str = "/workload";

/// The workload's cgroup.
pub fn workload_cgroup() -> Result<Cgroup, AgentError> {
    Cgroup::discover(Path::new(WORKLOAD_CGROUP)).map_err(failed("finding the workload cgroup"))
}

/// An error constructor for `map_err`: `what: error`.
pub fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> AgentError + '_ {
    move |error| AgentError::new(ErrorKind::Failed, format!("{what}: {error}"))
}

/// A launch failure as the host should see it (127/126 for a missing or non-executable
/// program).
pub fn launch_error(error: LaunchError) -> AgentError {
    let kind = match error.exit_code() {
        127 => ErrorKind::NotFound,
        126 => ErrorKind::NotExecutable,
        _ => ErrorKind::Failed,
    };
    AgentError::new(kind, error.to_string())
}

/// The process's stdio before it is spawned: what it gets, and what the relay keeps.
pub enum Stdio {
    /// Three pipes.
    Pipes {
        /// stdin (read end), stdout and stderr (write ends) for the process.
        child: Option<[OwnedFd; 3]>,
        /// stdin (write end), stdout and stderr (read ends) for the relay.
        ours: [OwnedFd; 3],
    },
    /// A terminal: the process's setup creates a pty and sends its master back.
    Terminal {
        /// The console socket end the process setup sends the master to.
        child: Option<OwnedFd>,
        /// Our end.
        ours: UnixStream,
    },
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

impl Stdio {
    /// New stdio for a process with or without a terminal.
    pub fn new(terminal: bool) -> Result<Self, AgentError> {
        let make = || -> std::io::Result<Stdio> {
            if terminal {
                let (ours, child) = UnixStream::pair()?;
                return Ok(Stdio::Terminal {
                    child: Some(child.into()),
                    ours,
                });
            }
            let (stdin_read, stdin_write) = pipe()?;
            let (stdout_read, stdout_write) = pipe()?;
            let (stderr_read, stderr_write) = pipe()?;
            Ok(Stdio::Pipes {
                child: Some([stdin_read, stdout_write, stderr_write]),
                ours: [stdin_write, stdout_read, stderr_read],
            })
        };
        make().map_err(failed("creating the process's stdio"))
    }

    /// The pipes for the process (None with a terminal).
    pub fn child_pipes(&mut self) -> Option<[OwnedFd; 3]> {
        match self {
            Stdio::Pipes { child, .. } => child.take(),
            Stdio::Terminal { .. } => None,
        }
    }

    /// The console socket for the process setup (None without a terminal).
    pub fn console_socket(&mut self) -> Option<OwnedFd> {
        match self {
            Stdio::Terminal { child, .. } => child.take(),
            Stdio::Pipes { .. } => None,
        }
    }

    /// After the spawn: the relay over our ends, and the terminal's master (for resizes).
    pub fn into_relay(self) -> Result<(Relay, Option<OwnedFd>), AgentError> {
        let mut relay = Relay::new();
        match self {
            Stdio::Pipes {
                ours: [stdin, stdout, stderr],
                ..
            } => {
                relay.source(stdout, Stream::Stdout);
                relay.source(stderr, Stream::Stderr);
                relay
                    .sink(Stream::Stdin, stdin, true)
                    .map_err(failed("relaying stdin"))?;
                Ok((relay, None))
            }
            Stdio::Terminal { ours, .. } => {
                let master = twinbox_sandbox::launch::receive_fd(ours.as_fd())
                    .map_err(failed("receiving the terminal"))?;
                let clone = |m: &OwnedFd| m.try_clone().map_err(failed("sharing the terminal"));
                relay.source(clone(&master)?, Stream::Stdout);
                // The peer's end of input must not hang up the terminal.
                relay
                    .sink(Stream::Stdin, clone(&master)?, false)
                    .map_err(failed("relaying the terminal"))?;
                Ok((relay, Some(master)))
            }
        }
    }
}

/// A signalfd for SIGCHLD (which PID 1 blocks for every process it forks).
pub fn child_signals() -> Result<SignalFd, AgentError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(failed("blocking SIGCHLD"))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(failed("creating a signalfd"))
}

/// Reaps every exited child; returns the status of `target` if it was among them.
pub fn reap(target: i32) -> Option<ExitStatus> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == target => {
                found = Some(ExitStatus { code, signal: None });
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid.as_raw() == target => {
                found = Some(ExitStatus {
                    code: 128 + signal as i32,
                    signal: Some(signal as i32),
                });
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(_) => {}
        }
    }
}

/// Sends `signal` to `pid`, or with `all` to every process of the workload's cgroup.
pub fn send_signal(pid: i32, signal: i32, all: bool) -> Result<(), AgentError> {
    if all {
        return workload_cgroup()?
            .signal_all(signal)
            .map_err(failed("signalling the workload"));
    }
    // SAFETY: kill(2) with plain integers.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            return Err(failed("sending the signal")(error));
        }
    }
    Ok(())
}

/// Sets the terminal's size.
fn resize(master: &OwnedFd, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a pty master we own.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
}

/// What the session-specific handler decided about a message.
pub enum Flow {
    /// Keep going.
    Continue,
    /// The host asked to stop everything.
    Shutdown,
}

/// A running process and its relay.
pub struct Supervised {
    /// Its pid in the guest.
    pub pid: i32,
    /// Its stdio relay.
    pub relay: Relay,
    /// Its terminal's master, if it has one.
    pub master: Option<OwnedFd>,
}

impl Supervised {
    /// Relays until the process exits, handling signals and resizes; other messages go to
    /// `handle`. Returns its exit status after forwarding the rest of its output, or `None`
    /// when the host asked to shut down.
    pub fn run(
        &mut self,
        conn: &mut Conn,
        signals: &SignalFd,
        mut handle: impl FnMut(&Message, &mut Conn) -> Result<Flow, ProtocolError>,
    ) -> Result<Option<ExitStatus>, ProtocolError> {
        loop {
            let mut exited = None;
            for event in self.relay.poll(conn, &[signals.as_fd()], None)? {
                match event {
                    Event::Extra(_) => {
                        while let Ok(Some(_)) = signals.read_signal() {}
                        if let Some(status) = reap(self.pid) {
                            exited = Some(status);
                        }
                    }
                    Event::Message(Message::Signal { signal, all }) => {
                        if let Err(error) = send_signal(self.pid, signal, all) {
                            eprintln!("twinbox-agent: {error}");
                        }
                    }
                    Event::Message(Message::Resize { rows, cols }) => {
                        if let Some(master) = &self.master {
                            resize(master, rows, cols);
                        }
                    }
                    Event::Message(other) => {
                        if let Flow::Shutdown = handle(&other, conn)? {
                            return Ok(None);
                        }
                    }
                }
            }
            if let Some(status) = exited {
                self.relay.drain(conn, DRAIN_LIMIT)?;
                return Ok(Some(status));
            }
        }
    }
}

/// Sends an error reply, ignoring a broken connection (there is nobody to tell then).
pub fn reply_error(conn: &mut Conn, error: AgentError) {
    if conn.send(&Message::Error(error.clone())).is_err() {
        eprintln!("twinbox-agent: {error}");
    }
}
