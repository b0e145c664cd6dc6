//! Container startup and idle overhead: `twinbox run --bundle` against `runc run` of the same
//! busybox bundle running /bin/true, interleaved, N runs each; then the host memory each
//! runtime adds to an idle container (`sleep`), in the foreground and detached.
//!
//! Run with `make bench` (or `cargo build --release -p twinbox && cargo bench -p
//! twinbox-benches --bench container_startup`). `TWINBOX_BENCH_RUNS` overrides N (>= 50).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twinbox_benches::{ms, percentile};

struct Peer {
    name: &'static str,
    binary: PathBuf,
    root: tempfile::TempDir,
}

impl Peer {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(self.root.path());
        cmd
    }

    /// One foreground `run` of the bundle; returns the wall time.
    fn run_once(&self, bundle: &Path, id: &str) -> Duration {
        let start = Instant::now();
        let status = self
            .command()
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running the runtime");
        let elapsed = start.elapsed();
        assert!(status.success(), "{} run failed: {status}", self.name);
        elapsed
    }
}

fn bundle(dir: &Path, args: &[&str]) -> PathBuf {
    let bundle = dir.join(args[0].trim_start_matches('/').replace('/', "_"));
    twinbox_tests::busybox_rootfs(&bundle.join("rootfs")).expect("busybox rootfs");
    let status = Command::new(twinbox_tests::twinbox_bin())
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .expect("twinbox spec");
    assert!(status.success());
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    config["process"]["terminal"] = false.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    bundle
}

/// Resident and proportional set size of a process, in KiB (smaps_rollup).
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// Live processes running `binary` (by /proc/PID/exe): what a detached container leaves on
/// the host besides its workload.
fn runtime_processes(binary: &Path) -> usize {
    let binary = binary.canonicalize().unwrap_or(binary.to_path_buf());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|exe| exe == binary))
        .count()
}

struct Idle {
    foreground_rss: u64,
    foreground_pss: u64,
    detached_extra: usize,
    workload_rss: u64,
}

/// Starts `sleep` in the foreground (measuring the runtime process that waits for it) and
/// detached (counting what stays on the host besides the workload).
fn idle_memory(peer: &Peer, bundle: &Path, id: &str) -> Idle {
    let mut fg = peer
        .command()
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(format!("{id}-fg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("foreground run");
    std::thread::sleep(Duration::from_millis(500));
    let (foreground_rss, foreground_pss) = memory_kib(fg.id());
    let _ = peer
        .command()
        .args(["kill", &format!("{id}-fg"), "KILL"])
        .status();
    let _ = fg.wait();
    let _ = peer
        .command()
        .args(["delete", "--force", &format!("{id}-fg")])
        .status();

    let detached = format!("{id}-bg");
    let status = peer
        .command()
        .args(["run", "--detach", "--bundle"])
        .arg(bundle)
        .arg(&detached)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("detached run");
    assert!(status.success(), "{} run --detach failed", peer.name);
    std::thread::sleep(Duration::from_millis(300));
    let state = peer.command().args(["state", &detached]).output().unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    let workload = state["pid"].as_u64().unwrap() as u32;
    let (workload_rss, _) = memory_kib(workload);
    let detached_extra = runtime_processes(&peer.binary);
    let _ = peer
        .command()
        .args(["delete", "--force", &detached])
        .status();
    Idle {
        foreground_rss,
        foreground_pss,
        detached_extra,
        workload_rss,
    }
}

fn main() {
    let runs: usize = std::env::var("TWINBOX_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50)
        .max(50);
    let dir = tempfile::tempdir().unwrap();
    let true_bundle = bundle(dir.path(), &["/bin/true"]);
    let sleep_bundle = bundle(dir.path(), &["sleep", "1000"]);
    let runc =
        which("runc").expect("runc is not installed: apt-get install runc (`make setup` does)");
    let peers = [
        Peer {
            name: "runc",
            binary: runc,
            root: tempfile::tempdir().unwrap(),
        },
        Peer {
            name: "twinbox",
            binary: twinbox_tests::twinbox_bin(),
            root: tempfile::tempdir().unwrap(),
        },
    ];
    // Warm up page cache and cgroup parents.
    for peer in &peers {
        for i in 0..3 {
            peer.run_once(&true_bundle, &format!("warm-{}-{i}", std::process::id()));
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
    for i in 0..runs {
        for (p, peer) in peers.iter().enumerate() {
            samples[p].push(peer.run_once(&true_bundle, &format!("b-{}-{i}", std::process::id())));
        }
    }
    println!(
        "container startup: `run --bundle` of busybox /bin/true, {runs} runs each, interleaved"
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9}",
        "runtime", "p50 ms", "p90 ms", "mean ms"
    );
    for (peer, s) in peers.iter().zip(&samples) {
        let mean = s.iter().sum::<Duration>() / s.len() as u32;
        println!(
            "{:<10} {:>9} {:>9} {:>9}",
            peer.name,
            ms(percentile(s, 50.0)),
            ms(percentile(s, 90.0)),
            ms(mean)
        );
    }
    let ratio = |p: f64| {
        percentile(&samples[1], p).as_secs_f64() / percentile(&samples[0], p).as_secs_f64()
    };
    println!(
        "ratio twinbox/runc: p50 {:.2}x, p90 {:.2}x (goal <= 0.50x)",
        ratio(50.0),
        ratio(90.0)
    );
    println!();
    println!("idle container (sleep): host memory the runtime adds");
    println!(
        "{:<10} {:>22} {:>22} {:>26} {:>18}",
        "runtime",
        "foreground RSS KiB",
        "foreground PSS KiB",
        "detached: runtime procs",
        "workload RSS KiB"
    );
    for peer in &peers {
        let idle = idle_memory(peer, &sleep_bundle, &format!("idle-{}", std::process::id()));
        println!(
            "{:<10} {:>22} {:>22} {:>26} {:>18}",
            peer.name,
            idle.foreground_rss,
            idle.foreground_pss,
            idle.detached_extra,
            idle.workload_rss
        );
    }
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    })
}
