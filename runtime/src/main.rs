//! The `twinbox` binary: hands the command line to the library.

fn main() {
    std::process::exit(twinbox::commands::main(std::env::args_os().collect()));
}
