//! The runc-compatible OCI runtime commands: each turns its parsed arguments into
//! [`crate::lifecycle`] calls and returns the process exit code.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, Process};

use crate::backend::ExecOptions;
use crate::cli::GlobalOpts;
use crate::cli::runtime::{
    CreateArgs, CreateFlags, DeleteArgs, ExecArgs, IdArgs, KillArgs, ListArgs, OutputFormat,
    PsArgs, RunArgs, RuntimeCommand, SpecArgs,
};
use crate::lifecycle::{
    Container, ContainerBuilder, LifecycleError, forward_signals_to, parse_signal, tty,
    wait_for_exit,
};
use crate::logging::report_error;
use crate::state::{RunRoot, write_pid_file};

/// A command failure: the message and the exit code.
struct Failure {
    message: String,
    code: i32,
}

impl From<LifecycleError> for Failure {
    fn from(err: LifecycleError) -> Self {
        Failure {
            code: err.exit_code(),
            message: err.to_string(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { message, code: 1 }
    }
}

type CommandResult = Result<i32, Failure>;

/// Runs one runtime command.
pub fn run(global: &GlobalOpts, command: RuntimeCommand) -> i32 {
    let root = RunRoot::new(global.root.as_deref());
    let result = match command {
        RuntimeCommand::Create(args) => create(global, &root, args),
        RuntimeCommand::Start(args) => start(&root, args),
        RuntimeCommand::Run(args) => run_bundle(global, &root, args),
        RuntimeCommand::State(args) => state(&root, args),
        RuntimeCommand::Kill(args) => kill(&root, args),
        RuntimeCommand::Delete(args) => delete(&root, args),
        RuntimeCommand::Exec(args) => exec(&root, args),
        RuntimeCommand::Ps(args) => ps(&root, args),
        RuntimeCommand::List(args) => list(&root, args),
        RuntimeCommand::Pause(args) => Container::load(root, &args.id)
            .and_then(|c| c.pause())
            .map(|()| 0)
            .map_err(Failure::from),
        RuntimeCommand::Resume(args) => Container::load(root, &args.id)
            .and_then(|c| c.resume())
            .map(|()| 0)
            .map_err(Failure::from),
        RuntimeCommand::Features => features(),
        RuntimeCommand::Spec(args) => spec(args),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            report_error(global, &failure.message);
            failure.code
        }
    }
}

fn builder(
    global: &GlobalOpts,
    root: &RunRoot,
    id: &str,
    bundle: &Path,
    flags: CreateFlags,
) -> ContainerBuilder {
    ContainerBuilder::new(root.clone(), id, bundle)
        .pid_file(flags.pid_file)
        .console_socket(flags.console_socket)
        .no_pivot(flags.no_pivot)
        .no_new_keyring(flags.no_new_keyring)
        .preserve_fds(flags.preserve_fds)
        .systemd_cgroup(global.systemd_cgroup)
        .argv0(std::env::args().next())
}

fn create(global: &GlobalOpts, root: &RunRoot, args: CreateArgs) -> CommandResult {
    builder(global, root, &args.id, &args.bundle, args.flags).create()?;
    Ok(0)
}

fn start(root: &RunRoot, args: IdArgs) -> CommandResult {
    Container::load(root.clone(), &args.id)?.start()?;
    Ok(0)
}

/// Whether the bundle's process asks for a terminal.
fn wants_terminal(bundle: &Path) -> bool {
    crate::lifecycle::load_bundle_spec(bundle)
        .ok()
        .and_then(|(spec, _)| spec.process().as_ref().and_then(|p| p.terminal()))
        .unwrap_or(false)
}

fn run_bundle(global: &GlobalOpts, root: &RunRoot, args: RunArgs) -> CommandResult {
    let Some(bundle) = args.bundle else {
        return Err(Failure::from(
            "`twinbox run IMAGE` (from the image store) is not available yet; to run an OCI \
             bundle use `twinbox run --bundle DIR ID`"
                .to_string(),
        ));
    };
    let [id] = args.args.as_slice() else {
        return Err(Failure::from(format!(
            "`twinbox run --bundle DIR ID` takes exactly one container id, got {:?}",
            args.args
        )));
    };
    let own_terminal = args.flags.console_socket.is_none() && wants_terminal(&bundle);
    if own_terminal && args.detach {
        return Err(Failure::from(
            "a detached container with process.terminal needs --console-socket".to_string(),
        ));
    }
    let mut builder = builder(global, root, id, &bundle, args.flags);
    let console = if own_terminal {
        let (ours, theirs) = tty::console_pair().map_err(|e| format!("console socket: {e}"))?;
        builder = builder.console_socket_fd(theirs);
        Some(ours)
    } else {
        None
    };
    let mut container = builder.create()?;
    let pid = container.pid();
    if !args.detach {
        forward_signals_to(pid);
    }
    let master = match &console {
        Some(socket) => {
            Some(tty::receive_pty_master(socket).map_err(|e| format!("receiving the pty: {e}"))?)
        }
        None => None,
    };
    if let Err(err) = container.start() {
        let _ = container.delete(true);
        return Err(err.into());
    }
    if args.detach {
        return Ok(0);
    }
    tracing::debug!(id = %id, "container started");
    if let Some(master) = &master {
        let _ = tty::relay(master);
    }
    let code = wait_for_exit(pid).map_err(|e| format!("waiting for the container: {e}"))?;
    tracing::debug!(id = %id, code, "container exited");
    if container.oom_killed() {
        tracing::warn!(
            "container {id} was killed by the kernel's OOM killer (memory limit reached)"
        );
        eprintln!("twinbox: container {id} was OOM-killed (memory limit reached)");
    }
    if !args.keep {
        container.delete(true)?;
        tracing::debug!(id = %id, "container deleted");
    }
    Ok(code)
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn state(root: &RunRoot, args: IdArgs) -> CommandResult {
    print_json(&Container::load(root.clone(), &args.id)?.state());
    Ok(0)
}

fn kill(root: &RunRoot, args: KillArgs) -> CommandResult {
    let signal = parse_signal(&args.signal)?;
    Container::load(root.clone(), &args.id)?.kill(signal, args.all)?;
    Ok(0)
}

fn delete(root: &RunRoot, args: DeleteArgs) -> CommandResult {
    match Container::load(root.clone(), &args.id) {
        Ok(container) => container.delete(args.force)?,
        // A killed `create` can leave a directory without a readable state: --force
        // removes it.
        // With --force a missing container is not an error (as runc): engines force-delete
        // after a failed create, and a killed create can leave a directory without a
        // readable state, which is removed here.
        Err(LifecycleError::State(err)) if args.force => {
            if root.container_dir(&args.id).is_dir() {
                tracing::warn!("removing damaged state of {}: {err}", args.id);
                root.remove(&args.id).map_err(LifecycleError::from)?;
            }
        }
        Err(err) => return Err(err.into()),
    }
    Ok(0)
}

/// Parses "uid[:gid]".
fn parse_user(text: &str) -> Result<(u32, Option<u32>), String> {
    let bad = || format!("--user {text:?}: use numeric uid[:gid]");
    let (uid, gid) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let uid = uid.parse().map_err(|_| bad())?;
    let gid = gid.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

/// The process to exec: --process FILE, or the container's process with ARGS and the flags.
fn exec_process(
    container: &mut Container,
    args: &ExecArgs,
    command: &[String],
) -> Result<Process, Failure> {
    if let Some(path) = &args.process {
        let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        return serde_json::from_slice(&text).map_err(|e| {
            Failure::from(format!(
                "{} is not an OCI process object: {e}",
                path.display()
            ))
        });
    }
    if command.is_empty() {
        return Err(Failure::from(
            "exec needs a command after the container id (or --process FILE)".to_string(),
        ));
    }
    let mut process = container.config_process()?;
    process.set_args(Some(command.to_vec()));
    process.set_terminal(Some(args.tty));
    process.set_console_size(None);
    let mut env = process.env().clone().unwrap_or_default();
    for pair in &args.env {
        let key = pair.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(pair.clone());
    }
    process.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    if let Some(user) = &args.user {
        let (uid, gid) = parse_user(user)?;
        let mut spec_user = process.user().clone();
        spec_user.set_uid(uid);
        spec_user.set_gid(gid.unwrap_or(uid));
        process.set_user(spec_user);
    }
    if !args.additional_gids.is_empty() {
        let mut spec_user = process.user().clone();
        spec_user.set_additional_gids(Some(args.additional_gids.clone()));
        process.set_user(spec_user);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if !args.cap.is_empty() {
        let added: HashSet<Capability> = args
            .cap
            .iter()
            .map(|c| {
                serde_json::from_value(serde_json::Value::String(c.clone()))
                    .map_err(|_| format!("unknown capability {c:?}"))
            })
            .collect::<Result<_, _>>()?;
        let mut caps = process.capabilities().clone().unwrap_or_default();
        let extend = |set: &Option<HashSet<Capability>>| {
            Some(
                set.clone()
                    .unwrap_or_default()
                    .union(&added)
                    .copied()
                    .collect(),
            )
        };
        caps.set_bounding(extend(caps.bounding()));
        caps.set_effective(extend(caps.effective()));
        caps.set_permitted(extend(caps.permitted()));
        process.set_capabilities(Some(caps));
    }
    Ok(process)
}

fn exec(root: &RunRoot, args: ExecArgs) -> CommandResult {
    let (id, command) = args
        .args
        .split_first()
        .ok_or_else(|| "exec needs a container id".to_string())?;
    if args.process_label.as_deref().is_some_and(|l| !l.is_empty())
        || args.apparmor.as_deref().is_some_and(|a| !a.is_empty())
    {
        return Err(Failure::from(
            "twinbox does not support SELinux labels or AppArmor profiles".to_string(),
        ));
    }
    let mut container = Container::load(root.clone(), id)?;
    let process = exec_process(&mut container, &args, command)?;
    let terminal = process.terminal().unwrap_or(false);
    let mut options = ExecOptions {
        preserve_fds: args.preserve_fds,
        ..ExecOptions::default()
    };
    let mut console = None;
    if terminal {
        match &args.console_socket {
            Some(path) => {
                let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
                    format!("connecting to the console socket {}: {e}", path.display())
                })?;
                options.console_socket = Some(stream.into());
            }
            None if args.detach => {
                return Err(Failure::from(
                    "a detached exec with a terminal needs --console-socket".to_string(),
                ));
            }
            None => {
                let (ours, theirs) =
                    tty::console_pair().map_err(|e| format!("console socket: {e}"))?;
                options.console_socket = Some(theirs);
                console = Some(ours);
            }
        }
    }
    let pid = container.exec(&process, options)?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, pid).map_err(LifecycleError::from)?;
    }
    if args.detach {
        return Ok(0);
    }
    forward_signals_to(pid);
    if let Some(socket) = &console {
        let master =
            tty::receive_pty_master(socket).map_err(|e| format!("receiving the pty: {e}"))?;
        let _ = tty::relay(&master);
    }
    Ok(wait_for_exit(pid).map_err(|e| format!("waiting for the process: {e}"))?)
}

fn ps(root: &RunRoot, args: PsArgs) -> CommandResult {
    let container = Container::load(root.clone(), &args.id)?;
    let pids = container.processes()?;
    if args.format == OutputFormat::Json {
        println!("{}", serde_json::to_string(&pids).unwrap_or_default());
        return Ok(0);
    }
    let ps_args = if args.ps_args.is_empty() {
        vec!["-ef".to_string()]
    } else {
        args.ps_args
    };
    let output = std::process::Command::new("ps")
        .args(&ps_args)
        .output()
        .map_err(|e| {
            format!(
                "running ps {}: {e} (install procps, or use --format json)",
                ps_args.join(" ")
            )
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let pid_column = header
        .split_whitespace()
        .position(|c| c == "PID")
        .ok_or_else(|| "ps output has no PID column".to_string())?;
    println!("{header}");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(pid_column)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(0)
}

fn list(root: &RunRoot, args: ListArgs) -> CommandResult {
    let containers = Container::list(root)?;
    if args.quiet {
        for c in &containers {
            println!("{}", c.id());
        }
        return Ok(0);
    }
    let states: Vec<serde_json::Value> = containers.iter().map(Container::state).collect();
    if args.format == OutputFormat::Json {
        println!("{}", serde_json::Value::Array(states));
        return Ok(0);
    }
    let rows: Vec<[String; 6]> = states
        .iter()
        .map(|s| {
            let field = |k: &str| match &s[k] {
                serde_json::Value::String(v) => v.clone(),
                other => other.to_string(),
            };
            [
                field("id"),
                field("pid"),
                field("status"),
                field("bundle"),
                field("created"),
                field("owner"),
            ]
        })
        .collect();
    let header = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(str::to_string);
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            rows.iter()
                .chain([&header])
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in [&header].into_iter().chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(0)
}

fn features() -> CommandResult {
    print_json(&super::features::features());
    Ok(0)
}

fn spec(args: SpecArgs) -> CommandResult {
    let path: PathBuf = args.bundle.join("config.json");
    if path.exists() {
        return Err(Failure::from(format!(
            "{} exists already: remove it first",
            path.display()
        )));
    }
    let spec = super::features::default_spec(args.rootless);
    let text = serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(0)
}
