//! VMM overhead on this machine's KVM with tiny guests:
//! - process start to the guest's first instruction (the guest's first instruction writes
//!   the boot-timer magic; the VMM reports the CLOCK_MONOTONIC of that write);
//! - resident memory of the VMM excluding guest memory, with the guest idle.
//!
//! QEMU's microvm machine runs beside it as the peer for memory (its own firmware does not
//! run our tiny payload, so it has no first-instruction figure here).
//!
//! `cargo bench -p twinbox-benches --bench vmm_overhead` (after `cargo build --release`);
//! TWINBOX_BENCH_RUNS sets the number of boots (default 30).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twinbox_tests::vm_boot::VmSummary;
use vmm::devices::legacy::monotonic_now;
use vmm::guest_image::{assemble, elf_image};

fn twinbox_binary() -> PathBuf {
    // target/<triple>/release/deps/vmm_overhead-<hash>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("twinbox");
    assert!(
        path.is_file(),
        "build twinbox first: cargo build --release -p twinbox"
    );
    path
}

fn guest(dir: &Path, name: &str, body: &str) -> PathBuf {
    let code = assemble(&format!("bits 64\norg 0x200000\n{body}"), dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, elf_image(0x20_0000, &code)).unwrap();
    path
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Process start (spawn) to the guest's first instruction, and VMM build start to it.
fn first_instruction(twinbox: &Path, kernel: &Path) -> (f64, f64) {
    let start = monotonic_now();
    let output = Command::new(twinbox)
        .args(["--debug", "vm", "boot", "--mem", "128M", "--kernel"])
        .arg(kernel)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stderr);
    let summary = VmSummary::find(&text).expect("vm boot --debug prints its summary");
    let clock_ns = summary
        .boot_clock_ns
        .expect("the guest writes the boot timer");
    let in_vmm_ms = summary
        .boot_timer_ms
        .expect("the guest writes the boot timer");
    let from_spawn_ms = (clock_ns as f64 - start.as_nanos() as f64) / 1e6;
    (from_spawn_ms, in_vmm_ms)
}

/// `(VmRSS, RssShmem)` of a process in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssShmem:"))
}

fn wait_for_threads(child: &Child, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .map(|d| d.count())
            .unwrap_or(0);
        if tasks >= count {
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the VMM did not start its threads");
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let runs: usize = std::env::var("TWINBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let twinbox = twinbox_binary();
    let dir = tempfile::tempdir().unwrap();
    let mark_and_reset = guest(
        dir.path(),
        "mark.elf",
        "mov rbx, 0xd0000000\nmov byte [rbx], 123\nmov al, 0xfe\nout 0x64, al\njmp $",
    );
    let mark_and_idle = guest(
        dir.path(),
        "idle.elf",
        "mov rbx, 0xd0000000\nmov byte [rbx], 123\ncli\n.h: hlt\njmp .h",
    );

    let mut from_spawn = Vec::with_capacity(runs);
    let mut in_vmm = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (spawn_ms, vmm_ms) = first_instruction(&twinbox, &mark_and_reset);
        from_spawn.push(spawn_ms);
        in_vmm.push(vmm_ms);
    }
    from_spawn.sort_by(f64::total_cmp);
    in_vmm.sort_by(f64::total_cmp);

    // Memory: twinbox with an idle guest (seccomp on, as in production), on a memfd so that
    // guest memory shows apart (RssShmem).
    let child = Command::new(&twinbox)
        .args([
            "vm",
            "boot",
            "--mem",
            "128M",
            "--mem-backing",
            "memfd",
            "--kernel",
        ])
        .arg(&mark_and_idle)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_threads(&child, 3);
    let (twinbox_rss, twinbox_guest) = rss_kib(child.id());
    stop(child);

    // The peer: QEMU microvm, idle in its firmware, same memory size.
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=off,rtc=off",
            "-enable-kvm",
            "-cpu",
            "host",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-bios",
            "/usr/share/qemu/qboot.rom",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let qemu_rss = qemu.ok().map(|mut child| {
        wait_for_threads(&child, 2);
        let rss = rss_kib(child.id());
        let _ = child.kill();
        if let Some(stderr) = child.stderr.take() {
            for line in BufReader::new(stderr).lines().map_while(Result::ok).take(3) {
                eprintln!("qemu: {line}");
            }
        }
        let _ = child.wait();
        rss
    });

    let mib = |kib: u64| kib as f64 / 1024.0;
    let overhead = twinbox_rss - twinbox_guest;
    println!("VMM overhead with a tiny guest ({runs} boots, this machine's /dev/kvm)");
    println!("| metric | twinbox | QEMU microvm | twinbox/QEMU | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| process start -> first guest instruction, median (p90, min) | {:.2} ms ({:.2}, {:.2}) | n/a | n/a | <= 5 ms |",
        percentile(&from_spawn, 0.5),
        percentile(&from_spawn, 0.9),
        from_spawn[0]
    );
    println!(
        "| VMM build start -> first guest instruction, median (p90, min) | {:.2} ms ({:.2}, {:.2}) | n/a | n/a | |",
        percentile(&in_vmm, 0.5),
        percentile(&in_vmm, 0.9),
        in_vmm[0]
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "(host load average {}: the median and p90 include scheduling delays of a busy host; the minimum is the VMM's own cost)",
        load.split_whitespace().next().unwrap_or("?")
    );
    match qemu_rss {
        Some((qemu_total, qemu_shmem)) => {
            println!(
                "| resident memory, total | {:.2} MiB | {:.2} MiB | {:.2}x | |",
                mib(twinbox_rss),
                mib(qemu_total),
                twinbox_rss as f64 / qemu_total as f64
            );
            println!(
                "| resident memory excluding shared guest memory | {:.2} MiB | {:.2} MiB | {:.2}x | <= 3 MiB |",
                mib(overhead),
                mib(qemu_total - qemu_shmem),
                overhead as f64 / (qemu_total - qemu_shmem) as f64
            );
        }
        None => println!(
            "| resident memory excluding guest memory | {:.2} MiB | (qemu not runnable) | n/a | <= 3 MiB |",
            mib(overhead)
        ),
    }
    println!(
        "(twinbox guest memory resident: {:.2} MiB of 128 MiB; QEMU's guest RAM is private anonymous memory and counts in its total)",
        mib(twinbox_guest)
    );
}
