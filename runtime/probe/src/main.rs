//! `twinbox-probe`: the compare probe binary. See the library docs for what it does.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;

use twinbox_probe::StartMarker;
use twinbox_probe::checks::{self, Options};

const USAGE: &str = "\
usage: twinbox-probe start-marker [--out FILE] [-- COMMAND [ARG...]]
       twinbox-probe isolation [--host-pid PID] [--alloc-test-mib MIB] [--pretty]
       twinbox-probe idle
       /init   (as a peer VMM guest's PID 1)

start-marker  print the workload-start marker line (to FILE instead of stdout with --out),
              then exec COMMAND if one is given
isolation     run the isolation checks and print one JSON document of observations
idle          do nothing until killed (the workload of an idle sandbox)
/init         as PID 1 of a peer VMM's guest: mount the image disk, run the workload of
              /guest-init.json, reset the machine";

/// Parses a flag's value or exits with a usage error.
fn value<T: std::str::FromStr>(flag: &str, raw: Option<OsString>) -> T {
    let raw = raw.unwrap_or_else(|| fail(&format!("{flag} needs a value")));
    raw.to_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| fail(&format!("{flag}: invalid value {raw:?}")))
}

fn fail(message: &str) -> ! {
    eprintln!("twinbox-probe: {message}\n{USAGE}");
    std::process::exit(2)
}

fn start_marker(mut args: impl Iterator<Item = OsString>) -> ! {
    let mut out: Option<OsString> = None;
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--out") => {
                // Any path, UTF-8 or not.
                out = Some(args.next().unwrap_or_else(|| fail("--out needs a value")))
            }
            Some("--") => {
                command.extend(args.by_ref());
                break;
            }
            _ => fail(&format!("start-marker: unexpected argument {arg:?}")),
        }
    }
    let line = format!("{}\n", StartMarker::now().to_line());
    let written = match &out {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(line.as_bytes())),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(line.as_bytes())
                .and_then(|()| stdout.flush())
        }
    };
    if let Err(error) = written {
        eprintln!("twinbox-probe: cannot write the start marker: {error}");
        std::process::exit(1);
    }
    let Some((program, program_args)) = command.split_first() else {
        std::process::exit(0)
    };
    let error = std::process::Command::new(program)
        .args(program_args)
        .exec();
    eprintln!("twinbox-probe: cannot exec {program:?}: {error}");
    std::process::exit(127)
}

fn isolation(mut args: impl Iterator<Item = OsString>) -> ! {
    let mut options = Options::default();
    let mut pretty = false;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--host-pid") => options.host_pid = Some(value("--host-pid", args.next())),
            Some("--alloc-test-mib") => {
                options.allocation_test_mib = Some(value("--alloc-test-mib", args.next()))
            }
            Some("--pretty") => pretty = true,
            _ => fail(&format!("isolation: unexpected argument {arg:?}")),
        }
    }
    let observations = checks::collect(&options);
    let json = if pretty {
        serde_json::to_string_pretty(&observations)
    } else {
        serde_json::to_string(&observations)
    }
    .expect("observations always serialize");
    println!("{json}");
    std::process::exit(0)
}

/// The idle workload: sleeps until a signal ends the process (SIGKILL, or SIGTERM where the
/// probe is not a namespace's PID 1). Touches no memory beyond its own start-up.
fn idle(mut args: impl Iterator<Item = OsString>) -> ! {
    if let Some(arg) = args.next() {
        fail(&format!("idle: unexpected argument {arg:?}"));
    }
    loop {
        std::thread::park();
    }
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    if std::process::id() == 1
        && std::env::args_os()
            .next()
            .is_some_and(|arg0| arg0 == "/init")
    {
        // A guest kernel started the probe as its /init (with the command line's unknown
        // words as arguments, which it ignores). In a container the probe may be PID 1 too,
        // but under its own path.
        twinbox_probe::guest_init::run();
    }
    match args.next().as_ref().and_then(|a| a.to_str()) {
        Some("start-marker") => start_marker(args),
        Some("isolation") => isolation(args),
        Some("idle") => idle(args),
        Some("--version") => println!("twinbox-probe {}", env!("CARGO_PKG_VERSION")),
        Some("--help" | "-h") => println!("{USAGE}"),
        Some(other) => fail(&format!("unknown mode {other:?}")),
        None => fail("no mode given"),
    }
}
