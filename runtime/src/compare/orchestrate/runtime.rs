//! Driving a runc-compatible runtime CLI (twinbox itself, runc, runsc, crun) on OCI bundles:
//! every container-class column of the report runs the same bundle through the same calls.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::OrchestrateError;
use crate::process::{kill_group, wait_output, wait_status};

/// How long one runtime call (create, start, state, delete) may take before it counts as hung.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A runtime CLI with its own state directory.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    /// Name for messages (`runc`, `twinbox`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Global flags after `--root DIR` (runsc's platform and network, say).
    pub global_args: Vec<String>,
    /// The state directory (`--root`), private to this compare run.
    pub state_root: PathBuf,
}

/// A runtime command started in the background whose stdout is read as it comes.
pub struct Running {
    child: Child,
    stdout: ChildStdout,
    /// Everything read from stdout so far.
    pub output: Vec<u8>,
}

impl OciRuntime {
    /// `PROGRAM --root STATE GLOBAL... ARGS...`, stdin from /dev/null, in its own process
    /// group (so a Ctrl-C at the terminal reaches only twinbox compare, which then cleans up).
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("--root")
            .arg(&self.state_root)
            .args(&self.global_args)
            .args(args)
            .stdin(Stdio::null())
            .process_group(0);
        command
    }

    /// Runs a management call to completion and returns its stdout; failures carry the
    /// runtime's own message.
    pub fn call<S: AsRef<std::ffi::OsStr>>(
        &self,
        action: &'static str,
        args: &[S],
    ) -> Result<Vec<u8>, OrchestrateError> {
        let mut command = self.command(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = command
            .spawn()
            .map_err(|e| self.error(action, e.to_string()))?;
        let output = wait_output(child, CALL_TIMEOUT).map_err(|e| self.error(action, e))?;
        if output.0.success() {
            Ok(output.1)
        } else {
            Err(self.error(action, last_lines(&output.2)))
        }
    }

    /// Starts `SUBCOMMAND --bundle BUNDLE ID` with stdout piped and stderr (the sandbox's
    /// and the runtime's messages) to `log`.
    fn spawn_on_bundle(
        &self,
        subcommand: &'static str,
        bundle: &Path,
        id: &str,
        log: &Path,
    ) -> Result<(Child, ChildStdout), OrchestrateError> {
        let log_file = File::create(log).map_err(|e| OrchestrateError::io(log, e))?;
        let mut command = self.command(&[
            subcommand.as_ref(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
            id.as_ref(),
        ]);
        command.stdout(Stdio::piped()).stderr(log_file);
        let mut child = command
            .spawn()
            .map_err(|e| self.error(subcommand, e.to_string()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok((child, stdout))
    }

    /// `create --bundle BUNDLE ID`: returns the sandbox's stdout (a pipe) once `create`
    /// has returned; its stderr goes to `log`.
    pub fn create(
        &self,
        bundle: &Path,
        id: &str,
        log: &Path,
    ) -> Result<ChildStdout, OrchestrateError> {
        let (mut child, stdout) = self.spawn_on_bundle("create", bundle, id, log)?;
        let status = wait_status(&mut child, CALL_TIMEOUT).map_err(|e| self.error("create", e))?;
        if status.success() {
            Ok(stdout)
        } else {
            Err(self.error("create", log_tail(log)))
        }
    }

    /// `run --bundle BUNDLE ID` in the foreground, stdout piped, stderr to `log`.
    pub fn spawn_run(
        &self,
        bundle: &Path,
        id: &str,
        log: &Path,
    ) -> Result<Running, OrchestrateError> {
        let (mut child, stdout) = self.spawn_on_bundle("run", bundle, id, log)?;
        child.stdout = Some(stdout);
        Ok(Running::new(child))
    }

    /// `state ID`: the sandbox's OCI state.
    pub fn state(&self, id: &str) -> Result<serde_json::Value, OrchestrateError> {
        let stdout = self.call("state", &["state", id])?;
        serde_json::from_slice(&stdout)
            .map_err(|e| self.error("state", format!("unreadable state JSON: {e}")))
    }

    /// The host pid of the sandbox's init, from `state ID`.
    pub fn init_pid(&self, id: &str) -> Result<u32, OrchestrateError> {
        let state = self.state(id)?;
        state["pid"]
            .as_u64()
            .filter(|pid| *pid > 0)
            .map(|pid| pid as u32)
            .ok_or_else(|| self.error("state", format!("no pid in the state: {state}")))
    }

    /// `delete --force ID`: kills what is left and removes the runtime's state. A sandbox
    /// the runtime no longer knows (`state` fails too) counts as deleted.
    pub fn delete(&self, id: &str) -> Result<(), OrchestrateError> {
        match self.call("delete", &["delete", "--force", id]) {
            Ok(_) => Ok(()),
            Err(_) if self.call("state", &["state", id]).is_err() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// An error of this runtime.
    pub fn error(&self, action: &'static str, message: String) -> OrchestrateError {
        OrchestrateError::Runtime {
            runtime: self.name.clone(),
            action,
            message,
        }
    }
}

impl Running {
    /// Wraps a started process whose stdout is piped (and which leads its own process group).
    pub fn new(mut child: Child) -> Self {
        let stdout = child.stdout.take().expect("stdout is piped");
        Running {
            child,
            stdout,
            output: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until `found` accepts what was read (returns the instant it was read),
    /// or until end of file (`None`), or fails at `deadline`.
    pub fn read_until(
        &mut self,
        deadline: Instant,
        found: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<Instant>, String> {
        read_until(&mut self.stdout, &mut self.output, deadline, found)
    }

    /// Reads stdout to its end and waits for the command; returns its exit status.
    pub fn finish(mut self, deadline: Instant) -> Result<std::process::ExitStatus, String> {
        let finished = self
            .read_until(deadline, |_| false)
            .and_then(|_| wait_status(&mut self.child, remaining(deadline)));
        match finished {
            Ok(status) => Ok(status),
            Err(message) => {
                self.kill();
                Err(message)
            }
        }
    }

    /// Kills the runtime process (its own process group) and reaps it.
    pub fn kill(&mut self) {
        kill_group(&mut self.child);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Reads `pipe` into `buffer` until `found(buffer)` (returns the read instant), end of file
/// (`None`), or `deadline` (an error).
pub fn read_until(
    pipe: &mut ChildStdout,
    buffer: &mut Vec<u8>,
    deadline: Instant,
    found: impl Fn(&[u8]) -> bool,
) -> Result<Option<Instant>, String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut chunk = [0u8; 8192];
    loop {
        if found(buffer) {
            return Ok(Some(Instant::now()));
        }
        if super::interrupt::requested() {
            return Err("interrupted".into());
        }
        let left = remaining(deadline);
        if left.is_zero() {
            return Err("timed out waiting for the sandbox's output".into());
        }
        let timeout = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        match pipe.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the sandbox's output: {e}")),
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The last few non-empty lines of a runtime's messages, for an error text.
pub fn last_lines(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "failed without a message".to_string()
    } else {
        tail
    }
}

/// [`last_lines`] of a log file.
pub fn log_tail(log: &Path) -> String {
    last_lines(&std::fs::read(log).unwrap_or_default())
}

/// The first line of `PROGRAM --version`, if it runs.
pub fn version_of(program: &Path) -> Option<String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().next().map(|line| line.trim().to_string())
}

/// `name` on `$PATH` (Debian puts runc in /usr/sbin, on root's PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_keeps_the_last_lines() {
        assert_eq!(last_lines(b"a\n\nb\nc\nd\n"), "b | c | d");
        assert_eq!(last_lines(b"  \n"), "failed without a message");
    }

    #[test]
    fn finds_programs_and_versions() {
        let sh = find_program("sh").expect("sh on PATH");
        assert!(sh.is_absolute());
        assert_eq!(find_program("no-such-runtime-here"), None);
        assert_eq!(version_of(Path::new("/nonexistent/runtime")), None);
    }

    #[test]
    fn reads_until_a_line_then_to_end_of_file() {
        let runtime = OciRuntime {
            name: "sh".into(),
            program: find_program("sh").unwrap(),
            global_args: vec![],
            state_root: "/".into(),
        };
        // `sh --root / -c SCRIPT` is not how sh is called: use a plain command instead.
        let mut command = Command::new(&runtime.program);
        command
            .args(["-c", "echo one; sleep 0.05; echo two"])
            .stdout(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut running = Running {
            stdout: child.stdout.take().unwrap(),
            child,
            output: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let at = running
            .read_until(deadline, |out| out.ends_with(b"one\n"))
            .unwrap();
        assert!(at.is_some());
        assert_eq!(running.output, b"one\n");
        let done = running.read_until(deadline, |_| false).unwrap();
        assert_eq!(done, None);
        assert_eq!(running.output, b"one\ntwo\n");
        let past = Instant::now() - Duration::from_millis(1);
        let mut command = Command::new(&runtime.program);
        command.args(["-c", "sleep 5"]).stdout(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut slow = Running {
            stdout: child.stdout.take().unwrap(),
            child,
            output: Vec::new(),
        };
        assert!(slow.read_until(past, |_| false).is_err());
    }
}
