//! `boot-stopwatch MARKER -- VMM [ARGS...]`: times a VMM run the same way whatever the VMM
//! (twinbox's, QEMU, ...), for the boot-time benchmark in the emulated KVM host.
//!
//! It starts the VMM with its stdout (the guest's serial console) on a pipe, copies that
//! output through, and prints two times measured from just before the spawn:
//! `stopwatch.marker_ms` when a line containing MARKER (printed by the guest's init) arrived,
//! and `stopwatch.exit_ms` when the VMM exited; then `stopwatch.status`. It exits with the
//! VMM's status, or 1 when the marker never came.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

fn run(marker: &str, program: &str, args: &[String]) -> Result<ExitCode, String> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let mut marker_at = None;
    if let Some(stdout) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        for line in BufReader::new(stdout).split(b'\n') {
            let line = line.map_err(|e| format!("reading the output of {program}: {e}"))?;
            if marker_at.is_none() && String::from_utf8_lossy(&line).contains(marker) {
                marker_at = Some(start.elapsed());
            }
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    let exit = start.elapsed();
    let ms = |d: std::time::Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    if let Some(marker_at) = marker_at {
        println!("stopwatch.marker_ms={}", ms(marker_at));
    }
    println!("stopwatch.exit_ms={}", ms(exit));
    println!("stopwatch.status={}", status.code().unwrap_or(-1));
    match (marker_at, status.code()) {
        (None, _) => Err(format!("{program} never printed `{marker}`")),
        (Some(_), Some(0)) => Ok(ExitCode::SUCCESS),
        (Some(_), code) => Ok(ExitCode::from(
            code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [marker, separator, program, rest @ ..] if separator == "--" => run(marker, program, rest),
        _ => Err("usage: boot-stopwatch MARKER -- VMM [ARGS...]".to_string()),
    };
    result.unwrap_or_else(|error| {
        eprintln!("boot-stopwatch: {error}");
        ExitCode::FAILURE
    })
}
