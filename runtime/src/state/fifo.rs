//! The exec fifo: `create` leaves the init blocked opening it for writing; `start` opens it
//! for reading, which releases the init, and removes it. Whether it exists tells "created"
//! from "running". Backend-neutral: the VM backend's init (the VMM) blocks on it the same way.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ProcessIdentity, StateError, io_err};

/// The exec fifo of one container directory.
#[derive(Debug, Clone)]
pub struct ExecFifo {
    path: PathBuf,
}

impl ExecFifo {
    /// The fifo's name in the container directory.
    pub const FILE_NAME: &str = "exec.fifo";

    /// The fifo in container directory `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        ExecFifo {
            path: dir.join(Self::FILE_NAME),
        }
    }

    /// Creates the fifo and returns an O_PATH handle for the init (it reopens it for writing
    /// through /proc/self/fd after pivot_root).
    pub fn create(&self) -> Result<OwnedFd, StateError> {
        nix::unistd::mkfifo(&self.path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| io_err("creating", &self.path)(e.into()))?;
        // Writable by any container user (the init may have dropped to a non-root uid).
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o622))
            .map_err(io_err("chmod of", &self.path))?;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(&self.path)
            .map(OwnedFd::from)
            .map_err(io_err("opening", &self.path))
    }

    /// Whether the fifo still exists (the container was created but not started).
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Releases the init blocked on the fifo and removes it. Fails if the init died first.
    pub fn release(&self, init: ProcessIdentity) -> Result<(), StateError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(io_err("opening", &self.path))?;
        loop {
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is a valid array of one pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
            if ready > 0 && pfd.revents & libc::POLLIN != 0 {
                let mut byte = [0u8; 1];
                match (&file).read(&mut byte) {
                    Ok(1) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    _ => return Err(StateError::InitExited),
                }
            }
            if (ready > 0 && pfd.revents & libc::POLLHUP != 0) || !init.is_alive() {
                return Err(StateError::InitExited);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        fs::remove_file(&self.path).map_err(io_err("removing", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_unblocks_a_writer_and_removes_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = ExecFifo::in_dir(dir.path());
        let handle = fifo.create().unwrap();
        let path = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all(b"0").unwrap();
        });
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        fifo.release(me).unwrap();
        writer.join().unwrap();
        assert!(!fifo.exists());
    }

    #[test]
    fn release_fails_when_the_init_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = ExecFifo::in_dir(dir.path());
        let _handle = fifo.create().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = ProcessIdentity::of(child.id() as i32).unwrap_or(ProcessIdentity {
            pid: child.id() as i32,
            start_time: 1,
        });
        child.wait().unwrap();
        assert!(matches!(fifo.release(gone), Err(StateError::InitExited)));
        assert!(fifo.exists());
    }
}
