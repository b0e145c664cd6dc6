//! The runc-compatible OCI runtime commands: each turns its parsed arguments into
//! [`crate::lifecycle`] calls and returns the process exit code. `run`, `ps`, `kill` and
//! `exec` also serve the docker-style interface: `run IMAGE` and `ps` without an id go to
//! [`super::engine`]; `kill` and `exec` address containers by name or id prefix too, and
//! give containers made by `run IMAGE` docker's defaults.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, Process};

use crate::backend::ExecOptions;
use crate::cli::GlobalOpts;
use crate::cli::engine::ContainerRunArgs;
use crate::cli::runtime::{
    CreateArgs, CreateFlags, DeleteArgs, ExecArgs, IdArgs, KillArgs, ListArgs, OutputFormat,
    PsArgs, RunArgs, RuntimeCommand, SpecArgs,
};
use crate::engine;
use crate::lifecycle::{
    Container, ContainerBuilder, LifecycleError, forward_signals_to, parse_signal, tty,
    wait_for_exit,
};
use crate::logging::report_error;
use crate::state::{RunRoot, StateError, write_pid_file};

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
    let root = super::runtime_run_root(global);
    let result = match command {
        RuntimeCommand::Create(args) => create(global, &root, args),
        RuntimeCommand::Start(args) => start(&root, args),
        RuntimeCommand::Run(args) => match args.bundle.clone() {
            None => return super::engine::run(global, *args),
            Some(bundle) => run_bundle(global, &root, &bundle, *args),
        },
        RuntimeCommand::State(args) => state(&root, args),
        RuntimeCommand::Kill(args) => kill(global, &root, args),
        RuntimeCommand::Delete(args) => delete(&root, args),
        RuntimeCommand::Exec(args) => exec(global, &root, args),
        RuntimeCommand::Ps(args) => match args.id.clone() {
            None => return super::engine::ps(global, &args),
            Some(id) => ps(&root, &id, args),
        },
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

fn run_bundle(global: &GlobalOpts, root: &RunRoot, bundle: &Path, args: RunArgs) -> CommandResult {
    if args.image != ContainerRunArgs::default() {
        return Err(Failure::from(
            "the docker-style options of `twinbox run IMAGE` (--rm, --name, -e, -v, -i, -t, \
             --memory, ...) do not apply to `twinbox run --bundle DIR ID`: put them in the \
             bundle's config.json"
                .to_string(),
        ));
    }
    let [id] = args.args.as_slice() else {
        return Err(Failure::from(format!(
            "`twinbox run --bundle DIR ID` takes exactly one container id, got {:?}",
            args.args
        )));
    };
    let own_terminal = args.flags.console_socket.is_none() && wants_terminal(bundle);
    if own_terminal && args.detach {
        return Err(Failure::from(
            "a detached container with process.terminal needs --console-socket".to_string(),
        ));
    }
    let mut builder = builder(global, root, id, bundle, args.flags).start_on_create(true);
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

/// `kill`: runc's `kill [--all] ID [SIGNAL]` (default SIGTERM, prints nothing), or docker's
/// `kill [-s SIGNAL] CONTAINER...` (default SIGKILL for containers made by `run IMAGE`,
/// prints each name).
fn kill(global: &GlobalOpts, root: &RunRoot, args: KillArgs) -> CommandResult {
    let names = super::engine::engine_for_run_root(global, root);
    let (targets, signal, runc_form) = match (&args.signal, args.targets.as_slice()) {
        (Some(name), targets) => (targets, Some(parse_signal(name)?), false),
        // runc's positional signal, unless it names a container.
        (None, [id, signal]) if names.resolve(signal).is_err() => {
            (std::slice::from_ref(id), Some(parse_signal(signal)?), true)
        }
        (None, targets) => (targets, None, false),
    };
    let mut failure = None;
    for target in targets {
        let result = load_container(global, root, target).and_then(|container| {
            let made_by_run = is_engine_container(&container);
            let default = if made_by_run {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            };
            container.kill(signal.unwrap_or(default), args.all)?;
            Ok(made_by_run && !runc_form)
        });
        match result {
            Ok(true) => println!("{target}"),
            Ok(false) => {}
            Err(err) => {
                if let Some(previous) = failure.replace(err) {
                    report_error(global, &previous.message);
                }
            }
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(0),
    }
}

/// Whether `twinbox run IMAGE` made this container (docker's defaults apply to it).
fn is_engine_container(container: &Container) -> bool {
    container
        .record()
        .annotations
        .contains_key(crate::engine::annotations::NAME)
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
fn parse_user(text: &str) -> Option<(u32, Option<u32>)> {
    let (uid, gid) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let uid = uid.parse().ok()?;
    let gid = match gid {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    Some((uid, gid))
}

/// Sets the user of an exec'd process. Numeric uid[:gid] is taken as given for runtime
/// containers (as runc); names, and every user of a container made by `run IMAGE`, are
/// resolved in the container's /etc/passwd and /etc/group with docker's rules (primary and
/// supplementary groups), and such a process gets the container's capabilities only as root.
fn set_exec_user(container: &Container, process: &mut Process, user: &str) -> Result<(), Failure> {
    let mut spec_user = process.user().clone();
    let docker_rules = is_engine_container(container);
    match parse_user(user) {
        Some((uid, gid)) if !docker_rules => {
            spec_user.set_uid(uid);
            spec_user.set_gid(gid.unwrap_or(uid));
        }
        _ => {
            let resolved = crate::spec::resolve_user(&container.record().rootfs, user)
                .map_err(|e| format!("--user {user:?}: {e}"))?;
            spec_user.set_uid(resolved.uid);
            spec_user.set_gid(resolved.gid);
            spec_user.set_additional_gids(Some(resolved.additional_gids));
            if docker_rules && let Some(mut caps) = process.capabilities().clone() {
                let held = if resolved.uid == 0 {
                    caps.bounding().clone()
                } else {
                    Some(HashSet::new())
                };
                caps.set_effective(held.clone());
                caps.set_permitted(held);
                process.set_capabilities(Some(caps));
            }
        }
    }
    process.set_user(spec_user);
    Ok(())
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
    let mut added = Vec::new();
    for file in &args.env_files {
        added.extend(engine::parse_env_file(file).map_err(|e| e.to_string())?);
    }
    added.extend(engine::complete_env(&args.env));
    for pair in &added {
        let key = pair.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(pair.clone());
    }
    process.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    if let Some(user) = &args.user {
        set_exec_user(container, &mut process, user)?;
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

/// Loads a container by exact id (runc, with runc's errors), else by name or unique id
/// prefix (docker).
fn load_container(global: &GlobalOpts, root: &RunRoot, query: &str) -> Result<Container, Failure> {
    match Container::load(root.clone(), query) {
        Err(err @ LifecycleError::State(StateError::NotFound(_))) => {
            match super::engine::engine_for_run_root(global, root).load(query) {
                Ok(container) => Ok(container),
                Err(_) => Err(err.into()),
            }
        }
        other => Ok(other?),
    }
}

fn exec(global: &GlobalOpts, root: &RunRoot, args: ExecArgs) -> CommandResult {
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
    let mut container = load_container(global, root, id)?;
    let process = exec_process(&mut container, &args, command)?;
    let terminal = process.terminal().unwrap_or(false);
    let mut options = ExecOptions {
        preserve_fds: args.preserve_fds,
        ..ExecOptions::default()
    };
    if is_engine_container(&container) && !terminal {
        // docker exec: stdin only with -i, no output when detached.
        let stdio = |fd| -> Result<OwnedFd, Failure> {
            let null = if fd == 0 {
                !args.interactive
            } else {
                args.detach
            };
            let file = if null {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            } else {
                // SAFETY: our standard streams stay open for the life of the process.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
                    .try_clone_to_owned()
                    .map(std::fs::File::from)
            };
            Ok(file
                .map_err(|e| format!("setting up the exec's stdio: {e}"))?
                .into())
        };
        options.stdio = Some([stdio(0)?, stdio(1)?, stdio(2)?]);
    }
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

fn ps(root: &RunRoot, id: &str, args: PsArgs) -> CommandResult {
    let container = Container::load(root.clone(), id)?;
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
    let mut table = vec![
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
            .map(str::to_string)
            .to_vec(),
    ];
    table.extend(rows.into_iter().map(Vec::from));
    super::print_table(&table);
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
