//! `exec` into a VM: a small relay process, started in the VMM's jail with the container
//! setup's exec path (so it gets the jail's namespaces, cgroup, seccomp and, with a terminal,
//! a pty in the jail), opens a request session to the agent, has it start the process in the
//! workload, reports to the caller, relays stdio and signals, and exits with the process's
//! exit code. The caller sees it as the exec'd process: its pid, its exit status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};
use twinbox_protocol::{Event, ExecRequest, Message, REPLY_TIMEOUT};

use super::hostio::{self, Signals};
use super::init::GUEST_DIED;
use super::notify::{self, Notice};

/// The relay's configuration (in the VM directory, removed once read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The process to run in the workload.
    pub process: Process,
    /// Where to report (inside the jail).
    pub notify: PathBuf,
}

/// How long the relay's last output may take to reach a slow reader.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the relay; returns the process's exit code.
pub fn main(config_path: &Path) -> i32 {
    let vm_dir = config_path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let config: ExecConfig = match std::fs::read(config_path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_slice(&text).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("twinbox: reading {}: {error}", config_path.display());
            return 1;
        }
    };
    let _ = std::fs::remove_file(config_path);
    let fail = |code: i32, message: String| {
        notify::send(&config.notify, &Notice::Failed { code, message });
        code
    };
    let signals = match Signals::block() {
        Ok(signals) => signals,
        Err(error) => return fail(1, format!("setting up signals: {error}")),
    };
    let request = Message::Exec(Box::new(ExecRequest {
        process: config.process.clone(),
    }));
    let mut conn = match super::request_session(&vm_dir, &request) {
        Ok(conn) => conn,
        Err(message) => return fail(1, message),
    };
    let started = conn.recv_message(Some(REPLY_TIMEOUT));
    match started {
        Ok(Message::Started { pid }) => tracing::debug!(pid, "exec started in the guest"),
        Ok(Message::Error(error)) => return fail(error.exit_code(), error.message),
        Ok(other) => {
            return fail(
                1,
                format!("the guest agent answered {} to exec", other.name()),
            );
        }
        Err(error) => return fail(1, format!("exec in the VM failed: {error}")),
    }
    notify::send(&config.notify, &Notice::Ready);
    let (terminal, mut relay) =
        match hostio::attach(&mut conn, config.process.terminal().unwrap_or(false)) {
            Ok(attached) => attached,
            Err(error) => {
                eprintln!("twinbox: relaying stdio: {error}");
                return 1;
            }
        };
    let code = loop {
        let events = match relay.poll(&mut conn, &[signals.fd()], None) {
            Ok(events) => events,
            Err(error) => {
                eprintln!("twinbox: the VM went away while the exec'd process ran ({error})");
                break GUEST_DIED;
            }
        };
        let mut exit = None;
        for event in events {
            match event {
                Event::Extra(_) => {
                    if let Err(error) = hostio::forward_signals(&signals, &terminal, &mut conn) {
                        tracing::warn!("forwarding signals: {error}");
                    }
                }
                Event::Message(Message::Exit(status)) => exit = Some(status.code),
                Event::Message(other) => {
                    tracing::debug!("ignoring {} from the guest", other.name())
                }
            }
        }
        if let Some(code) = exit {
            break code;
        }
    };
    relay.flush(FLUSH_TIMEOUT);
    code
}
