//! VM sandbox startup and memory, inside one boot of the emulated KVM host (L1; this
//! machine's /dev/kvm is PVM and cannot boot twinbox's guest kernel). TCG makes absolute
//! times meaningless, so the table reports ratios between peers measured in the same boot:
//!
//! - **twinbox vm**: `twinbox-vm run --bundle B` (the runtime CLI selecting microVMs),
//!   restored from the template snapshot (the default start; the unmeasured warm-up run
//!   builds the template, as it builds the disk images);
//! - **twinbox vm boot**: the same with `io.twinbox.vm.start=boot`: the guest kernel boots;
//! - **twinbox container**: `twinbox run --bundle B`, the same bundle in a container;
//! - **twinbox vm image / twinbox container image**: `twinbox run --rm [--isolation vm] IMAGE`
//!   of the bundle's rootfs imported as an image (the docker-style path, as the issue names
//!   it);
//! - **qemu microvm**: QEMU booting the same kernel, with the bundle's rootfs as a read-only
//!   erofs disk that the init script mounts and runs the workload from;
//! - **bare kernel**: `twinbox vm boot` of the same kernel with an init that only writes the
//!   boot-timer port: the kernel-to-init floor (target: VM mode's time to workload start
//!   within 1.2x of it);
//! - **twinbox vm exec / twinbox container exec**: `exec ID echo started` into a running
//!   sandbox of each kind (the path of a platform that keeps sandboxes warm).
//!
//! Every VM has the same guest RAM (128 MiB). Time to workload start is spawn to the
//! workload's first line of stdout (`echo started`),
//! time to exit is spawn to the process's exit. Memory is the PSS (incl. touched guest
//! pages) of every host process of an idle sandbox whose workload runs `sleep`, with 128 MiB
//! of guest RAM (target: <= 40 MiB for twinbox vm).
//!
//! `cargo build --release --workspace && cargo bench -p twinbox-benches --bench vm_startup`;
//! TWINBOX_BENCH_RUNS sets the runs per peer (default 5).
//!
//! The same binary runs in L1 as the measuring side (`TWINBOX_BENCH_IN_L1=1`), printing
//! `key=value` lines that the host side turns into the table.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twinbox_benches::{ms, percentile};
use twinbox_tests::kvm_host::{QemuMicrovm, StepScript, kvm_host, l2_initramfs};
use twinbox_tests::vm::{Bundles, stripped, vm_job, vm_steps};

/// Marks that the binary runs in L1.
const IN_L1_ENV: &str = "TWINBOX_BENCH_IN_L1";
/// Guest RAM of every VM (MiB).
const GUEST_MIB: u64 = 128;
/// The line the workloads print when they start.
const STARTED: &str = "started";

/// One peer's command for a timed run, and how it finds the workload's start.
struct Peer {
    name: &'static str,
    command: fn(run: usize) -> Command,
    /// Start is the boot-timer report on stderr instead of a line on stdout.
    boot_timer: bool,
}

/// `RUNTIME run --bundle /b/BUNDLE ID`.
fn bundle_run(runtime: &str, bundle: &str, id: String) -> Command {
    let mut command = Command::new(runtime);
    command.args(["run", "--bundle", &format!("/b/{bundle}"), &id]);
    command
}

fn twinbox_vm(run: usize) -> Command {
    bundle_run("twinbox-vm", "echo", format!("bench-vm-{run}"))
}

fn twinbox_vm_boot(run: usize) -> Command {
    bundle_run("twinbox-vm", "echo-boot", format!("bench-vm-boot-{run}"))
}

fn twinbox_container(run: usize) -> Command {
    bundle_run("twinbox", "echo", format!("bench-ct-{run}"))
}

/// The image the docker-style peers run: the bundle's rootfs, imported in L1.
const IMAGE: &str = "localhost/bench-busybox";

/// `twinbox run --rm --isolation vm IMAGE`: the command the target names.
fn twinbox_vm_image(_run: usize) -> Command {
    let mut command = Command::new("twinbox");
    command.args(["run", "--rm", "--isolation", "vm", "--memory"]);
    command.args([&format!("{GUEST_MIB}m"), IMAGE, "echo", STARTED]);
    command
}

fn twinbox_container_image(_run: usize) -> Command {
    let mut command = Command::new("twinbox");
    command.args(["run", "--rm", IMAGE, "echo", STARTED]);
    command
}

/// The running sandboxes that the exec peers enter.
const EXEC_VM: &str = "bench-exec-vm";
const EXEC_CONTAINER: &str = "bench-exec-ct";

fn twinbox_vm_exec(_run: usize) -> Command {
    let mut command = Command::new("twinbox-vm");
    command.args(["exec", EXEC_VM, "echo", STARTED]);
    command
}

fn twinbox_container_exec(_run: usize) -> Command {
    let mut command = Command::new("twinbox");
    command.args(["exec", EXEC_CONTAINER, "echo", STARTED]);
    command
}

fn qemu(_run: usize) -> Command {
    shell(&qemu_command("/job/qemu-echo.cpio"))
}

fn bare_kernel(_run: usize) -> Command {
    let mut command = Command::new("twinbox");
    command.args([
        "--debug",
        "vm",
        "boot",
        "--mem",
        "128M",
        "--kernel",
        "/l2/vmlinux",
        "--initrd",
        "/job/bare.cpio",
    ]);
    command
}

fn shell(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    command
}

fn qemu_command(initrd: &str) -> String {
    format!(
        "exec {}",
        QemuMicrovm::new("/l2/vmlinux")
            .initrd(initrd)
            .memory_mib(GUEST_MIB as u32)
            .disk("/tmp/rootfs.erofs", true)
            .command()
    )
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock the VMM's boot timer reports).
fn monotonic_ns() -> u128 {
    vmm::devices::legacy::monotonic_now().as_nanos()
}

/// Runs one peer once: (spawn to workload start, spawn to exit).
fn time_once(peer: &Peer, run: usize) -> (Duration, Duration) {
    let spawned_ns = monotonic_ns();
    let spawned = Instant::now();
    let mut child = (peer.command)(run)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", peer.name));
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (started, exited, stderr_text) = if peer.boot_timer {
        let stderr_text: Vec<String> = stderr.lines().map_while(Result::ok).collect();
        let exited = spawned.elapsed();
        let clock_ns: u128 = stderr_text
            .iter()
            .find_map(|l| {
                let rest = &l[l.find("CLOCK_MONOTONIC ")? + "CLOCK_MONOTONIC ".len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no boot timer report: {stderr_text:?}"));
        let started = Duration::from_nanos((clock_ns - spawned_ns) as u64);
        (Some(started), exited, stderr_text.join("\n"))
    } else {
        let errors = std::thread::spawn(move || {
            stderr
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
                .join("\n")
        });
        let mut started = None;
        let mut output = Vec::new();
        for line in stdout.lines().map_while(Result::ok) {
            if started.is_none() && line.trim() == STARTED {
                started = Some(spawned.elapsed());
            }
            output.push(line);
        }
        let exited = spawned.elapsed();
        let errors = errors.join().unwrap();
        (started, exited, format!("{errors}\n{}", output.join("\n")))
    };
    let status = child.wait().unwrap();
    assert!(status.success(), "{} failed: {stderr_text}", peer.name);
    let started =
        started.unwrap_or_else(|| panic!("{} never printed {STARTED}: {stderr_text}", peer.name));
    (started, exited)
}

/// PSS in KiB of `pid` and all its descendants.
fn tree_pss_kib(pid: u32) -> u64 {
    let mut total = 0;
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        total += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
        {
            let children = task.map(|t| t.path().join("children")).ok();
            let text = children.and_then(|c| std::fs::read_to_string(c).ok());
            pending.extend(
                text.iter()
                    .flat_map(|t| t.split_whitespace().filter_map(|p| p.parse::<u32>().ok())),
            );
        }
    }
    total
}

/// The pid in `twinbox[-vm] state ID`.
fn state_pid(runtime: &str, id: &str) -> u32 {
    let out = Command::new(runtime).args(["state", id]).output().unwrap();
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{runtime} state {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    state["pid"].as_u64().expect("a pid in the state") as u32
}

/// Starts an idle sandbox `id` of `runtime` running `bundle` (which sleeps).
fn start_idle(runtime: &str, bundle: &str, id: &str) {
    let status = Command::new(runtime)
        .args(["run", "-d", "--bundle", bundle, id])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{runtime} run -d failed");
}

/// Deletes sandbox `id` of `runtime`.
fn delete(runtime: &str, id: &str) {
    let deleted = Command::new(runtime)
        .args(["delete", "--force", id])
        .status()
        .unwrap();
    assert!(deleted.success(), "{runtime} delete --force {id}");
}

/// Host memory of an idle sandbox of `runtime` running `bundle` (which sleeps; KiB).
fn runtime_idle_pss(runtime: &str, bundle: &str, id: &str) -> u64 {
    start_idle(runtime, bundle, id);
    // Let the guest settle (the workload is already running when run -d returns).
    std::thread::sleep(Duration::from_secs(3));
    let pss = tree_pss_kib(state_pid(runtime, id));
    delete(runtime, id);
    pss
}

/// Host memory of QEMU idling in the `sleep` init (KiB).
fn qemu_idle_pss() -> u64 {
    let mut child: Child = shell(&qemu_command("/job/qemu-sleep.cpio"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines().map_while(Result::ok) {
        if line.trim() == STARTED {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let pss = tree_pss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    pss
}

/// The measuring side, in L1.
fn measure_in_l1(runs: usize) {
    let status = Command::new("mkfs.erofs")
        .args(["--quiet", "/tmp/rootfs.erofs", "/b/rootfs"])
        .status()
        .expect("mkfs.erofs");
    assert!(status.success(), "mkfs.erofs of the rootfs");
    let imported = Command::new("sh")
        .args([
            "-c",
            &format!("tar -C /b/rootfs -cf /tmp/image.tar . && twinbox import /tmp/image.tar {IMAGE} >/dev/null"),
        ])
        .status()
        .expect("twinbox import");
    assert!(imported.success(), "twinbox import of the rootfs");
    let peers = [
        Peer {
            name: "twinbox_vm",
            command: twinbox_vm,
            boot_timer: false,
        },
        Peer {
            name: "twinbox_vm_boot",
            command: twinbox_vm_boot,
            boot_timer: false,
        },
        Peer {
            name: "twinbox_vm_image",
            command: twinbox_vm_image,
            boot_timer: false,
        },
        Peer {
            name: "twinbox_container_image",
            command: twinbox_container_image,
            boot_timer: false,
        },
        Peer {
            name: "twinbox_container",
            command: twinbox_container,
            boot_timer: false,
        },
        Peer {
            name: "qemu_microvm",
            command: qemu,
            boot_timer: false,
        },
        Peer {
            name: "bare_kernel",
            command: bare_kernel,
            boot_timer: true,
        },
    ];
    let exec_peers = [
        Peer {
            name: "twinbox_vm_exec",
            command: twinbox_vm_exec,
            boot_timer: false,
        },
        Peer {
            name: "twinbox_container_exec",
            command: twinbox_container_exec,
            boot_timer: false,
        },
    ];
    start_idle("twinbox-vm", "/b/sleep", EXEC_VM);
    start_idle("twinbox", "/b/sleep", EXEC_CONTAINER);
    // One unmeasured run each warms the page cache and twinbox's disk image cache.
    for peer in peers.iter().chain(&exec_peers) {
        time_once(peer, runs);
    }
    for run in 0..runs {
        for peer in peers.iter().chain(&exec_peers) {
            let (started, exited) = time_once(peer, run);
            println!(
                "{}={:.3},{:.3}",
                peer.name,
                started.as_secs_f64() * 1000.0,
                exited.as_secs_f64() * 1000.0
            );
        }
    }
    delete("twinbox-vm", EXEC_VM);
    delete("twinbox", EXEC_CONTAINER);
    println!(
        "pss_twinbox_vm={}",
        runtime_idle_pss("twinbox-vm", "/b/sleep", "bench-mem-vm")
    );
    println!(
        "pss_twinbox_vm_boot={}",
        runtime_idle_pss("twinbox-vm", "/b/sleep-boot", "bench-mem-vm-boot")
    );
    println!(
        "pss_twinbox_container={}",
        runtime_idle_pss("twinbox", "/b/sleep", "bench-mem-ct")
    );
    println!("pss_qemu_microvm={}", qemu_idle_pss());
}

/// Median of the samples.
fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

/// The host side: one L1 boot running this binary, then the table.
fn main() {
    let runs: usize = std::env::var("TWINBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    if std::env::var_os(IN_L1_ENV).is_some() {
        measure_in_l1(runs);
        return;
    }
    // Every VM gets the same RAM: twinbox's VMs through the memory limit (which sizes guest
    // RAM), the bare kernel and QEMU through their flags.
    let guest_ram = |config: &mut serde_json::Value| {
        config["linux"]["resources"] = serde_json::json!({"memory": {"limit": GUEST_MIB << 20}});
    };
    let booting = |config: &mut serde_json::Value| {
        guest_ram(config);
        config["annotations"] = serde_json::json!({"io.twinbox.vm.start": "boot"});
    };
    let mut bundles = Bundles::new();
    bundles
        .add("echo", &["echo", STARTED], guest_ram)
        .add("echo-boot", &["echo", STARTED], booting)
        .add("sleep", &["sleep", "100000"], guest_ram)
        .add("sleep-boot", &["sleep", "100000"], booting);
    let qemu_init = |then: &str| {
        format!(
            "#!/bin/sh\nmount -t devtmpfs dev /dev\nmount -t erofs -o ro /dev/vda /mnt\nchroot /mnt echo {STARTED}\n{then}\n"
        )
    };
    let work = tempfile::tempdir().unwrap();
    let me = stripped(&std::env::current_exe().unwrap(), work.path());
    let steps: StepScript = vm_steps().step(
        "measure",
        Duration::from_secs(60 * (runs as u64 + 2)),
        &format!("{IN_L1_ENV}=1 TWINBOX_BENCH_RUNS={runs} /job/vm-bench"),
    );
    let job = vm_job(
        &steps,
        &bundles,
        work.path(),
        Duration::from_secs(60 * (runs as u64 + 3)),
    )
    .qemu()
    .file(&me, "/job/vm-bench")
    .data(
        "/job/bare.cpio",
        l2_initramfs("#!/bin/sh\nmknod /dev/mem c 1 1\ndevmem 0xd0000000 8 123\nreboot -f\n")
            .unwrap(),
        0o644,
    )
    .data(
        "/job/qemu-echo.cpio",
        l2_initramfs(&qemu_init("reboot -f")).unwrap(),
        0o644,
    )
    .data(
        "/job/qemu-sleep.cpio",
        l2_initramfs(&qemu_init("exec sleep 100000")).unwrap(),
        0o644,
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let output = kvm_host().run(&job).unwrap_or_else(|e| panic!("{e}"));
    let step = output
        .step("measure")
        .and_then(|s| s.check())
        .unwrap_or_else(|e| panic!("{e}"))
        .output;
    let samples = |name: &str| -> (Vec<Duration>, Vec<Duration>) {
        step.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|v| {
                let (start, exit) = v.split_once(',').unwrap();
                let ms = |t: &str| Duration::from_secs_f64(t.parse::<f64>().unwrap() / 1000.0);
                (ms(start), ms(exit))
            })
            .unzip()
    };
    let pss = |name: &str| -> u64 {
        step.lines()
            .find_map(|l| l.strip_prefix(&format!("pss_{name}="))?.parse().ok())
            .unwrap_or_else(|| panic!("no pss_{name} in:\n{step}"))
    };
    let (vm_start, vm_exit) = samples("twinbox_vm");
    let (vm_start, vm_exit) = (median(&vm_start), median(&vm_exit));
    let bare_start = median(&samples("bare_kernel").0);
    println!(
        "VM sandbox startup in the emulated KVM host (TCG: compare ratios), {runs} runs each, host load {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<20} {:>14} {:>12} {:>14} {:>12} {:>16}",
        "peer", "start ms (med)", "start/vm", "exit ms (med)", "exit/vm", "idle PSS MiB"
    );
    for name in [
        "twinbox_vm",
        "twinbox_vm_boot",
        "twinbox_vm_image",
        "twinbox_container",
        "twinbox_container_image",
        "qemu_microvm",
        "bare_kernel",
        "twinbox_vm_exec",
        "twinbox_container_exec",
    ] {
        let (start, exit) = samples(name);
        let (start, exit) = (median(&start), median(&exit));
        let memory = if name == "bare_kernel" || name.ends_with("_exec") || name.ends_with("_image")
        {
            "-".to_string()
        } else {
            format!("{:.1}", pss(name) as f64 / 1024.0)
        };
        println!(
            "{name:<20} {:>14} {:>12} {:>14} {:>12} {memory:>16}",
            ms(start),
            ratio(start, vm_start),
            ms(exit),
            ratio(exit, vm_exit),
        );
    }
    println!(
        "twinbox vm time to workload start / bare kernel-to-init: {} (target <= 1.20x); \
         for `run --isolation vm IMAGE`: {}; booting the kernel (start=boot): {}",
        ratio(vm_start, bare_start),
        ratio(median(&samples("twinbox_vm_image").0), bare_start),
        ratio(median(&samples("twinbox_vm_boot").0), bare_start)
    );
    println!(
        "twinbox vm idle PSS: {:.1} MiB for a {GUEST_MIB} MiB guest (target <= 40 MiB); \
         booted: {:.1} MiB",
        pss("twinbox_vm") as f64 / 1024.0,
        pss("twinbox_vm_boot") as f64 / 1024.0
    );
}
