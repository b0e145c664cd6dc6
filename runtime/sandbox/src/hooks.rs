//! OCI hooks: run each hook with the container state JSON on its stdin, within its timeout.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// A hook that failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook could not be started.
    #[error("{kind} hook {path}: cannot run it: {source}")]
    Spawn {
        /// prestart, createRuntime, ...
        kind: &'static str,
        /// The hook's path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The hook exited unsuccessfully.
    #[error("{kind} hook {path} failed ({status}){output}")]
    Failed {
        /// prestart, createRuntime, ...
        kind: &'static str,
        /// The hook's path.
        path: String,
        /// How it ended.
        status: String,
        /// Its stderr and stdout, prefixed with ": " when not empty.
        output: String,
    },
    /// The hook ran longer than its timeout and was killed.
    #[error("{kind} hook {path} did not finish within its timeout of {seconds}s and was killed")]
    Timeout {
        /// prestart, createRuntime, ...
        kind: &'static str,
        /// The hook's path.
        path: String,
        /// The timeout.
        seconds: i64,
    },
}

/// Runs `hooks` in order; the first failure stops the rest and is returned.
pub fn run_hooks(kind: &'static str, hooks: &[Hook], state_json: &str) -> Result<(), HookError> {
    for hook in hooks {
        run_hook(kind, hook, state_json)?;
    }
    Ok(())
}

/// Runs `hooks` in order; failures are logged as warnings and the rest still run (poststart
/// and poststop semantics).
pub fn run_hooks_warn(kind: &'static str, hooks: &[Hook], state_json: &str) {
    for hook in hooks {
        if let Err(err) = run_hook(kind, hook, state_json) {
            tracing::warn!("{err}");
        }
    }
}

fn run_hook(kind: &'static str, hook: &Hook, state_json: &str) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let mut command = Command::new(hook.path());
    if let Some(args) = hook.args()
        && let Some((argv0, rest)) = args.split_first()
    {
        std::os::unix::process::CommandExt::arg0(&mut command, argv0);
        command.args(rest);
    }
    command.env_clear();
    for pair in hook.env().iter().flatten() {
        if let Some((k, v)) = pair.split_once('=') {
            command.env(k, v);
        }
    }
    // The hook's output goes to an anonymous file (read after it exits, for the error
    // message): a pipe could fill up and block a chatty hook.
    let output_file = crate::memfd("twinbox-hook-output").map_err(|source| HookError::Spawn {
        kind,
        path: path.clone(),
        source,
    })?;
    let clone = |f: &std::fs::File| f.try_clone().map(Stdio::from);
    command
        .stdin(Stdio::piped())
        .stdout(clone(&output_file).map_err(|source| HookError::Spawn {
            kind,
            path: path.clone(),
            source,
        })?)
        .stderr(clone(&output_file).map_err(|source| HookError::Spawn {
            kind,
            path: path.clone(),
            source,
        })?);
    let mut child = command.spawn().map_err(|source| HookError::Spawn {
        kind,
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine (EPIPE).
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let timeout = hook.timeout().filter(|t| *t > 0);
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t as u64));
    let pidfd = pidfd_open(child.id() as i32);
    loop {
        if let Some(status) = child.try_wait().map_err(|source| HookError::Spawn {
            kind,
            path: path.clone(),
            source,
        })? {
            if status.success() {
                return Ok(());
            }
            let mut output = String::new();
            let mut file = &output_file;
            let _ = file.seek(SeekFrom::Start(0));
            let _ = file.take(4096).read_to_string(&mut output);
            let output = output.trim();
            return Err(HookError::Failed {
                kind,
                path,
                status: status.to_string(),
                output: if output.is_empty() {
                    String::new()
                } else {
                    format!(": {output}")
                },
            });
        }
        let remaining = match deadline {
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HookError::Timeout {
                        kind,
                        path,
                        seconds: timeout.unwrap_or_default(),
                    });
                }
                deadline - now
            }
            None => Duration::from_secs(3600),
        };
        wait_readable(pidfd.as_ref(), remaining);
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: fd is a freshly opened descriptor owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the pidfd reports the process's exit, or `timeout` (polls every 10 ms without
/// a pidfd on old kernels).
fn wait_readable(pidfd: Option<&OwnedFd>, timeout: Duration) {
    match pidfd {
        Some(fd) => {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: pfd is a valid pollfd array of length 1.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
        None => std::thread::sleep(timeout.min(Duration::from_millis(10))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hooks_get_state_on_stdin_args_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","cat > {} && echo \"$0 $1 $FOO\" >> {}","zero","one"],"env":["FOO=bar"]}}"#,
            out.display(),
            out.display()
        ));
        run_hooks("prestart", &[h], r#"{"id":"c1"}"#).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "{\"id\":\"c1\"}zero one bar\n");
    }

    #[test]
    fn failure_reports_status_and_output_and_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("second-ran");
        let failing = hook(r#"{"path":"/bin/sh","args":["sh","-c","echo broken >&2; exit 3"]}"#);
        let second = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","touch {}"]}}"#,
            marker.display()
        ));
        let err = run_hooks("createRuntime", &[failing.clone(), second.clone()], "{}").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("createRuntime hook /bin/sh failed"), "{text}");
        assert!(
            text.contains("exit status: 3") && text.contains("broken"),
            "{text}"
        );
        assert!(!marker.exists());
        run_hooks_warn("poststop", &[failing, second], "{}");
        assert!(marker.exists());
    }

    #[test]
    fn timeouts_kill_the_hook() {
        let h = hook(r#"{"path":"/bin/sleep","args":["sleep","30"],"timeout":1}"#);
        let start = Instant::now();
        let err = run_hooks("poststart", &[h], "{}").unwrap_err();
        assert!(matches!(err, HookError::Timeout { seconds: 1, .. }));
        assert!(start.elapsed() < Duration::from_secs(10));
        let missing = hook(r#"{"path":"/nonexistent/hook"}"#);
        assert!(matches!(
            run_hooks("prestart", &[missing], "{}"),
            Err(HookError::Spawn { .. })
        ));
    }
}
