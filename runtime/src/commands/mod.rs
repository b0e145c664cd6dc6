//! Turns parsed command lines into library calls.

mod image;

pub use image::ROOT_ENV;

use crate::cli::{Cli, Command};

/// The version text printed by `twinbox --version` (runc-compatible layout).
pub fn version_text() -> String {
    format!(
        "twinbox version {}\nspec: {}\n",
        env!("CARGO_PKG_VERSION"),
        oci_spec::runtime::VERSION
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
            Command::Runtime(command) => crate::runtime_commands::run(&cli.global, command),
            Command::Vm(vm) => match vm.action {
                crate::cli::vm::VmAction::Boot(args) => {
                    crate::vm_boot::boot(&args, cli.global.debug)
                }
                crate::cli::vm::VmAction::Init(args) => crate::vm::init::main(&args.config),
                crate::cli::vm::VmAction::ExecRelay(args) => crate::vm::exec::main(&args.config),
            },
        },
    }
}
