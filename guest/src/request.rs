//! Request sessions (the host connects to [`twinbox_protocol::AGENT_PORT`]): exec a process
//! in the workload, copy files in or out of its root, or signal it. Each runs in a process of
//! its own, forked by PID 1, that exits when the request is done.

use std::fs::File;

use twinbox_protocol::{
    AgentError, ArchiveReader, ArchiveWriter, Connection, ErrorKind, ExecRequest, Message,
    REPLY_TIMEOUT,
};
use twinbox_sandbox::launch::{ExecSetup, ProcessSetup, spawn_exec};

use crate::copy;
use crate::session::{
    Conn, Flow, SOFTWARE, Stdio, Supervised, child_signals, launch_error, reply_error, send_signal,
    workload_cgroup,
};
use crate::workload::WorkloadRecord;

/// Serves one request on `conn`; returns the handler's exit code.
pub fn serve(conn: File) -> i32 {
    let mut conn = Connection::new(conn);
    if let Err(error) = conn.handshake(SOFTWARE, REPLY_TIMEOUT) {
        eprintln!("twinbox-agent: a request session's hello failed: {error}");
        return 1;
    }
    let request = match conn.recv_message(Some(REPLY_TIMEOUT)) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("twinbox-agent: no request: {error}");
            return 1;
        }
    };
    let result = match request {
        Message::Exec(request) => exec(&mut conn, &request),
        Message::CopyIn { path } => with_workload_root(|| {
            let mut archive = ArchiveReader::new(&mut conn);
            let result = copy::copy_in(&mut archive, &path);
            // The host sends the whole archive whatever happens: take the rest.
            let _ = archive.discard();
            result
        })
        .and_then(|()| done(&mut conn)),
        Message::CopyOut { path } => with_workload_root(|| {
            let mut writer = ArchiveWriter::new(&mut conn);
            let result = copy::copy_out(&mut writer, &path);
            writer
                .finish()
                .map_err(crate::session::failed("sending the archive"))?;
            result
        })
        .and_then(|()| done(&mut conn)),
        Message::Signal { signal, all } => WorkloadRecord::load()
            .and_then(|record| send_signal(record.pid, signal, all))
            .and_then(|()| done(&mut conn)),
        other => Err(AgentError::new(
            ErrorKind::Invalid,
            format!("{} is not a request", other.name()),
        )),
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            reply_error(&mut conn, error);
            1
        }
    }
}

fn done(conn: &mut Conn) -> Result<(), AgentError> {
    conn.send(&Message::Done)
        .map_err(crate::session::failed("replying"))
}

/// Runs `body` with the workload's root as ours.
fn with_workload_root(body: impl FnOnce() -> Result<(), AgentError>) -> Result<(), AgentError> {
    let record = WorkloadRecord::load()?;
    copy::enter_workload_root(record.pid)?;
    body()
}

/// Starts the process in the workload's namespaces and cgroup, then relays it to its end.
fn exec(conn: &mut Conn, request: &ExecRequest) -> Result<(), AgentError> {
    let record = WorkloadRecord::load()?;
    let signals = child_signals()?;
    let terminal = request.process.terminal().unwrap_or(false);
    let mut stdio = Stdio::new(terminal)?;
    crate::workload::provide_seccomp_program(&record.spec, record.seccomp_program.as_deref());
    let seccomp = record
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref());
    let mut process = ProcessSetup::new(&request.process, seccomp, stdio.console_socket())
        .map_err(launch_error)?;
    if let Some(pipes) = stdio.child_pipes() {
        process = process.stdio(pipes);
    }
    let setup = ExecSetup::new(record.pid, process).map_err(launch_error)?;
    let cgroup = workload_cgroup()?;
    let pid = spawn_exec(setup, Some(&cgroup)).map_err(launch_error)?;
    let (relay, master) = stdio.into_relay()?;
    let mut supervised = Supervised { pid, relay, master };
    let relay_failed = |e: twinbox_protocol::ProtocolError| {
        // The host is gone: so is the reason for the process.
        let _ = send_signal(pid, libc::SIGKILL, false);
        AgentError::new(ErrorKind::Failed, format!("exec session: {e}"))
    };
    conn.send(&Message::Started { pid }).map_err(relay_failed)?;
    let status = supervised
        .run(conn, &signals, |message, _| {
            Ok(match message {
                Message::Shutdown => Flow::Shutdown,
                _ => Flow::Continue,
            })
        })
        .map_err(relay_failed)?;
    match status {
        Some(status) => conn.send(&Message::Exit(status)).map_err(relay_failed),
        None => {
            let _ = send_signal(pid, libc::SIGKILL, false);
            Ok(())
        }
    }
}
