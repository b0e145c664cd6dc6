//! The docker/podman-style container commands (`run IMAGE`, `stop`, `rm`, `logs`, `wait`,
//! `volume`), as clap structs. `run`, `ps`, `kill` and `exec` share their subcommand with the
//! runc-compatible commands (see [`super::runtime`]); their docker-style options live here.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::image::{Format, SpecArgs};

/// Container commands of the docker-style interface that runc does not have.
#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// Stop running containers: the image's StopSignal (default SIGTERM), then SIGKILL after
    /// the timeout.
    Stop(StopArgs),
    /// Remove containers (their root filesystem, state and logs).
    Rm(RmArgs),
    /// Print the output of a detached container.
    Logs(LogsArgs),
    /// Wait for containers to exit and print their exit codes.
    Wait(WaitArgs),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

/// The isolation a container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    /// Namespaces, cgroups, capabilities and seccomp on the host kernel.
    Container,
    /// A KVM microVM with its own kernel.
    Vm,
}

/// The options of `twinbox run IMAGE [COMMAND...]` (docker/podman style). None of them applies
/// to runc's `run --bundle DIR ID`.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct ContainerRunArgs {
    #[command(flatten)]
    pub spec: SpecArgs,

    /// Remove the container (state, root filesystem, anonymous volumes) when it exits.
    #[arg(long)]
    pub rm: bool,

    /// Name of the container (default: a generated one). Names are unique.
    #[arg(long)]
    pub name: Option<String>,

    /// Read environment variables from a file (KEY=VALUE lines, # comments). Repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,

    /// Keep stdin open and connect it to the container.
    #[arg(short, long)]
    pub interactive: bool,

    /// Bind mount HOST:CONTAINER[:ro], named volume NAME:CONTAINER[:ro], or anonymous volume
    /// CONTAINER. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:OPTS]")]
    pub volumes: Vec<String>,

    /// Mount a tmpfs at PATH, with mount options after a colon (e.g. /run:size=64m). Repeatable.
    #[arg(long, value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<String>,

    /// Memory limit, e.g. 512m or 1g (bytes without a unit).
    #[arg(short, long, value_name = "BYTES")]
    pub memory: Option<String>,

    /// Number of CPUs the container may use, e.g. 1.5.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,

    /// Maximum number of processes (0 or -1: unlimited).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,

    /// Network: none (own network namespace with only a loopback interface, the default) or
    /// host (the host's interfaces).
    #[arg(long, visible_alias = "net", value_name = "MODE")]
    pub network: Option<String>,

    /// Isolation backend: container (default) or vm.
    #[arg(long, value_enum)]
    pub isolation: Option<Isolation>,

    /// Guest kernel (vmlinux or bzImage) of an `--isolation vm` container (default: the
    /// config file's `[vm] kernel`, else twinbox's own).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,

    /// Signal that `stop` sends first (default: the image's StopSignal, else SIGTERM).
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,

    /// Seconds `stop` waits before SIGKILL (default 10).
    #[arg(long, value_name = "SECONDS")]
    pub stop_timeout: Option<u64>,
}

/// `stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for the container to exit before killing it (default: the container's
    /// --stop-timeout, else 10).
    #[arg(
        short = 't',
        long = "time",
        visible_alias = "timeout",
        value_name = "SECONDS"
    )]
    pub time: Option<u64>,

    /// Signal to send first (default: the container's stop signal).
    #[arg(short, long, value_name = "SIGNAL")]
    pub signal: Option<String>,

    /// Containers (name, id or unique id prefix).
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill running containers first.
    #[arg(short, long)]
    pub force: bool,

    /// Also remove the containers' anonymous volumes.
    #[arg(short, long)]
    pub volumes: bool,

    /// Containers (name, id or unique id prefix).
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    pub follow: bool,

    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(short, long)]
    pub timestamps: bool,

    /// Print only the last N lines ("all" for everything).
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<String>,

    /// Container (name, id or unique id prefix).
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

/// `wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Containers (name, id or unique id prefix).
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `volume`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a named volume (a generated name when none is given).
    Create(VolumeCreateArgs),
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls(VolumeLsArgs),
    /// Show volumes as JSON.
    Inspect(VolumeNamesArgs),
    /// Remove volumes that no container uses.
    #[command(visible_alias = "remove")]
    Rm(VolumeRmArgs),
    /// Remove every volume that no container uses.
    Prune,
}

/// `volume create`.
#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    /// Volume name.
    pub name: Option<String>,
}

/// `volume ls`.
#[derive(Debug, Args)]
pub struct VolumeLsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print volume names only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `volume inspect`.
#[derive(Debug, Args)]
pub struct VolumeNamesArgs {
    /// Volume names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `volume rm`.
#[derive(Debug, Args)]
pub struct VolumeRmArgs {
    /// Do not fail for volumes that do not exist.
    #[arg(short, long)]
    pub force: bool,
    /// Volume names.
    #[arg(required = true)]
    pub names: Vec<String>,
}
