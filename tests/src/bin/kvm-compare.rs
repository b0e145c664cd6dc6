//! `kvm-compare`: `twinbox compare` with VM mode measured inside the emulated KVM host (L1),
//! for hosts whose own /dev/kvm cannot boot twinbox's guest kernel (PVM). Container mode is
//! measured again in the same L1, so the container/VM ratio is like for like.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use twinbox::compare::render::{self, Format};
use twinbox::compare::report::Report;
use twinbox_tests::kvm_compare::EmulatedCompare;
use twinbox_tests::kvm_host::KvmHost;

const EXAMPLE: &str = "Example: container vs VM mode, 5 timed starts and density up to 10 each:

  cargo build --workspace --release
  cargo run --release -p twinbox-tests --bin kvm-compare -- --out report busybox:latest \\
    --runs 5 --density 10

All arguments after IMAGE go to `twinbox compare` in L1 (default there: --modes container,vm
--peers qemu, QEMU microvm booting the VM mode's kernel and image disk). L1 runs at TCG speed: its timings are valid only as ratios.";

/// Exit status for failures of the harness itself (as podman and docker use 125).
const HARNESS_FAILURE: u8 = 125;

/// Runs `twinbox compare IMAGE ARGS...` inside the emulated KVM host and prints its report.
#[derive(Parser, Debug)]
#[command(name = "kvm-compare", version, after_help = EXAMPLE)]
struct Cli {
    /// The host's image store (as `twinbox --root`).
    #[arg(
        long,
        value_name = "DIR",
        env = "TWINBOX_ROOT",
        default_value = "/var/lib/twinbox"
    )]
    root: PathBuf,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// Also write report.json, report.html and report.txt into DIR.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Time `twinbox compare` may take inside L1, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    timeout: u64,
    /// Image in the host store.
    image: String,
    /// Arguments for `twinbox compare` in L1 (e.g. `--runs 5 --density 10 -- /bin/true`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    compare_args: Vec<String>,
}

/// `--format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
    Html,
}

fn run(cli: &Cli) -> Result<String, String> {
    let mut compare_args = cli.compare_args.clone();
    let given = |flag: &str| {
        compare_args
            .iter()
            .take_while(|a| *a != "--")
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let defaults: Vec<&str> = [("--modes", "container,vm"), ("--peers", "qemu")]
        .into_iter()
        .filter(|(flag, _)| !given(flag))
        .flat_map(|(flag, value)| [flag, value])
        .collect();
    compare_args.splice(0..0, defaults.into_iter().map(str::to_string));
    let work = tempfile::Builder::new()
        .prefix("twinbox-kvm-compare-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let host = KvmHost::prepare().map_err(|e| e.to_string())?;
    eprintln!(
        "kvm-compare: booting the emulated KVM host and running `twinbox compare {} {}` in it",
        cli.image,
        compare_args.join(" ")
    );
    let run = EmulatedCompare {
        store_root: cli.root.clone(),
        image: cli.image.clone(),
        compare_args,
        timeout: Duration::from_secs(cli.timeout),
    }
    .run(&host, work.path())
    .map_err(|e| e.to_string())?;
    for leftover in &run.leftovers {
        eprintln!("kvm-compare: left behind in L1: {leftover}");
    }
    eprintln!(
        "kvm-compare: L1 run took {:.0} s",
        run.elapsed.as_secs_f64()
    );
    let report = Report::from_json(&run.report_json).map_err(|e| e.to_string())?;
    if let Some(dir) = &cli.out {
        twinbox::compare::orchestrate::write_out(&report, dir).map_err(|e| e.to_string())?;
    }
    let format = match cli.format {
        OutputFormat::Table => Format::Table,
        OutputFormat::Json => Format::Json,
        OutputFormat::Html => Format::Html,
    };
    render::render(&report, format).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("kvm-compare: {error}");
            ExitCode::from(HARNESS_FAILURE)
        }
    }
}
