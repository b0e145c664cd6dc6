//! The host end of a guest process's stdio, shared by the VM's init and the exec relay: our
//! own stdin, stdout and stderr relayed over the session, the terminal in raw mode (the
//! guest's terminal does the line discipline), and the signals we forward.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use twinbox_protocol::{Connection, Message, ProtocolError, Relay, Stream};

/// The signals forwarded to the guest process: everything a user or supervisor sends, not
/// the ones that report the forwarder's own faults. SIGWINCH becomes a resize.
const FORWARDED: [Signal; 20] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGSTKFLT,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGWINCH,
    Signal::SIGIO,
    Signal::SIGPWR,
];

/// The forwarded signals, received through a signalfd.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the forwarded signals (and the real-time ones the VMM does not use) in the
    /// calling thread, so threads started later inherit the mask, and opens a signalfd for
    /// them. SIGPIPE is ignored: a closed output is an error on the write, not a signal.
    pub fn block() -> std::io::Result<Self> {
        // SAFETY: sigemptyset/sigaddset on a local set with valid signal numbers (the VMM
        // kicks its vCPUs with SIGRTMIN, which stays unblocked), then wrapped as initialised.
        let set = unsafe {
            let mut raw: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut raw);
            for signal in FORWARDED {
                libc::sigaddset(&mut raw, signal as libc::c_int);
            }
            for number in libc::SIGRTMIN() + 1..=libc::SIGRTMAX() {
                libc::sigaddset(&mut raw, number);
            }
            SigSet::from_sigset_t_unchecked(raw)
        };
        set.thread_block().map_err(std::io::Error::from)?;
        // SAFETY: ignoring SIGPIPE is always valid.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(std::io::Error::from)?;
        Ok(Signals { fd })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The signals received since the last call.
    pub fn take(&self) -> Vec<i32> {
        let mut signals = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            signals.push(info.ssi_signo as i32);
        }
        signals
    }
}

/// Our terminal in raw mode while a guest process uses it (restored on drop); nothing when
/// stdin is no terminal.
pub struct Terminal {
    saved: Option<Termios>,
}

impl Terminal {
    /// Puts stdin's terminal in raw mode if it is one.
    pub fn raw_if_tty() -> Self {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        Terminal { saved }
    }

    /// No terminal (the process has none, even if stdin happens to be one).
    pub fn none() -> Self {
        Terminal { saved: None }
    }

    /// Whether stdin is a terminal in raw mode for the guest.
    pub fn is_tty(&self) -> bool {
        self.saved.is_some()
    }

    /// The terminal's size as a resize message.
    pub fn resize_message(&self) -> Option<Message> {
        if !self.is_tty() {
            return None;
        }
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ with a valid winsize on stdin.
        let ok = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut size) } == 0;
        (ok && size.ws_row > 0).then_some(Message::Resize {
            rows: size.ws_row,
            cols: size.ws_col,
        })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: borrowing one of our standard descriptors for the duration of the call.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

/// A writer for our descriptor `fd` that does not change the flags of a description we
/// share with other processes (a terminal, a pipe): pipes, fifos, terminals and character
/// devices are reopened into a private, non-blocking description; files and sockets are
/// written with blocking writes.
fn add_output(relay: &mut Relay, stream: Stream, fd: RawFd) -> std::io::Result<()> {
    let shared = dup(fd)?;
    let mut stat: libc::stat = zeroed_stat();
    // SAFETY: fstat into a valid stat buffer.
    if unsafe { libc::fstat(shared.as_raw_fd(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let kind = stat.st_mode & libc::S_IFMT;
    if kind == libc::S_IFREG || kind == libc::S_IFBLK || kind == libc::S_IFSOCK {
        relay.blocking_sink(stream, shared);
        return Ok(());
    }
    let path =
        std::ffi::CString::new(format!("/proc/self/fd/{fd}")).map_err(std::io::Error::other)?;
    // SAFETY: open with a valid NUL-terminated path; a non-negative result is ours.
    let own = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if own < 0 {
        relay.blocking_sink(stream, shared);
        return Ok(());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    relay.sink(stream, unsafe { OwnedFd::from_raw_fd(own) }, true)
}

fn zeroed_stat() -> libc::stat {
    // SAFETY: `stat` is plain data for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// A relay of our stdin to the guest process and its stdout and stderr to ours.
pub fn stdio_relay() -> std::io::Result<Relay> {
    let mut relay = Relay::new();
    if let Ok(stdin) = dup(0) {
        relay.source(stdin, Stream::Stdin);
    }
    add_output(&mut relay, Stream::Stdout, 1)?;
    add_output(&mut relay, Stream::Stderr, 2)?;
    Ok(relay)
}

/// Forwards received signals: SIGWINCH as a resize, the others as signals.
pub fn forward_signals<S: std::io::Read + std::io::Write + AsFd>(
    signals: &Signals,
    terminal: &Terminal,
    conn: &mut Connection<S>,
) -> Result<(), ProtocolError> {
    for signal in signals.take() {
        if signal == libc::SIGWINCH {
            if let Some(resize) = terminal.resize_message() {
                conn.send(&resize)?;
            }
            continue;
        }
        conn.send(&Message::Signal { signal, all: false })?;
    }
    Ok(())
}

/// Attaches our stdio to a guest process that just started: with `terminal`, puts our
/// terminal in raw mode and sends its size; returns the terminal guard and the relay.
pub fn attach<S: std::io::Read + std::io::Write + AsFd>(
    conn: &mut Connection<S>,
    terminal: bool,
) -> std::io::Result<(Terminal, Relay)> {
    let terminal = if terminal {
        Terminal::raw_if_tty()
    } else {
        Terminal::none()
    };
    if let Some(resize) = terminal.resize_message() {
        conn.send(&resize).map_err(std::io::Error::other)?;
    }
    Ok((terminal, stdio_relay()?))
}
