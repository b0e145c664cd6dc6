//! PID 1: boot, open the main session to the host, serve request sessions, reap orphans, and
//! power the VM off when the main session ends.
//!
//! PID 1 stays single-threaded and does no session work itself: each session runs in a
//! forked process (the container setup clones without `exec`, which is only safe in a
//! single-threaded process, and a stuck session must not block the others).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use twinbox_protocol::transport::{accept, vsock_connect, vsock_listen};
use twinbox_protocol::{AGENT_PORT, HOST_CID, HOST_PORT};

use crate::boot;
use crate::session::child_signals;

/// How often and how long PID 1 tries to reach the host (the vsock device may still be
/// settling right after boot).
const CONNECT_ATTEMPTS: u32 = 200;
const CONNECT_INTERVAL: Duration = Duration::from_millis(10);

/// Prints why the guest cannot go on and powers off; the host reads the reason from the
/// console.
fn fatal(message: &str) -> ! {
    eprintln!("twinbox-agent: {message}; powering off");
    boot::power_off()
}

fn connect_host() -> std::io::Result<File> {
    let mut attempt = 0;
    loop {
        match vsock_connect(HOST_CID, HOST_PORT) {
            Ok(conn) => return Ok(conn),
            Err(error) if attempt + 1 >= CONNECT_ATTEMPTS => return Err(error),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(CONNECT_INTERVAL);
            }
        }
    }
}

/// Runs `serve` in a child process and returns its pid.
fn fork_session(conn: File, closing: &[&dyn AsRawFd], serve: fn(File) -> i32) -> nix::Result<Pid> {
    // SAFETY: PID 1 is single-threaded, so the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            for fd in closing {
                // SAFETY: closing PID 1's descriptors in the child, which never uses them.
                unsafe { libc::close(fd.as_raw_fd()) };
            }
            let code = serve(conn);
            // SAFETY: leaving the forked child without running PID 1's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// The environment variable (from the kernel command line's `twinbox_template=1`) that
/// marks a template boot: the host snapshots the VM once the agent is ready for a host.
const TEMPLATE_ENV: &str = "twinbox_template";

/// PID 1's whole life.
pub fn run() -> ! {
    boot::signal_boot_timer();
    let listener = vsock_listen(AGENT_PORT)
        .unwrap_or_else(|e| fatal(&format!("cannot listen on vsock port {AGENT_PORT}: {e}")));
    let template = std::env::var_os(TEMPLATE_ENV).is_some();
    if template {
        // A template does everything that needs no host before its snapshot: each VM
        // restored from it starts here, ready to reach its host.
        prepare();
        boot::request_snapshot();
    }
    // Reach the host first: its hello and create request travel while the API filesystems
    // are mounted.
    let main = connect_host().unwrap_or_else(|e| {
        fatal(&format!(
            "cannot reach the host on vsock port {HOST_PORT}: {e} (does the VM have a vsock device?)"
        ))
    });
    if !template {
        prepare();
    }
    let signals = child_signals().unwrap_or_else(|e| fatal(&e.to_string()));
    let main_session = fork_session(main, &[&listener, &signals], crate::workload::serve)
        .unwrap_or_else(|e| fatal(&format!("cannot start the main session: {e}")));
    serve_requests(&listener, &signals, main_session);
    // The main session ended: the workload is done. Stop what is left and power off.
    // SAFETY: kill(-1) signals every process but PID 1 itself.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap_all(None);
    boot::power_off()
}

/// The guest's own setup: the API filesystems and the host name.
fn prepare() {
    if let Err(error) = boot::mount_api_filesystems() {
        fatal(&format!("early boot failed: {error}"));
    }
    let _ = nix::unistd::sethostname("twinbox");
}

/// Accepts request sessions until the main session's process exits.
fn serve_requests(listener: &OwnedFd, signals: &SignalFd, main_session: Pid) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: a valid array of two pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            while let Ok(Some(_)) = signals.read_signal() {}
            if reap_all(Some(main_session)) {
                return;
            }
        }
        if fds[0].revents != 0 {
            match accept(listener) {
                Ok(conn) => {
                    if let Err(error) =
                        fork_session(conn, &[listener, signals], crate::request::serve)
                    {
                        eprintln!("twinbox-agent: cannot start a request session: {error}");
                    }
                }
                Err(error) => eprintln!("twinbox-agent: accepting a request: {error}"),
            }
        }
    }
}

/// Reaps every exited child; true if `watched` was among them.
fn reap_all(watched: Option<Pid>) -> bool {
    let mut seen = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return seen,
            Ok(status) => {
                if status.pid() == watched {
                    seen = true;
                }
            }
        }
    }
}
