//! Container startup and idle overhead. Interleaved, N runs each of busybox /bin/true:
//! `runc run` of the bundle `twinbox bundle` makes of the test image (Docker's defaults,
//! seccomp profile included), `twinbox run --bundle` of the same bundle, and the docker-style
//! `twinbox run --rm IMAGE /bin/true` from the image store (overlay root filesystem, spec
//! generation, create, start, wait, removal). Then where the image path spends its time
//! (from twinbox's --debug log), and the host memory each runtime adds to an idle container
//! (`sleep`): the process that waits for it in the foreground, and what stays on the host
//! when it is detached (nothing for runc, the monitor for twinbox).
//!
//! Run with `make bench` (or `cargo build --release -p twinbox && cargo bench -p
//! twinbox-benches --bench container_startup`). `TWINBOX_BENCH_RUNS` overrides N (>= 50).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use twinbox_benches::{ms, percentile};
use twinbox_tests::docker::{Docker, IMAGE};

/// One way of starting a /bin/true container.
enum Peer<'a> {
    /// `BINARY --root ROOT run --bundle BUNDLE ID`.
    Bundle {
        name: &'static str,
        binary: PathBuf,
        root: tempfile::TempDir,
        bundle: PathBuf,
    },
    /// `twinbox run --rm IMAGE /bin/true` against the fixture's store.
    Image { docker: &'a Docker },
}

impl Peer<'_> {
    fn name(&self) -> &'static str {
        match self {
            Peer::Bundle { name, .. } => name,
            Peer::Image { .. } => "twinbox run IMAGE",
        }
    }

    fn command(&self, id: &str) -> Command {
        match self {
            Peer::Bundle {
                binary,
                root,
                bundle,
                ..
            } => {
                let mut cmd = Command::new(binary);
                cmd.arg("--root")
                    .arg(root.path())
                    .args(["run", "--bundle"])
                    .arg(bundle)
                    .arg(id);
                cmd
            }
            Peer::Image { docker } => docker.command(["run", "--rm", IMAGE, "/bin/true"]),
        }
    }

    /// One foreground run; returns the wall time.
    fn run_once(&self, id: &str) -> Duration {
        let start = Instant::now();
        let status = self
            .command(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running the runtime");
        let elapsed = start.elapsed();
        assert!(status.success(), "{} failed: {status}", self.name());
        elapsed
    }
}

/// The OCI bundle `twinbox bundle` makes of the test image for `command`: the same config
/// (Docker's defaults: capabilities, seccomp profile, masked paths, ...) that `twinbox run
/// IMAGE` uses, so every peer starts the same container.
fn bundle(docker: &Docker, dir: &Path, command: &[&str]) -> PathBuf {
    let bundle = dir.join(command.join("_").replace('/', ""));
    let mut args = vec!["bundle", IMAGE, bundle.to_str().unwrap(), "--"];
    args.extend_from_slice(command);
    docker.ok(args);
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

/// Live processes running `binary` (by /proc/PID/exe), other than `except`.
fn runtime_processes(binary: &Path) -> Vec<u32> {
    let binary = binary.canonicalize().unwrap_or(binary.to_path_buf());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            (exe == binary).then_some(pid)
        })
        .collect()
}

/// What the runtime adds to an idle container.
struct Idle {
    foreground: (u64, u64),
    detached_processes: usize,
    detached: (u64, u64),
    workload_rss: u64,
}

fn wait_running(state: impl Fn() -> Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = state() {
            return pid;
        }
        assert!(Instant::now() < deadline, "the idle container never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sleep` under runc or twinbox --bundle: the foreground runtime process, then detached.
fn idle_bundle(binary: &Path, bundle: &Path) -> Idle {
    let root = tempfile::tempdir().unwrap();
    let runtime = |args: &[&str]| {
        let mut cmd = Command::new(binary);
        cmd.arg("--root").arg(root.path()).args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let init_pid = |id: &str| {
        let out = runtime(&["state", id])
            .stdout(Stdio::piped())
            .output()
            .ok()?;
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (state["status"] == "running").then(|| state["pid"].as_u64().unwrap() as u32)
    };
    let bundle = bundle.to_str().unwrap();
    let mut fg = runtime(&["run", "--bundle", bundle, "idle-fg"])
        .spawn()
        .unwrap();
    wait_running(|| init_pid("idle-fg"));
    std::thread::sleep(Duration::from_millis(200));
    let foreground = memory_kib(fg.id());
    let _ = runtime(&["kill", "idle-fg", "KILL"]).status();
    let _ = fg.wait();
    let _ = runtime(&["delete", "--force", "idle-fg"]).status();

    let before = runtime_processes(binary).len();
    assert!(
        runtime(&["run", "--detach", "--bundle", bundle, "idle-bg"])
            .status()
            .unwrap()
            .success()
    );
    let workload = wait_running(|| init_pid("idle-bg"));
    std::thread::sleep(Duration::from_millis(200));
    let left = runtime_processes(binary);
    let detached = left.iter().fold((0, 0), |(r, p), pid| {
        let (rss, pss) = memory_kib(*pid);
        (r + rss, p + pss)
    });
    let workload_rss = memory_kib(workload).0;
    let _ = runtime(&["delete", "--force", "idle-bg"]).status();
    Idle {
        foreground,
        detached_processes: left.len() - before.min(left.len()),
        detached,
        workload_rss,
    }
}

/// `sleep` as `twinbox run IMAGE`: the foreground twinbox, then the detached monitor.
fn idle_image(docker: &Docker) -> Idle {
    let quiet = |mut cmd: Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let state = |name: &str| {
        docker
            .ps()
            .into_iter()
            .find(|c| c["Names"] == name && c["State"] == "running")
            .map(|c| c["Pid"].as_u64().unwrap() as u32)
    };
    let mut fg =
        quiet(docker.command(["run", "--rm", "--name", "idle-fg", IMAGE, "sleep", "1000"]))
            .spawn()
            .unwrap();
    wait_running(|| state("idle-fg"));
    std::thread::sleep(Duration::from_millis(200));
    let foreground = memory_kib(fg.id());
    docker.ok(["kill", "idle-fg"]);
    let _ = fg.wait();

    let binary = twinbox_tests::twinbox_bin();
    docker.ok([
        "run", "-d", "--rm", "--name", "idle-bg", IMAGE, "sleep", "1000",
    ]);
    let workload = wait_running(|| state("idle-bg"));
    std::thread::sleep(Duration::from_millis(200));
    let left = runtime_processes(&binary);
    let detached = left.iter().fold((0, 0), |(r, p), pid| {
        let (rss, pss) = memory_kib(*pid);
        (r + rss, p + pss)
    });
    let workload_rss = memory_kib(workload).0;
    docker.ok(["rm", "-f", "idle-bg"]);
    Idle {
        foreground,
        detached_processes: left.len(),
        detached,
        workload_rss,
    }
}

/// Mean time of each step of `twinbox run --rm IMAGE /bin/true`, from twinbox's debug log:
/// (step, mean duration since the previous step).
fn image_path_steps(docker: &Docker, runs: usize) -> Vec<(String, Duration)> {
    let dir = tempfile::tempdir().unwrap();
    let mut totals: Vec<(String, Duration)> = Vec::new();
    for i in 0..runs {
        let log = dir.path().join(format!("run-{i}.log"));
        let started = SystemTime::now();
        let status = docker
            .command(["--debug", "--log-format", "json", "--log"])
            .arg(&log)
            .args(["run", "--rm", IMAGE, "/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let ended = SystemTime::now();
        assert!(status.success());
        let mut previous = started;
        let mut steps = Vec::new();
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(time) = event["time"].as_str().and_then(parse_time) else {
                continue;
            };
            let message = event["msg"].as_str().unwrap_or_default();
            let step = message
                .split(' ')
                .take_while(|w| !w.contains('='))
                .collect::<Vec<_>>();
            steps.push((
                step.join(" "),
                time.duration_since(previous).unwrap_or_default(),
            ));
            previous = time;
        }
        steps.push((
            "exit of twinbox".into(),
            ended.duration_since(previous).unwrap_or_default(),
        ));
        if totals.is_empty() {
            totals = steps
                .iter()
                .map(|(s, _)| (s.clone(), Duration::ZERO))
                .collect();
        }
        for ((name, total), (step, took)) in totals.iter_mut().zip(&steps) {
            if name == step {
                *total += *took;
            }
        }
    }
    totals
        .into_iter()
        .map(|(name, total)| (name, total / runs as u32))
        .collect()
}

/// Parses twinbox's "2024-05-01T12:00:00.123456789Z" log times.
fn parse_time(text: &str) -> Option<SystemTime> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, nanos) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>());
    let (h, m, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days since the epoch (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    let nanos: u32 = format!("{nanos:0<9}")[..9].parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(days * 86_400 + h * 3600 + m * 60 + s, nanos))
}

fn main() {
    let runs: usize = std::env::var("TWINBOX_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50)
        .max(50);
    let dir = tempfile::tempdir().unwrap();
    let docker = Docker::new();
    let true_bundle = bundle(&docker, dir.path(), &["/bin/true"]);
    let sleep_bundle = bundle(&docker, dir.path(), &["sleep", "1000"]);
    let runc =
        which("runc").expect("runc is not installed: apt-get install runc (`make setup` does)");
    let peers = [
        Peer::Bundle {
            name: "runc run --bundle",
            binary: runc.clone(),
            root: tempfile::tempdir().unwrap(),
            bundle: true_bundle.clone(),
        },
        Peer::Bundle {
            name: "twinbox run --bundle",
            binary: twinbox_tests::twinbox_bin(),
            root: tempfile::tempdir().unwrap(),
            bundle: true_bundle,
        },
        Peer::Image { docker: &docker },
    ];
    let pid = std::process::id();
    // Warm up page cache and cgroup parents.
    for peer in &peers {
        for i in 0..3 {
            peer.run_once(&format!("warm-{pid}-{i}"));
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
    for i in 0..runs {
        for (p, peer) in peers.iter().enumerate() {
            samples[p].push(peer.run_once(&format!("b-{pid}-{i}")));
        }
    }
    println!("container startup: busybox /bin/true, {runs} runs each, interleaved");
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>14}",
        "runtime", "p50 ms", "p90 ms", "mean ms", "p50 vs runc"
    );
    let ratio = |s: &[Duration], p: f64| {
        percentile(s, p).as_secs_f64() / percentile(&samples[0], p).as_secs_f64()
    };
    for (peer, s) in peers.iter().zip(&samples) {
        let mean = s.iter().sum::<Duration>() / s.len() as u32;
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>13.2}x",
            peer.name(),
            ms(percentile(s, 50.0)),
            ms(percentile(s, 90.0)),
            ms(mean),
            ratio(s, 50.0)
        );
    }
    for (p, peer) in peers.iter().enumerate().skip(1) {
        println!(
            "ratio {}/runc: p50 {:.2}x, p90 {:.2}x (goal <= 0.50x)",
            peer.name(),
            ratio(&samples[p], 50.0),
            ratio(&samples[p], 90.0)
        );
    }

    println!();
    println!(
        "where `twinbox run --rm IMAGE /bin/true` spends its time (mean of 20 runs, --debug log)"
    );
    for (step, took) in image_path_steps(&docker, 20) {
        println!("  {:<32} {:>8} ms", format!("... {step}"), ms(took));
    }

    println!();
    println!("idle container (sleep): host memory the runtime adds besides the workload");
    println!(
        "{:<22} {:>16} {:>16} {:>16} {:>16} {:>14}",
        "runtime", "fg RSS KiB", "fg PSS KiB", "detached procs", "detached RSS/PSS", "workload RSS"
    );
    let rows = [
        ("runc", idle_bundle(&runc, &sleep_bundle)),
        (
            "twinbox --bundle",
            idle_bundle(&twinbox_tests::twinbox_bin(), &sleep_bundle),
        ),
        ("twinbox run IMAGE", idle_image(&docker)),
    ];
    for (name, idle) in rows {
        println!(
            "{:<22} {:>16} {:>16} {:>16} {:>16} {:>14}",
            name,
            idle.foreground.0,
            idle.foreground.1,
            idle.detached_processes,
            format!("{}/{}", idle.detached.0, idle.detached.1),
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
