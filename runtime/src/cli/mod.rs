//! Command-line interface definitions (clap structs only).
//!
//! Parsing is kept apart from the library: every command here is a plain data struct that
//! `crate::commands` turns into library calls. One binary serves two audiences with one
//! command set: people (docker/podman-style image and container commands) and container
//! engines (the runc-compatible OCI runtime commands that podman and containerd call).

pub mod compare;
pub mod engine;
pub mod image;
pub mod runtime;
pub mod vm;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "twinbox",
    about = "Run OCI images as containers or as KVM microVMs"
)]
#[command(disable_version_flag = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    /// Print the version of twinbox and of the OCI runtime spec it implements.
    #[arg(short = 'v', long = "version")]
    pub version: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options accepted before any command (runc-compatible where runc has them).
#[derive(Debug, clap::Args)]
pub struct GlobalOpts {
    /// State directory. For image and docker-style commands: the image store (default
    /// /var/lib/twinbox, or $TWINBOX_ROOT). For OCI runtime commands: the container state
    /// directory (default /run/twinbox), as with runc.
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Container state directory of the docker-style commands (default /run/twinbox, or
    /// $TWINBOX_RUN_ROOT): the same run root the OCI runtime commands use.
    #[arg(long, global = true, value_name = "DIR")]
    pub run_root: Option<PathBuf>,

    /// Write logs to FILE instead of stderr.
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log debug messages.
    #[arg(long, global = true)]
    pub debug: bool,

    /// Interpret linux.cgroupsPath as systemd's slice:prefix:name (cgroups are still managed
    /// through cgroupfs, at the path systemd would use).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: {"level","msg","time"}.
    Json,
}

/// Every twinbox command.
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Image(image::ImageCommand),
    /// The runc-compatible OCI runtime commands.
    #[command(flatten)]
    Runtime(runtime::RuntimeCommand),
    /// The docker-style container commands runc does not have.
    #[command(flatten)]
    Engine(engine::EngineCommand),
    /// Low-level microVM commands (boot a kernel with twinbox's VMM).
    Vm(vm::VmCommand),
    /// Run an image as a container, as a microVM and under peer runtimes, and compare start
    /// time, weight, density and isolation side by side.
    Compare(compare::CompareArgs),
}
