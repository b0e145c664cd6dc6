//! The monitor of a detached container: the one process a `run -d` leaves on the host.
//!
//! `run -d` forks; the child starts a new session, creates and starts the container (so the
//! container's init is its child), reports success or the error to the parent over a pipe,
//! and then re-executes the twinbox binary as `twinbox __monitor ...` to drop everything
//! setup needed (the fresh image touches only the monitor loop: a small RSS). The monitor
//! copies the container's stdout and stderr into the log file, reaps the init, records the
//! exit status and, with `--rm`, removes the container. It holds no lock and no state that
//! matters: killed, it leaves a running container whose exit code is unknown, which `ps -a`
//! shows as such and `rm -f` removes.

use std::ffi::{CString, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use oci_spec::runtime::Spec;

use super::logs::{Stream, encode};
use super::run::{Setup, dev_null, receive_pty};
use super::{Engine, EngineError, ExitRecord, RunRequest};
use crate::state::{RunRoot, rfc3339_now};

/// The hidden first argument that makes `twinbox` a monitor.
pub const MONITOR_ARG: &str = "__monitor";

/// What the monitor watches (its command line after [`MONITOR_ARG`]).
#[derive(Debug, Default)]
pub struct Watch {
    run_root: PathBuf,
    store_root: PathBuf,
    id: String,
    init_pid: i32,
    log: PathBuf,
    auto_remove: bool,
    outputs: Vec<(OwnedFd, Stream)>,
    /// Kept open, never used (the write end of an `-i` container's stdin).
    hold: Vec<OwnedFd>,
}

impl Watch {
    fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            MONITOR_ARG.into(),
            format!("id={}", self.id).into(),
            format!("pid={}", self.init_pid).into(),
        ];
        for (key, path) in [
            ("run-root", &self.run_root),
            ("store", &self.store_root),
            ("log", &self.log),
        ] {
            let mut arg = OsString::from(format!("{key}="));
            arg.push(path);
            args.push(arg);
        }
        for (fd, stream) in &self.outputs {
            let key = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            args.push(format!("{key}={}", fd.as_raw_fd()).into());
        }
        for fd in &self.hold {
            args.push(format!("hold={}", fd.as_raw_fd()).into());
        }
        if self.auto_remove {
            args.push("rm".into());
        }
        args
    }

    /// Parses the arguments after [`MONITOR_ARG`]; the fds named in them become ours.
    fn from_args(args: &[OsString]) -> Result<Watch, String> {
        let mut watch = Watch::default();
        for arg in args {
            let bytes = arg.as_bytes();
            if bytes == b"rm" {
                watch.auto_remove = true;
                continue;
            }
            let split = bytes
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| format!("bad monitor argument {arg:?}"))?;
            let (key, value) = (&bytes[..split], &bytes[split + 1..]);
            let text = || String::from_utf8_lossy(value).into_owned();
            let path = || PathBuf::from(std::ffi::OsStr::from_bytes(value));
            let fd = || -> Result<OwnedFd, String> {
                let raw: RawFd = text().parse().map_err(|_| format!("bad fd in {arg:?}"))?;
                // SAFETY: the parent passed this fd to us across execve and named it here;
                // nothing else in this process owns it.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            };
            match key {
                b"id" => watch.id = text(),
                b"pid" => watch.init_pid = text().parse().map_err(|_| "bad pid".to_string())?,
                b"run-root" => watch.run_root = path(),
                b"store" => watch.store_root = path(),
                b"log" => watch.log = path(),
                b"stdout" => watch.outputs.push((fd()?, Stream::Stdout)),
                b"stderr" => watch.outputs.push((fd()?, Stream::Stderr)),
                b"hold" => watch.hold.push(fd()?),
                _ => return Err(format!("unknown monitor argument {arg:?}")),
            }
        }
        if watch.id.is_empty() || watch.init_pid <= 0 {
            return Err("the monitor needs id= and pid=".into());
        }
        Ok(watch)
    }
}

/// Entry point of `twinbox __monitor ...`; returns the process exit code.
pub fn main(args: &[OsString]) -> i32 {
    match Watch::from_args(args) {
        Ok(watch) => {
            watch_container(watch);
            0
        }
        Err(err) => {
            eprintln!("twinbox: {err} (the monitor is started by `twinbox run -d`)");
            125
        }
    }
}

/// Starts the detached container of `setup` under a new monitor process; returns once it
/// runs (or with the error that prevented it).
pub(super) fn launch(
    setup: &mut Setup<'_>,
    request: &RunRequest,
    spec: Spec,
) -> Result<(), EngineError> {
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| EngineError::Monitor(format!("pipe: {e}")))?;
    // SAFETY: twinbox is single-threaded here (no runtime threads have been started), so
    // the child may run arbitrary code until it execs.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(EngineError::Monitor(format!("could not be forked: {e}"))),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(report_read);
            let code = become_monitor(setup, request, spec, report_write);
            // SAFETY: leaving the forked child without running the parent's destructors
            // (the parent still owns the setup guard).
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(report_write);
            let mut report = String::new();
            let _ = std::fs::File::from(report_read).read_to_string(&mut report);
            match report.split_once('\n') {
                Some(("0", _)) => {
                    setup.disarm();
                    Ok(())
                }
                Some((code, message)) => Err(EngineError::Detached {
                    code: code.parse().unwrap_or(125),
                    message: message.trim_end().to_string(),
                }),
                None => Err(EngineError::Monitor(
                    "died before the container was started".into(),
                )),
            }
        }
    }
}

/// In the forked child: create and start the container, report, then exec the monitor.
fn become_monitor(setup: &Setup<'_>, request: &RunRequest, spec: Spec, report: OwnedFd) -> i32 {
    let mut report = std::fs::File::from(report);
    // SAFETY: setsid has no arguments; a new session keeps the monitor out of the caller's
    // terminal job control (Ctrl-C in the shell must not reach it).
    unsafe { libc::setsid() };
    let _ = std::env::set_current_dir("/");
    let started = setup
        .engine
        .names()
        .adopt(&setup.name, &setup.id)
        .and_then(|()| start_detached(setup, request, spec));
    match started {
        Ok(watch) => {
            let _ = report.write_all(b"0\n");
            drop(report);
            if let Ok(null) = dev_null() {
                for target in 0..3 {
                    // SAFETY: dup2 of a valid fd onto our standard streams.
                    unsafe { libc::dup2(null.as_raw_fd(), target) };
                }
            }
            exec_monitor(&watch);
            // exec failed: watch from this process instead.
            watch_container(watch);
            0
        }
        Err(err) => {
            let _ = write!(report, "{}\n{err}", err.exit_code());
            1
        }
    }
}

/// Creates and starts the container with its outputs on pipes (or a pty) to the monitor.
fn start_detached(
    setup: &Setup<'_>,
    request: &RunRequest,
    spec: Spec,
) -> Result<Watch, EngineError> {
    let engine = setup.engine;
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| EngineError::Monitor(format!("pipe: {e}")))
    };
    // The log exists as soon as `run -d` returns, empty until the container writes.
    let log = engine.log_path(&setup.id);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(EngineError::io("creating the log", &log))?;
    let (mut builder, console) = engine.builder(setup, request, spec)?;
    let mut outputs = Vec::new();
    let mut hold = Vec::new();
    if console.is_none() {
        let stdin = if request.interactive {
            let (read, write) = pipe()?;
            hold.push(write);
            read
        } else {
            dev_null()?
        };
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        outputs.push((out_read, Stream::Stdout));
        outputs.push((err_read, Stream::Stderr));
        builder = builder.stdio([stdin, out_write, err_write]);
    }
    let mut container = builder.create()?;
    if let Some(master) = receive_pty(console.as_ref())? {
        // The master is both the output and (kept open) the input of the terminal.
        outputs.push((master, Stream::Stdout));
    }
    container.start()?;
    Ok(Watch {
        run_root: engine.run_root.path().to_path_buf(),
        store_root: engine.store_root.clone(),
        id: setup.id.clone(),
        init_pid: container.pid(),
        log,
        auto_remove: request.auto_remove,
        outputs,
        hold,
    })
}

/// Replaces this process with `twinbox __monitor ...` (same pid: the init stays our child).
/// Returns only if exec failed.
fn exec_monitor(watch: &Watch) {
    let fds = watch
        .outputs
        .iter()
        .map(|(fd, _)| fd)
        .chain(&watch.hold)
        .map(AsRawFd::as_raw_fd);
    for fd in fds {
        // SAFETY: clearing FD_CLOEXEC on our own open fd so the monitor inherits it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    let to_c = |arg: &std::ffi::OsStr| CString::new(arg.as_bytes()).ok();
    let program = c"/proc/self/exe";
    let mut args: Vec<CString> = vec![CString::from(c"twinbox")];
    args.extend(watch.to_args().iter().filter_map(|a| to_c(a)));
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: program and argv are NUL-terminated C strings that outlive the call;
    // `environ` is the process environment.
    unsafe {
        unsafe extern "C" {
            static environ: *const *const libc::c_char;
        }
        libc::execve(program.as_ptr(), argv.as_ptr(), environ);
    }
    tracing::warn!(
        "could not re-execute twinbox as the monitor ({}); monitoring from the forked process",
        io::Error::last_os_error()
    );
}

/// The monitor loop: log the outputs until the init exits, record how it ended, apply --rm.
fn watch_container(watch: Watch) {
    let Watch {
        run_root,
        store_root,
        id,
        init_pid,
        log,
        auto_remove,
        mut outputs,
        hold,
    } = watch;
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .ok();
    for (fd, _) in &outputs {
        set_nonblocking(fd.as_raw_fd());
    }
    // SAFETY: pidfd_open of our own child; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, init_pid, 0) };
    let pidfd = (pidfd >= 0).then(|| {
        // SAFETY: the kernel just returned this fd.
        unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    let mut record = Vec::new();
    shed_startup_pages();
    let mut copy = |fd: RawFd, stream: Stream, record: &mut Vec<u8>| -> bool {
        // Returns false at end of stream.
        loop {
            // SAFETY: reading into our buffer from an fd we own.
            let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
            if n > 0 {
                record.clear();
                encode(record, stream, &buffer[..n as usize]);
                if let Some(file) = &mut log_file {
                    let _ = file.write_all(record);
                }
                continue;
            }
            let err = io::Error::last_os_error();
            return n < 0 && matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR));
        }
    };
    loop {
        let mut fds: Vec<libc::pollfd> = outputs
            .iter()
            .map(|(fd, _)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        fds.push(libc::pollfd {
            fd: pidfd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        });
        // Without a pidfd, look at the child every 100 ms.
        let timeout = if pidfd.is_some() { -1 } else { 100 };
        // SAFETY: fds is a valid array of pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
        let mut closed = Vec::new();
        for (index, pfd) in fds[..outputs.len()].iter().enumerate() {
            if pfd.revents != 0 && !copy(pfd.fd, outputs[index].1, &mut record) {
                closed.push(index);
            }
        }
        for index in closed.into_iter().rev() {
            outputs.remove(index);
        }
        let exited = match &pidfd {
            Some(_) => fds.last().is_some_and(|p| p.revents != 0),
            None => !crate::state::ProcessIdentity::of(init_pid).is_some_and(|p| p.is_alive()),
        };
        if exited {
            break;
        }
    }
    let code = crate::lifecycle::wait_for_exit(init_pid).unwrap_or(-1);
    // Whatever is left in the pipes (the container's processes are gone now).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !outputs.is_empty() && std::time::Instant::now() < deadline {
        outputs.retain(|(fd, stream)| copy(fd.as_raw_fd(), *stream, &mut record));
        if !outputs.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    drop(hold);
    let engine = Engine::new(store_root, RunRoot::new(Some(&run_root)));
    let oom_killed = crate::lifecycle::Container::load(RunRoot::new(Some(&run_root)), &id)
        .is_ok_and(|c| c.oom_killed());
    let exit = ExitRecord {
        exit_code: code,
        finished_at: rfc3339_now(),
        oom_killed,
    };
    if let Err(err) = engine.record_exit(&id, &exit) {
        tracing::warn!("recording the exit of {id}: {err}");
    }
    if auto_remove && let Err(err) = engine.remove(&id, true, true) {
        tracing::warn!("removing {id}: {err}");
    }
}

/// Drops the page-table entries of the twinbox binary's read-only mappings that startup
/// touched, and keeps later faults from mapping neighbouring pages (fault-around): the
/// monitor then holds only the few pages its loop runs. The pages stay in the page cache;
/// this only keeps a long-lived monitor from pinning megabytes of a 50 MB binary in its RSS.
/// Mappings with anonymous (copied-on-write, e.g. relocated) pages are left alone.
fn shed_startup_pages() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode path".
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            current = first
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((
                        usize::from_str_radix(a, 16).ok()?,
                        usize::from_str_radix(b, 16).ok()?,
                    ))
                })
                .filter(|_| !perms.contains('w') && std::path::Path::new(path) == exe);
        } else if first == "Anonymous:"
            && fields.next() == Some("0")
            && let Some((start, end)) = current.take()
        {
            // SAFETY: a read-only, unmodified private file mapping of our own binary: dropping
            // its page-table entries is transparent (later accesses fault the same file pages
            // back in), and MADV_RANDOM only changes read-ahead.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: F_GETFL/F_SETFL on our own fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn arguments_round_trip() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let watch = Watch {
            run_root: "/run/x".into(),
            store_root: "/var/lib/a=b".into(),
            id: "abc".into(),
            init_pid: 42,
            log: "/var/lib/a=b/containers/abc/container.log".into(),
            auto_remove: true,
            outputs: vec![(read, Stream::Stderr)],
            hold: vec![write],
        };
        let args = watch.to_args();
        assert_eq!(args[0], MONITOR_ARG);
        let raw: Vec<RawFd> = watch
            .outputs
            .iter()
            .map(|(fd, _)| fd.as_raw_fd())
            .chain(watch.hold.iter().map(AsRawFd::as_raw_fd))
            .collect();
        // The parsed watch takes over the fds: give up ours first.
        let Watch { outputs, hold, .. } = watch;
        outputs.into_iter().for_each(|(fd, _)| {
            let _ = fd.into_raw_fd();
        });
        hold.into_iter().for_each(|fd| {
            let _ = fd.into_raw_fd();
        });
        let parsed = Watch::from_args(&args[1..]).unwrap();
        assert_eq!(parsed.id, "abc");
        assert_eq!(parsed.init_pid, 42);
        assert_eq!(parsed.store_root, PathBuf::from("/var/lib/a=b"));
        assert!(parsed.auto_remove);
        assert_eq!(parsed.outputs[0].0.as_raw_fd(), raw[0]);
        assert_eq!(parsed.outputs[0].1, Stream::Stderr);
        assert_eq!(parsed.hold[0].as_raw_fd(), raw[1]);
        assert!(Watch::from_args(&["bogus".into()]).is_err());
        assert!(Watch::from_args(&["id=x".into()]).is_err());
    }
}
