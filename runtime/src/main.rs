//! The `twinbox` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() {
    let cli = twinbox::cli::Cli::parse();
    std::process::exit(twinbox::commands::run(cli));
}
