//! Turns parsed command lines into library calls: one module per command family (image
//! store, OCI runtime, docker-style containers), each a thin layer over the library.

mod compare;
mod engine;
pub mod features;
mod image;
mod runtime;

pub use image::ROOT_ENV;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::cli::{Cli, Command, GlobalOpts};
use crate::engine::RUN_ROOT_ENV;
use crate::engine::monitor::{self, MONITOR_ARG};
use crate::state::RunRoot;

/// The version text printed by `twinbox --version` (runc-compatible layout).
pub fn version_text() -> String {
    format!(
        "twinbox version {}\nspec: {}\n",
        env!("CARGO_PKG_VERSION"),
        oci_spec::runtime::VERSION
    )
}

/// The `twinbox` binary: parses `args` (argv, program name first) and runs the command;
/// returns the process exit code. Usage errors of the docker-style commands exit with 125 as
/// docker's do; a detached container's monitor (`twinbox __monitor ...`) is dispatched before
/// any parsing so that it stays small.
pub fn main(args: Vec<OsString>) -> i32 {
    if args.get(1).is_some_and(|a| a == MONITOR_ARG) {
        return monitor::main(&args[2..]);
    }
    match Cli::try_parse_from(&args) {
        Ok(cli) => run(cli),
        Err(err) => {
            let _ = err.print();
            if !err.use_stderr() {
                0
            } else if subcommand(&args).is_some_and(is_docker_style) {
                125
            } else {
                err.exit_code()
            }
        }
    }
}

/// The subcommand word of `args` (the first argument that is neither an option nor the value
/// of a global option).
fn subcommand(args: &[OsString]) -> Option<&str> {
    let mut rest = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(arg) = rest.next() {
        if matches!(arg, "--root" | "--run-root" | "--log" | "--log-format") {
            rest.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

fn is_docker_style(command: &str) -> bool {
    matches!(
        command,
        "run" | "exec" | "ps" | "kill" | "stop" | "rm" | "logs" | "wait" | "volume" | "inspect"
    )
}

/// Runs one parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    crate::logging::init(&cli.global);
    if cli.version {
        print!("{}", version_text());
        return 0;
    }
    match cli.command {
        None => {
            eprintln!("twinbox: no command given; run `twinbox --help` to list the commands");
            2
        }
        Some(command) => match command {
            Command::Image(command) => image::run(&cli.global, command),
            Command::Runtime(command) => runtime::run(&cli.global, command),
            Command::Engine(command) => engine::run_command(&cli.global, command),
            Command::Compare(args) => compare::run(&cli.global, args),
            Command::Vm(vm) => match vm.action {
                crate::cli::vm::VmAction::Boot(args) => crate::vm_boot::boot(&cli.global, &args),
            },
        },
    }
}

/// The run root of the docker-style commands: `--run-root`, else `$TWINBOX_RUN_ROOT`, else
/// /run/twinbox (`--root` names the image store for them).
pub fn engine_run_root(global: &GlobalOpts) -> RunRoot {
    let dir = global
        .run_root
        .clone()
        .or_else(|| std::env::var_os(RUN_ROOT_ENV).map(PathBuf::from));
    RunRoot::new(dir.as_deref())
}

/// The run root of the commands runc has (and that the docker-style ones share): `--run-root`,
/// else `--root` (runc's meaning, what engines pass), else `$TWINBOX_RUN_ROOT`, else
/// /run/twinbox.
pub fn runtime_run_root(global: &GlobalOpts) -> RunRoot {
    let dir = global
        .run_root
        .clone()
        .or_else(|| global.root.clone())
        .or_else(|| std::env::var_os(RUN_ROOT_ENV).map(PathBuf::from));
    RunRoot::new(dir.as_deref())
}

/// Prints `rows` (the first is the header) as columns separated by three spaces.
pub(crate) fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_subcommand_is_found_past_global_options() {
        assert_eq!(
            subcommand(&args(&["twinbox", "--root", "/s", "--debug", "run", "x"])),
            Some("run")
        );
        assert_eq!(
            subcommand(&args(&["twinbox", "--run-root=/r", "ps"])),
            Some("ps")
        );
        assert_eq!(subcommand(&args(&["twinbox", "--debug"])), None);
    }

    #[test]
    fn usage_errors_of_docker_style_commands_exit_125() {
        assert_eq!(
            main(args(&["twinbox", "run", "--no-such-flag", "img"])),
            125
        );
        assert_eq!(main(args(&["twinbox", "stop"])), 125);
        assert_eq!(main(args(&["twinbox", "create", "--no-such-flag", "x"])), 2);
    }
}
