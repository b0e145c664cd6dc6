//! How the VM's init (and an exec relay) tells the twinbox process that created it whether
//! the workload is ready: one JSON line over a Unix socket in the VM's state directory, which
//! the creator listens on while it watches the process.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::VmError;
use crate::state::ProcessIdentity;

/// What the init or relay reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Notice {
    /// The workload exists and waits for start (init), or the process runs (exec).
    Ready,
    /// It failed; `code` is the exit code the caller should use.
    Failed {
        /// Exit code (127/126 for a missing or non-executable program).
        code: i32,
        /// What happened.
        message: String,
    },
}

/// The creator's end: a listening socket.
#[derive(Debug)]
pub struct NoticeListener {
    listener: UnixListener,
    path: PathBuf,
}

impl NoticeListener {
    /// Listens at `path` (replacing a stale socket).
    pub fn bind(path: &Path) -> Result<Self, VmError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(VmError::io("listening on", path))?;
        listener
            .set_nonblocking(true)
            .map_err(VmError::io("configuring", path))?;
        Ok(NoticeListener {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Waits for the notice of `process`, at most `timeout`. If the process dies first, the
    /// error says so.
    pub fn wait(
        &self,
        process: &ProcessIdentity,
        what: &str,
        timeout: Duration,
    ) -> Result<Notice, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => return read_notice(stream, what),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(VmError::io("accepting on", &self.path)(e)),
            }
            if !process.is_alive() {
                // It may have reported just before it exited.
                if let Ok((stream, _)) = self.listener.accept() {
                    return read_notice(stream, what);
                }
                return Err(VmError::Boot(format!(
                    "{what} exited without reporting (see the container's stderr)"
                )));
            }
            if Instant::now() >= deadline {
                return Err(VmError::Boot(format!(
                    "{what} did not report within {timeout:?}"
                )));
            }
            let _ = twinbox_protocol::wait_readable(
                std::os::fd::AsRawFd::as_raw_fd(&self.listener),
                Some(Duration::from_millis(20)),
            );
        }
    }
}

impl Drop for NoticeListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_notice(stream: UnixStream, what: &str) -> Result<Notice, VmError> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| VmError::Boot(format!("reading the report of {what}: {e}")))?;
    serde_json::from_str(&line)
        .map_err(|e| VmError::Boot(format!("{what} sent a malformed report ({e}): {line:?}")))
}

/// Sends `notice` to the listener at `path` (best effort: the creator may be gone).
pub fn send(path: &Path, notice: &Notice) {
    let sent = UnixStream::connect(path).and_then(|mut stream| {
        let mut line = serde_json::to_string(notice).unwrap_or_default();
        line.push('\n');
        stream.write_all(line.as_bytes())
    });
    if let Err(error) = sent {
        tracing::warn!("cannot report to {}: {error}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_crosses_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = NoticeListener::bind(&path).unwrap();
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        let sender = {
            let path = path.clone();
            std::thread::spawn(move || {
                send(
                    &path,
                    &Notice::Failed {
                        code: 127,
                        message: "no such program".into(),
                    },
                )
            })
        };
        let notice = listener
            .wait(&me, "the test", Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            notice,
            Notice::Failed {
                code: 127,
                message: "no such program".into()
            }
        );
        sender.join().unwrap();
        drop(listener);
        assert!(!path.exists(), "the socket is removed");
    }

    #[test]
    fn a_dead_process_or_silence_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let listener = NoticeListener::bind(&dir.path().join("n.sock")).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let identity = ProcessIdentity::of(child.id() as i32).unwrap_or(ProcessIdentity {
            pid: child.id() as i32,
            start_time: 0,
        });
        child.wait().unwrap();
        let error = listener
            .wait(&identity, "the VM", Duration::from_secs(5))
            .unwrap_err();
        assert!(
            error.to_string().contains("exited without reporting"),
            "{error}"
        );
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        let error = listener
            .wait(&me, "the VM", Duration::from_millis(100))
            .unwrap_err();
        assert!(
            error.to_string().contains("did not report within"),
            "{error}"
        );
    }
}
