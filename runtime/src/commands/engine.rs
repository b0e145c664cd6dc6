//! The docker-style container commands: thin wrappers that turn CLI structs into
//! [`crate::engine`] calls, print results, and return docker's exit codes (the container's
//! own for `run`, 125 when twinbox itself fails there, 1 for the other commands' errors).

use std::io::Write;
use std::time::Duration;

use crate::backend::BackendKind;
use crate::cli::GlobalOpts;
use crate::cli::engine::{
    ContainerRunArgs, EngineCommand, Isolation, LogsArgs, RmArgs, StopArgs, VolumeCommand, WaitArgs,
};
use crate::cli::image::Format;
use crate::cli::runtime::{OutputFormat, PsArgs, RunArgs};
use crate::engine::logs::{self, PrintOptions};
use crate::engine::volumes::VolumeStore;
use crate::engine::{
    self, DEFAULT_STOP_TIMEOUT, Engine, EngineError, RunOutcome, RunRequest, annotations,
};
use crate::lifecycle::parse_signal;
use crate::state::RunRoot;

use super::{engine_run_root, image::spec_options, image::store_root, print_table};

/// The engine of the docker-style commands: `--root` store, `--run-root` run root.
pub fn engine_for(global: &GlobalOpts) -> Engine {
    Engine::new(store_root(global), engine_run_root(global))
}

/// An engine over `root`, the run root of the commands runc has: they address containers by
/// name and id prefix too.
pub fn engine_for_run_root(global: &GlobalOpts, root: &RunRoot) -> Engine {
    Engine::new(store_root(global), root.clone())
}

/// Reports `err` and returns its exit code.
fn fail(err: &EngineError) -> i32 {
    eprintln!("twinbox: {err}");
    err.exit_code()
}

/// Runs the commands of one invocation on several containers, as docker does: each success
/// prints the name given, each failure is reported, and the exit code is 1 if any failed.
fn for_each(names: &[String], mut action: impl FnMut(&str) -> Result<(), EngineError>) -> i32 {
    let mut code = 0;
    for name in names {
        match action(name) {
            Ok(()) => println!("{name}"),
            Err(err) => {
                eprintln!("twinbox: {err}");
                code = 1;
            }
        }
    }
    code
}

/// `twinbox run [OPTIONS] IMAGE [COMMAND...]`.
pub fn run(global: &GlobalOpts, args: RunArgs) -> i32 {
    match run_request(args).and_then(|request| engine_for(global).run(request)) {
        Ok(RunOutcome::Detached { id }) => {
            println!("{id}");
            0
        }
        Ok(RunOutcome::Exited {
            id,
            code,
            oom_killed,
        }) => {
            if oom_killed {
                eprintln!(
                    "twinbox: container {} was killed by the kernel's OOM killer (memory limit \
                     reached)",
                    &id[..12]
                );
            }
            code
        }
        Err(err) => fail(&err),
    }
}

fn invalid(option: &'static str, value: &str, reason: &str) -> EngineError {
    EngineError::InvalidOption {
        option,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Turns `run`'s arguments into a [`RunRequest`], checking every value.
fn run_request(args: RunArgs) -> Result<RunRequest, EngineError> {
    let Some((image, command)) = args.args.split_first() else {
        return Err(invalid(
            "arguments",
            "",
            "`twinbox run` needs an image: twinbox run [OPTIONS] IMAGE [COMMAND [ARG...]] \
             (or `twinbox run --bundle DIR ID` for an OCI bundle)",
        ));
    };
    let options: ContainerRunArgs = args.image;
    let mut spec = spec_options(&options.spec)?;
    spec.command = command.to_vec();
    let mut env = Vec::new();
    for file in &options.env_files {
        env.extend(engine::parse_env_file(file)?);
    }
    env.extend(engine::complete_env(&options.spec.env));
    spec.env = env;
    if let Some(signal) = &options.stop_signal {
        parse_signal(signal).map_err(|reason| invalid("--stop-signal", signal, &reason))?;
    }
    let isolation = options.isolation.map(|i| match i {
        Isolation::Container => BackendKind::Container,
        Isolation::Vm => BackendKind::Vm,
    });
    let resources = engine::Resources {
        memory: options
            .memory
            .as_deref()
            .map(engine::parse_memory)
            .transpose()?,
        cpu_quota: options
            .cpus
            .as_deref()
            .map(|cpus| engine::parse_cpus(cpus, isolation))
            .transpose()?,
        pids: options.pids_limit,
    };
    let network: engine::NetworkMode = options
        .network
        .as_deref()
        .map(str::parse)
        .transpose()?
        .unwrap_or_default();
    if isolation == Some(BackendKind::Vm) && network == engine::NetworkMode::Host {
        return Err(invalid(
            "--network",
            "host",
            "a VM has its own kernel and cannot share the host's interfaces; \
             leave --network out (none) with --isolation vm",
        ));
    }
    if let Some(kernel) = &options.kernel
        && isolation != Some(BackendKind::Vm)
    {
        return Err(invalid(
            "--kernel",
            &kernel.display().to_string(),
            "a guest kernel only applies to --isolation vm",
        ));
    }
    Ok(RunRequest {
        image: image.clone(),
        spec,
        name: options.name,
        auto_remove: options.rm,
        detach: args.detach,
        interactive: options.interactive,
        volumes: options
            .volumes
            .iter()
            .map(|v| engine::parse_volume(v))
            .collect::<Result<_, _>>()?,
        tmpfs: options
            .tmpfs
            .iter()
            .map(|t| engine::parse_tmpfs(t))
            .collect::<Result<_, _>>()?,
        resources,
        network,
        isolation,
        kernel: options.kernel.map(|k| std::path::absolute(&k).unwrap_or(k)),
        stop_signal: options.stop_signal,
        stop_timeout: options.stop_timeout,
    })
}

/// `twinbox ps [-a] [-q] [--format json]`: the engine's containers.
pub fn ps(global: &GlobalOpts, args: &PsArgs) -> i32 {
    let rows = match engine_for(global).list(args.all) {
        Ok(rows) => rows,
        Err(err) => return fail(&err),
    };
    let short = |id: &str| {
        if args.no_trunc {
            id.to_string()
        } else {
            id.chars().take(12).collect()
        }
    };
    if args.quiet {
        rows.iter().for_each(|r| println!("{}", short(&r.id)));
        return 0;
    }
    if args.format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return 0;
    }
    let command = |text: &str| {
        if args.no_trunc || text.chars().count() <= 20 {
            text.to_string()
        } else {
            text.chars().take(19).chain(['…']).collect()
        }
    };
    let mut table = vec![
        [
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "NAMES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for row in &rows {
        table.push(vec![
            short(&row.id),
            row.image.clone(),
            command(&row.command),
            engine::ago(&row.created_at),
            row.status.clone(),
            row.names.clone(),
        ]);
    }
    print_table(&table);
    0
}

/// The docker-style commands runc does not have.
pub fn run_command(global: &GlobalOpts, command: EngineCommand) -> i32 {
    let engine = engine_for(global);
    match command {
        EngineCommand::Stop(args) => stop(&engine, &args),
        EngineCommand::Rm(args) => rm(&engine, &args),
        EngineCommand::Logs(args) => match logs(&engine, &args) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("twinbox: {err}");
                1
            }
        },
        EngineCommand::Wait(args) => wait(&engine, &args),
        EngineCommand::Volume(command) => match volume(&engine, command) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("twinbox: {err}");
                1
            }
        },
    }
}

fn stop(engine: &Engine, args: &StopArgs) -> i32 {
    for_each(&args.containers, |name| {
        let container = engine.load(name)?;
        let annotation = |key: &str| container.record().annotations.get(key).cloned();
        let signal_name = args
            .signal
            .clone()
            .or_else(|| annotation(annotations::STOP_SIGNAL))
            .unwrap_or_else(|| "TERM".into());
        let signal = parse_signal(&signal_name)
            .map_err(|reason| invalid("stop signal", &signal_name, &reason))?;
        let seconds = args
            .time
            .or_else(|| annotation(annotations::STOP_TIMEOUT).and_then(|t| t.parse().ok()))
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        engine.stop(&container, signal, Duration::from_secs(seconds))
    })
}

fn rm(engine: &Engine, args: &RmArgs) -> i32 {
    for_each(&args.containers, |name| {
        let id = engine.resolve(name)?;
        engine.remove(&id, args.force, args.volumes)
    })
}

fn wait(engine: &Engine, args: &WaitArgs) -> i32 {
    let mut code = 0;
    for name in &args.containers {
        match engine.wait(name) {
            Ok(exit) => println!("{exit}"),
            Err(err) => {
                eprintln!("twinbox: {err}");
                code = 1;
            }
        }
    }
    code
}

fn logs(engine: &Engine, args: &LogsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let container = engine.load(&args.container)?;
    let name = engine::display_name(&container).to_string();
    let Some(path) = container.record().annotations.get(annotations::LOG_PATH) else {
        return Err(format!(
            "container {name} ran in the foreground: its output went to the terminal of \
             `twinbox run` and was not logged (run it with -d to keep a log)"
        )
        .into());
    };
    let tail = match args.tail.as_deref() {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse()
                .map_err(|_| invalid("--tail", n, "expected a number of lines or \"all\""))?,
        ),
    };
    let monitor = container.record().creator;
    let dir = engine.run_root().container_dir(container.id());
    let writer_alive = || monitor.is_alive() && dir.is_dir();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    logs::print(
        std::path::Path::new(path),
        PrintOptions {
            timestamps: args.timestamps,
            tail,
        },
        args.follow,
        &writer_alive,
        &mut stdout.lock(),
        &mut stderr.lock(),
    )
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("container {name} has no log yet: its monitor did not start").into()
        } else {
            Box::<dyn std::error::Error>::from(format!("reading the log {path}: {e}"))
        }
    })
}

fn volume(engine: &Engine, command: VolumeCommand) -> Result<i32, EngineError> {
    let store = VolumeStore::open(engine.store_root())?;
    let in_use = |name: &str| -> Result<(), EngineError> {
        let users = engine.volume_users(name)?;
        if users.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Volume {
                name: name.to_string(),
                reason: format!(
                    "in use by container(s) {}; remove them first (`twinbox rm`)",
                    users.join(", ")
                ),
            })
        }
    };
    match command {
        VolumeCommand::Create(args) => {
            let (volume, _) = store.create(args.name.as_deref(), false)?;
            println!("{}", volume.name);
        }
        VolumeCommand::Ls(args) => {
            let volumes = store.list()?;
            if args.quiet {
                volumes.iter().for_each(|v| println!("{}", v.name));
            } else if args.format == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&volumes).unwrap_or_default()
                );
            } else {
                let mut table = vec![vec!["DRIVER".to_string(), "VOLUME NAME".to_string()]];
                table.extend(
                    volumes
                        .iter()
                        .map(|v| vec!["local".to_string(), v.name.clone()]),
                );
                print_table(&table);
            }
        }
        VolumeCommand::Inspect(args) => {
            let volumes = args
                .names
                .iter()
                .map(|name| {
                    let volume = store.get(name)?;
                    let mut value = serde_json::to_value(&volume).unwrap_or_default();
                    value["Driver"] = "local".into();
                    value["Scope"] = "local".into();
                    Ok(value)
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&volumes).unwrap_or_default()
            );
        }
        VolumeCommand::Rm(args) => {
            let mut code = 0;
            for name in &args.names {
                let result = in_use(name).and_then(|()| store.remove(name));
                match result {
                    Ok(()) => println!("{name}"),
                    Err(_) if args.force && store.get(name).is_err() => {}
                    Err(err) => {
                        eprintln!("twinbox: {err}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        VolumeCommand::Prune => {
            let mut removed = Vec::new();
            for volume in store.list()? {
                if in_use(&volume.name).is_ok() {
                    store.remove(&volume.name)?;
                    removed.push(volume.name);
                }
            }
            println!("Deleted Volumes:");
            removed.iter().for_each(|v| println!("{v}"));
            println!("\nTotal: {} volume(s)", removed.len());
        }
    }
    let _ = std::io::stdout().flush();
    Ok(0)
}
