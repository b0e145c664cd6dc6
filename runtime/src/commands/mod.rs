//! Turns parsed command lines into library calls: one module per command family (image
//! store, OCI runtime), each a thin layer over the library.

pub mod features;
mod image;
mod runtime;

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
            Command::Runtime(command) => runtime::run(&cli.global, command),
        },
    }
}
