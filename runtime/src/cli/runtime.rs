//! The runc-compatible OCI runtime commands (what podman, conmon and containerd's runc shim
//! call), as clap structs.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// OCI runtime commands.
#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Create a container from an OCI bundle; its init waits for `start`.
    Create(CreateArgs),
    /// Start the user program of a created container.
    Start(IdArgs),
    /// Create and start a container from an OCI bundle (`run --bundle DIR ID`), wait for it
    /// and delete it.
    Run(RunArgs),
    /// Print the state of a container as JSON.
    State(IdArgs),
    /// Send a signal to a container's init (default SIGTERM), or to all its processes.
    Kill(KillArgs),
    /// Delete a stopped container and everything it left behind.
    Delete(DeleteArgs),
    /// Run a process inside a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
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

    /// Keep the container's state after it exits (do not delete it).
    #[arg(long)]
    pub keep: bool,

    /// With --bundle: the container id.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ID")]
    pub args: Vec<String>,
}

/// `kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container, not just its init.
    #[arg(short, long)]
    pub all: bool,

    /// Container id.
    pub id: String,

    /// Signal name (TERM, SIGTERM) or number.
    #[arg(default_value = "TERM")]
    pub signal: String,
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
    #[arg(long)]
    pub cwd: Option<PathBuf>,

    /// Set an environment variable (KEY=VALUE); repeatable.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,

    /// User as uid[:gid].
    #[arg(short, long, value_name = "UID[:GID]")]
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
    /// table (ps -ef output of the container's processes) or json (an array of host pids).
    #[arg(short, long, value_enum, default_value_t)]
    pub format: OutputFormat,

    /// Container id.
    pub id: String,

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
