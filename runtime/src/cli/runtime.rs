//! The runc-compatible OCI runtime commands (what podman, conmon and containerd's runc shim
//! call), as clap structs.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::engine::ContainerRunArgs;

/// OCI runtime commands.
#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Create a container from an OCI bundle; its init waits for `start`.
    Create(CreateArgs),
    /// Start the user program of a created container.
    Start(IdArgs),
    /// Run a command in a new container from an image (`run [OPTIONS] IMAGE [COMMAND...]`),
    /// or, with --bundle, create and start an OCI bundle (`run --bundle DIR ID`) as runc does.
    Run(Box<RunArgs>),
    /// Print the state of a container as JSON.
    State(IdArgs),
    /// Send a signal to containers: `kill [-s SIGNAL] CONTAINER...` (default SIGKILL for
    /// containers made by `run IMAGE`), or runc's `kill [--all] ID [SIGNAL]` (default SIGTERM).
    Kill(KillArgs),
    /// Delete a stopped container and everything it left behind.
    Delete(DeleteArgs),
    /// Run a process inside a running container.
    Exec(ExecArgs),
    /// List containers (`ps [-a]`), or with a container id the processes of that container.
    Ps(PsArgs),
    /// List the containers under the run root.
    List(ListArgs),
    /// Freeze every process of a container.
    Pause(IdArgs),
    /// Thaw a paused container.
    Resume(IdArgs),
    /// Print what this runtime supports, as JSON (OCI runtime spec features.md).
    Features,
    /// Write a default config.json into a bundle directory.
    Spec(SpecArgs),
}

/// A command that takes only a container id.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Container id.
    pub id: String,
}

/// Options shared by `create` and `run`.
#[derive(Debug, Args)]
pub struct CreateFlags {
    /// Unix socket to send the pseudo-terminal's master to (process.terminal).
    #[arg(long, value_name = "SOCKET")]
    pub console_socket: Option<PathBuf>,

    /// Write the init's pid to this file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Use MS_MOVE and chroot instead of pivot_root (for roots on ramfs).
    #[arg(long)]
    pub no_pivot: bool,

    /// Keep the caller's session keyring instead of creating one per container.
    #[arg(long)]
    pub no_new_keyring: bool,

    /// Pass this many extra fds (3, 4, ...) to the container.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: u32,
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory (holding config.json).
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,

    #[command(flatten)]
    pub flags: CreateFlags,

    /// Container id.
    pub id: String,
}

/// `run`: with `--bundle`, runc's run of an OCI bundle; the docker-style `run IMAGE [CMD]` of
/// the image store shares this subcommand.
#[derive(Debug, Args)]
#[command(
    override_usage = "twinbox run [OPTIONS] IMAGE [COMMAND [ARG...]]\n       twinbox run --bundle DIR [OPTIONS] ID"
)]
pub struct RunArgs {
    /// The bundle directory (holding config.json): selects the OCI runtime form `run
    /// --bundle DIR ID`.
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,

    #[command(flatten)]
    pub flags: CreateFlags,

    /// Do not wait: leave the container running in the background.
    #[arg(short, long)]
    pub detach: bool,

    /// With --bundle: keep the container's state after it exits (do not delete it).
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub image: ContainerRunArgs,

    /// IMAGE [COMMAND [ARG...]], or with --bundle the container id.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

/// `kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container, not just its init.
    #[arg(short, long)]
    pub all: bool,

    /// Signal name (KILL, SIGTERM) or number; every argument is then a container.
    #[arg(short, long, value_name = "SIGNAL")]
    pub signal: Option<String>,

    /// Containers (name, id or unique id prefix); runc's form `ID SIGNAL` is accepted too.
    #[arg(required = true, value_name = "CONTAINER")]
    pub targets: Vec<String>,
}

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill the container first if it is still running.
    #[arg(short, long)]
    pub force: bool,

    /// Container id.
    pub id: String,
}

/// `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Unix socket to send the pseudo-terminal's master to.
    #[arg(long, value_name = "SOCKET")]
    pub console_socket: Option<PathBuf>,

    /// Working directory in the container.
    #[arg(short = 'w', long, visible_alias = "workdir")]
    pub cwd: Option<PathBuf>,

    /// Set an environment variable (KEY=VALUE, or KEY to pass twinbox's own); repeatable.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Read environment variables from a file (KEY=VALUE lines); repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,

    /// Keep stdin open (containers made by `run IMAGE` otherwise give exec'd processes an
    /// empty stdin, as docker does).
    #[arg(short, long)]
    pub interactive: bool,

    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,

    /// User as uid[:gid], or a name (name:group) from the container's /etc/passwd.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// Additional group id; repeatable.
    #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
    pub additional_gids: Vec<u32>,

    /// A process.json (the OCI `process` object) describing the process to run.
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,

    /// Do not wait for the process.
    #[arg(short, long)]
    pub detach: bool,

    /// Write the process's pid to this file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Set no_new_privileges for the process.
    #[arg(long)]
    pub no_new_privs: bool,

    /// Add a capability (CAP_X); repeatable.
    #[arg(short, long, value_name = "CAP")]
    pub cap: Vec<String>,

    /// Pass this many extra fds (3, 4, ...) to the process.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: u32,

    /// Accepted for runc compatibility (SELinux is not supported): must be empty.
    #[arg(long, hide = true)]
    pub process_label: Option<String>,

    /// Accepted for runc compatibility (AppArmor is not supported): must be empty.
    #[arg(long, hide = true)]
    pub apparmor: Option<String>,

    /// Container id, then the command and its arguments (unless --process).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Output format of `ps` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON.
    Json,
}

/// `ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// table or json. Listing containers: a docker-like table or a JSON array of containers;
    /// with a container id: ps -ef output of its processes or a JSON array of host pids.
    #[arg(short, long, value_enum, default_value_t)]
    pub format: OutputFormat,

    /// List stopped and created containers too (default: running and paused ones).
    #[arg(short, long)]
    pub all: bool,

    /// Print container ids only.
    #[arg(short, long)]
    pub quiet: bool,

    /// Do not truncate ids and commands.
    #[arg(long)]
    pub no_trunc: bool,

    /// Container id: list its processes (runc's `ps ID`) instead of listing containers.
    pub id: Option<String>,

    /// Options for ps(1) in table format (default -ef).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(short, long, value_enum, default_value_t)]
    pub format: OutputFormat,

    /// Print only the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `spec`.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Where to write config.json.
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,

    /// A config for a rootless container (user namespace mapping the caller).
    #[arg(long)]
    pub rootless: bool,
}
