//! Real-kernel boot time: twinbox's VMM against QEMU's microvm machine.
//!
//! Inside one emulated KVM host run (L1: QEMU TCG with emulated SVM and a real /dev/kvm; see
//! `twinbox_tests::kvm_host`), both VMMs boot the project's guest kernel (vmlinux, PVH entry)
//! with the same initramfs, command line, memory and vCPU count, N times each, interleaved
//! (the order alternates every round, so drift in L1 hits both alike). `boot-stopwatch` times
//! both the same way, from spawning the VMM: to the first line the guest's init prints (time
//! to init) and to the VMM's exit (the init reboots at once). twinbox's own boot timer (VMM
//! start to the init's boot-timer write) and the guest's uptime at init are shown beside.
//!
//! L2 runs at TCG speed, tens of times slower than on hardware: only the ratios mean
//! anything. Target: twinbox <= 0.8x QEMU microvm to init.
//!
//! `cargo bench -p twinbox-benches --bench boot_vs_qemu` after `cargo build --workspace
//! --release` (`make bench` does both). TWINBOX_BENCH_RUNS sets N (default 10).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use twinbox_benches::{ms, percentile};
use twinbox_tests::kvm_host::{
    Job, JobOutput, QemuMicrovm, StepScript, kvm_host, l2_initramfs, shell_quote,
    without_debug_info,
};
use twinbox_tests::vm_boot::VmSummary;
use twinbox_tests::{guest_kernel, twinbox_bin, workspace_bin};

/// The first thing the guest's init prints.
const MARKER: &str = "TWINBOX-BENCH-INIT";

/// The guest's init: the marker first, then its uptime, the boot-timer write (ignored by
/// QEMU, which has no such device), and a reboot that ends either VMM.
const L2_INIT: &str = r#"#!/bin/sh
echo TWINBOX-BENCH-INIT
mount -t proc proc /proc
echo "UPTIME=$(cut -d' ' -f1 /proc/uptime)"
mount -t devtmpfs devtmpfs /dev
devmem 0xd0000000 8 123
reboot -f
"#;

/// Guest memory and command line, the same for both VMMs.
const MEMORY_MIB: u32 = 256;
const KERNEL: &str = "/l2/vmlinux";
const INITRD: &str = "/l2/initramfs.cpio";
/// A bound on one boot (a hang, not a measure).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Twinbox,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Twinbox => "twinbox",
            Vmm::Qemu => "qemu",
        }
    }

    /// The L1 shell command that boots the guest once under `boot-stopwatch`.
    fn step(self, qemu: &QemuMicrovm) -> String {
        let stopwatch = format!("boot-stopwatch {MARKER} --");
        match self {
            Vmm::Twinbox => format!(
                "{stopwatch} twinbox --log /tmp/vm.log --log-format json vm boot --kernel {KERNEL} \
                 --initrd {INITRD} --mem {MEMORY_MIB}M --console --cmdline {}\n\
                 status=$?\ncat /tmp/vm.log\nrm -f /tmp/vm.log\nexit $status",
                shell_quote(QemuMicrovm::new(KERNEL).cmdline())
            ),
            Vmm::Qemu => format!("{stopwatch} {}", qemu.command()),
        }
    }
}

/// The measures of one boot, in ms.
#[derive(Default)]
struct Samples {
    to_init: Vec<f64>,
    to_exit: Vec<f64>,
    uptime_at_init: Vec<f64>,
    boot_timer: Vec<f64>,
}

fn value(output: &str, key: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

impl Samples {
    fn add(&mut self, vmm: Vmm, step: &str, run: &JobOutput) {
        let step = run
            .step(step)
            .and_then(|s| s.check())
            .unwrap_or_else(|e| panic!("{e}"));
        let out = &step.output;
        let field = |key| value(out, key).unwrap_or_else(|| panic!("no {key} in:\n{out}"));
        self.to_init.push(field("stopwatch.marker_ms"));
        self.to_exit.push(field("stopwatch.exit_ms"));
        self.uptime_at_init.push(field("UPTIME") * 1e3);
        if vmm == Vmm::Twinbox {
            let summary = VmSummary::find(out).unwrap_or_else(|| panic!("no summary in:\n{out}"));
            self.boot_timer.push(
                summary
                    .boot_timer_ms
                    .unwrap_or_else(|| panic!("no boot timer in:\n{out}")),
            );
        }
    }
}

/// (p50, p90) of millisecond samples.
fn p50_p90(samples: &[f64]) -> (Duration, Duration) {
    let durations: Vec<Duration> = samples
        .iter()
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    (percentile(&durations, 50.0), percentile(&durations, 90.0))
}

fn row(measure: &str, twinbox: &[f64], qemu: &[f64], target: &str) {
    let (t50, t90) = p50_p90(twinbox);
    if qemu.is_empty() {
        println!(
            "| {measure} | {} ({}) | n/a | n/a | {target} |",
            ms(t50),
            ms(t90)
        );
        return;
    }
    let (q50, q90) = p50_p90(qemu);
    println!(
        "| {measure} | {} ({}) | {} ({}) | {:.2}x ({:.2}x) | {target} |",
        ms(t50),
        ms(t90),
        ms(q50),
        ms(q90),
        t50.as_secs_f64() / q50.as_secs_f64(),
        t90.as_secs_f64() / q90.as_secs_f64(),
    );
}

fn main() {
    let runs: usize = std::env::var("TWINBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let kernel = guest_kernel();
    let dir = tempfile::tempdir().unwrap();
    let twinbox = without_debug_info(&twinbox_bin(), dir.path()).unwrap();
    let stopwatch = without_debug_info(&workspace_bin("boot-stopwatch"), dir.path()).unwrap();
    let qemu = QemuMicrovm::new(KERNEL)
        .initrd(INITRD)
        .memory_mib(MEMORY_MIB);

    let mut script = StepScript::new().setup(
        "echo \"L1-THP=$(cat /sys/kernel/mm/transparent_hugepage/enabled)\"\n\
         echo \"L1-SHMEM-THP=$(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled)\"",
    );
    let mut order = Vec::with_capacity(2 * runs);
    for round in 0..runs {
        let pair = if round % 2 == 0 {
            [Vmm::Twinbox, Vmm::Qemu]
        } else {
            [Vmm::Qemu, Vmm::Twinbox]
        };
        for vmm in pair {
            let name = format!("{}-{round}", vmm.name());
            script = script.step(&name, STEP_TIMEOUT, &vmm.step(&qemu));
            order.push((vmm, name));
        }
    }
    let job = Job::new(script.script())
        .qemu()
        .file(&twinbox, "/bin/twinbox")
        .file(&stopwatch, "/bin/boot-stopwatch")
        .file(&kernel.vmlinux, KERNEL)
        .data(INITRD, l2_initramfs(L2_INIT).unwrap(), 0o644)
        .timeout(STEP_TIMEOUT * order.len() as u32);

    let progress = ProgressBar::new(order.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} boots {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    progress.set_message("(booting L1)");
    progress.enable_steady_tick(Duration::from_millis(250));
    let run = kvm_host()
        .run_watching(&job, |line| {
            if let Some(rest) = line.strip_prefix("@@TWINBOX-STEP-END ") {
                progress.inc(1);
                progress.set_message(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    progress.finish_and_clear();
    assert_eq!(run.exit_code, 0, "the bench script failed:\n{}", run.output);

    let mut twinbox_samples = Samples::default();
    let mut qemu_samples = Samples::default();
    for (vmm, name) in &order {
        match vmm {
            Vmm::Twinbox => twinbox_samples.add(*vmm, name, &run),
            Vmm::Qemu => qemu_samples.add(*vmm, name, &run),
        }
    }

    let setting = |key: &str| {
        run.output
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or("?")
            .to_string()
    };
    println!(
        "Real-kernel boot: twinbox VMM vs QEMU microvm ({runs} boots each, interleaved, one emulated KVM host run)"
    );
    println!(
        "guest {} ({}), {MEMORY_MIB} MiB, 1 vCPU, initramfs, serial console; L1 THP {}, shmem THP {}",
        kernel.release,
        KERNEL,
        setting("L1-THP="),
        setting("L1-SHMEM-THP=")
    );
    println!(
        "| ms from VMM spawn (TCG L2) | twinbox p50 (p90) | QEMU microvm p50 (p90) | twinbox/QEMU p50 (p90) | target |"
    );
    println!("|---|---|---|---|---|");
    row(
        "to guest init (its first line on the console)",
        &twinbox_samples.to_init,
        &qemu_samples.to_init,
        "<= 0.8x",
    );
    row(
        "to VMM exit (the init reboots at once)",
        &twinbox_samples.to_exit,
        &qemu_samples.to_exit,
        "",
    );
    row(
        "guest uptime at init (the kernel's own boot)",
        &twinbox_samples.uptime_at_init,
        &qemu_samples.uptime_at_init,
        "",
    );
    row(
        "twinbox boot timer (VMM start -> init's write)",
        &twinbox_samples.boot_timer,
        &[],
        "",
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "(L1 runs under TCG: absolute times are many times those of hardware, compare ratios only; host load average {}; L1 run {:.0} s)",
        load.split_whitespace().next().unwrap_or("?"),
        run.elapsed.as_secs_f64()
    );
}
