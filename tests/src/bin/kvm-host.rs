//! `kvm-host`: run a shell script inside the emulated KVM host (L1), for people and benches.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use twinbox_tests::kvm_host::{Job, KvmHost, l2_initramfs};

/// Boots the guest kernel under QEMU microvm inside L1 (see `--help`).
const EXAMPLE: &str =
    "Example: boot twinbox's guest kernel (L2) under QEMU microvm inside L1, with init.sh
(ending in `reboot -f`) as the guest's init:

  cargo run -p twinbox-tests --bin kvm-host -- --qemu --guest-kernel --l2-init init.sh -- \\
    'qemu-system-x86_64 -M microvm,acpi=off -enable-kvm -cpu host -nodefaults \\
     -display none -serial stdio -no-reboot -kernel /l2/vmlinux \\
     -initrd /l2/initramfs.cpio -append \"console=ttyS0 reboot=t panic=-1 quiet\"'";

/// Exit status for failures of the harness itself (as podman and docker use 125).
const HARNESS_FAILURE: u8 = 125;

/// Runs SCRIPT with /bin/sh (busybox) inside L1, a QEMU TCG VM with emulated AMD SVM and a
/// real /dev/kvm, and exits with the script's exit status (125 when the harness fails).
#[derive(Parser, Debug)]
#[command(name = "kvm-host", version, after_help = EXAMPLE)]
struct Cli {
    /// Place a host file into L1 (default path: /job/<file name>, the script's directory).
    #[arg(short, long, value_name = "HOST[:L1_PATH]")]
    file: Vec<String>,
    /// Place a dynamically linked host program into L1, with its shared libraries.
    #[arg(short, long, value_name = "HOST[:L1_PATH]")]
    program: Vec<String>,
    /// Attach a host disk image to L1 as a virtio disk (/dev/vda, /dev/vdb, ... in order);
    /// `:ro` makes it read-only.
    #[arg(short, long, value_name = "IMAGE[:ro]")]
    disk: Vec<String>,
    /// Place the host's qemu-system-x86_64 (with libraries and microvm firmware) into L1.
    #[arg(long)]
    qemu: bool,
    /// Place twinbox's guest kernel at /l2/vmlinux and /l2/bzImage (built when missing).
    #[arg(long)]
    guest_kernel: bool,
    /// Build an L2 initramfs (busybox + FILE as /init) at /l2/initramfs.cpio.
    #[arg(long, value_name = "FILE")]
    l2_init: Option<PathBuf>,
    /// Read the script from FILE instead of the command line.
    #[arg(long, value_name = "FILE", conflicts_with = "script")]
    script_file: Option<PathBuf>,
    /// Kill the script after SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    timeout: u64,
    /// L1 memory in MiB (default: 1 GiB plus twice the size of the files).
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Also print L1's console (kernel messages, harness markers) on stderr.
    #[arg(long)]
    console: bool,
    /// The shell script L1 runs.
    #[arg(required_unless_present = "script_file")]
    script: Option<String>,
}

/// Splits `HOST[:L1_PATH]`; the default L1 path is /job/<file name>.
fn placement(spec: &str) -> (PathBuf, String) {
    match spec.split_once(':') {
        Some((host, l1)) => (PathBuf::from(host), l1.to_string()),
        None => {
            let host = PathBuf::from(spec);
            let name = host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (host, format!("/job/{name}"))
        }
    }
}

fn build_job(cli: &Cli) -> Result<Job, String> {
    let script = match (&cli.script_file, &cli.script) {
        (Some(file), _) => std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the script {}: {e}", file.display()))?,
        (None, Some(script)) => script.clone(),
        (None, None) => unreachable!("clap requires a script or --script-file"),
    };
    let mut job = Job::new(script).timeout(Duration::from_secs(cli.timeout));
    for spec in &cli.file {
        let (host, l1) = placement(spec);
        job = job.file(host, &l1);
    }
    for spec in &cli.program {
        let (host, l1) = placement(spec);
        job = job.program(host, &l1);
    }
    for spec in &cli.disk {
        job = match spec.strip_suffix(":ro") {
            Some(image) => job.disk(image, true),
            None => job.disk(spec, false),
        };
    }
    if cli.qemu {
        job = job.qemu();
    }
    if cli.guest_kernel {
        let kernel = twinbox_tests::guest_kernel::GuestKernel::build(
            &twinbox_tests::target_dir().join("guest-kernel"),
        )
        .map_err(|e| e.to_string())?;
        job = job
            .file(&kernel.vmlinux, "/l2/vmlinux")
            .file(&kernel.bzimage, "/l2/bzImage");
    }
    if let Some(init) = &cli.l2_init {
        let text = std::fs::read_to_string(init)
            .map_err(|e| format!("cannot read the L2 init {}: {e}", init.display()))?;
        let initramfs = l2_initramfs(&text).map_err(|e| e.to_string())?;
        job = job.data("/l2/initramfs.cpio", initramfs, 0o644);
    }
    if let Some(memory) = cli.memory {
        job = job.memory_mib(memory);
    }
    Ok(job)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = build_job(&cli).and_then(|job| {
        let host = KvmHost::prepare().map_err(|e| e.to_string())?;
        host.run(&job).map_err(|e| e.to_string())
    });
    match result {
        Ok(run) => {
            if cli.console {
                eprintln!("{}", run.console);
            }
            print!("{}", run.output);
            eprintln!(
                "kvm-host: L1 run took {:.1} s; the script exited with status {}",
                run.elapsed.as_secs_f64(),
                run.exit_code
            );
            ExitCode::from(u8::try_from(run.exit_code).unwrap_or(HARNESS_FAILURE))
        }
        Err(error) => {
            eprintln!("kvm-host: {error}");
            ExitCode::from(HARNESS_FAILURE)
        }
    }
}
