//! The life of docker-style containers: detached runs with logs (streams kept apart),
//! `logs -f`, `exec`, `stop`, `kill`, `wait`, `rm`, `ps` and `inspect`; signals forwarded by
//! a foreground run; and consistency when the monitor or twinbox itself is SIGKILLed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use twinbox_tests::docker::{Docker, IMAGE};
use twinbox_tests::wait_until;

/// Polls `file` until it contains `needle` (up to 10 s).
fn wait_for_text(file: &Path, needle: &str) {
    wait_until(
        &format!("{needle:?} never appeared in {}", file.display()),
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .contains(needle)
        },
    );
}

/// The monitor process of container `id` (`twinbox __monitor id=<id> ...`).
fn monitor_pid(id: &str) -> Option<i32> {
    let wanted = format!("id={id}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            (args.get(1) == Some(&&b"__monitor"[..]) && args.contains(&wanted.as_bytes()))
                .then_some(pid)
        })
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn detached_run_logs_exec_stop_wait_and_rm() {
    let docker = Docker::new();
    let id = docker
        .ok([
            "run",
            "-d",
            "--name",
            "web",
            "-e",
            "MODE=test",
            IMAGE,
            "sh",
            "-c",
            "echo out-1; echo err-1 >&2; trap 'echo stopping; exit 3' TERM; \
             while true; do sleep 0.05; done",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id}");
    let web = docker.wait_state("web", "running");
    assert_eq!(web["Id"], id);
    assert!(web["Status"].as_str().unwrap().starts_with("Up "), "{web}");
    assert_eq!(
        web["Command"],
        "\"sh -c echo out-1; echo err-1 >&2; trap 'echo stopping; exit 3' TERM; while true; do sleep 0.05; done\""
    );
    let table = docker.ok(["ps"]);
    assert!(table.starts_with("CONTAINER ID"), "{table}");
    assert!(
        table.contains(&id[..12]) && table.contains("web"),
        "{table}"
    );
    assert_eq!(docker.ok(["ps", "-q"]), format!("{}\n", &id[..12]));
    assert_eq!(docker.ok(["ps", "-aq", "--no-trunc"]), format!("{id}\n"));
    // runc's `ps ID` lists the container's processes.
    let processes = docker.ok(["ps", &id]);
    assert!(
        processes.starts_with("UID") && processes.contains("sh -c echo out-1"),
        "{processes}"
    );

    // The log keeps the streams apart.
    let deadline = Instant::now() + Duration::from_secs(5);
    let logs = loop {
        let out = docker.run(["logs", "web"]);
        let text = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        if text.0.contains("out-1") && text.1.contains("err-1") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(logs, ("out-1\n".to_string(), "err-1\n".to_string()));

    // exec joins the container: its environment, user, workdir; by name and by id prefix.
    let out = docker.ok([
        "exec",
        "-e",
        "EXTRA=1",
        "-w",
        "/tmp",
        "-u",
        "tester",
        "web",
        "sh",
        "-c",
        "echo $MODE $EXTRA; pwd; id -u; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_eq!(
        out.lines().take(3).collect::<Vec<_>>(),
        ["test 1", "/tmp", "1000"]
    );
    assert!(
        out.contains("sh -c echo out-1"),
        "pid 1 is the container's init: {out}"
    );
    let out = docker.run(["exec", &id[..8], "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    let out = docker.run(["exec", "web", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    docker.ok([
        "exec",
        "-d",
        "web",
        "sh",
        "-c",
        "echo detached-exec > /tmp/marker",
    ]);
    wait_until("exec -d never ran", Duration::from_secs(5), || {
        docker.run(["exec", "web", "cat", "/tmp/marker"]).stdout == b"detached-exec\n"
    });
    // Without -i an exec'd process has an empty stdin, with -i ours.
    let mut child = docker
        .command(["exec", "-i", "web", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    assert_eq!(child.wait_with_output().unwrap().stdout, b"typed\n");

    // logs -f follows until the container stops.
    let follow_out = docker.scratch("follow").join("out");
    let mut follow = docker
        .command(["logs", "-f", "web"])
        .stdout(std::fs::File::create(&follow_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_text(&follow_out, "out-1");

    assert_eq!(docker.ok(["stop", "-t", "5", "web"]), "web\n");
    let status = follow.wait().unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&follow_out).unwrap(),
        "out-1\nstopping\n"
    );
    assert_eq!(docker.ok(["wait", "web"]), "3\n");
    let web = docker.container("web");
    assert_eq!(web["State"], "exited");
    assert!(
        web["Status"].as_str().unwrap().starts_with("Exited (3) "),
        "{web}"
    );
    assert!(
        !docker.ok(["ps"]).contains("web"),
        "ps without -a lists running ones"
    );
    assert!(docker.ok(["ps", "-a"]).contains("Exited (3)"));
    // --run-root is the run root of the runtime commands too.
    let state: serde_json::Value = serde_json::from_str(&docker.ok(["state", &id])).unwrap();
    assert_eq!(
        state["status"], "stopped",
        "the runtime's view of the same container"
    );

    // The exec'd processes were reaped: nothing is left in the container's cgroup.
    let out = docker.run(["exec", "web", "true"]);
    assert!(!out.status.success(), "exec into a stopped container fails");

    assert_eq!(docker.ok(["rm", "web"]), "web\n");
    assert!(docker.ps().is_empty());
    docker.assert_clean();
    assert!(monitor_pid(&id).is_none(), "the monitor exited");
}

#[test]
fn stop_escalates_to_sigkill_and_uses_the_stop_signal() {
    let docker = Docker::new();
    // pid 1 without a handler ignores SIGTERM: stop must kill it after the timeout.
    docker.ok(["run", "-d", "--name", "stubborn", IMAGE, "sleep", "300"]);
    docker.wait_state("stubborn", "running");
    let started = Instant::now();
    docker.ok(["stop", "-t", "1", "stubborn"]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(docker.ok(["wait", "stubborn"]), "137\n");

    // --stop-signal: the container exits through its USR1 handler.
    docker.ok([
        "run",
        "-d",
        "--name",
        "polite",
        "--stop-signal",
        "USR1",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 7' USR1; while true; do sleep 0.05; done",
    ]);
    docker.wait_state("polite", "running");
    docker.ok(["stop", "polite"]);
    assert_eq!(docker.ok(["wait", "polite"]), "7\n");
    docker.ok(["rm", "stubborn", "polite"]);
    docker.assert_clean();
}

#[test]
fn kill_with_signals_and_runc_forms() {
    let docker = Docker::new();
    let id = docker
        .ok([
            "run",
            "-d",
            "--name",
            "target",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo got-usr1' USR1; while true; do sleep 0.05; done",
        ])
        .trim()
        .to_string();
    docker.wait_state("target", "running");
    assert_eq!(docker.ok(["kill", "-s", "USR1", "target"]), "target\n");
    wait_until("USR1 never arrived", Duration::from_secs(5), || {
        docker.ok(["logs", "target"]).contains("got-usr1")
    });
    // runc's positional form works on the same container (and prints nothing).
    let runc_form = docker.ok(["kill", &id, "USR1"]);
    assert_eq!(runc_form, "");
    // docker's default is SIGKILL.
    docker.ok(["kill", "target"]);
    assert_eq!(docker.ok(["wait", "target"]), "137\n");
    let again = docker.run(["kill", "target"]);
    assert!(
        !again.status.success(),
        "a stopped container cannot be killed"
    );
    let missing = docker.run(["kill", "nothing-here"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nothing-here"));
}

#[test]
fn rm_refuses_running_containers_without_force() {
    let docker = Docker::new();
    docker.ok(["run", "-d", "--name", "busy", IMAGE, "sleep", "300"]);
    docker.wait_state("busy", "running");
    let out = docker.run(["rm", "busy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rm -f"));
    // A `wait` in progress neither blocks `rm -f` nor misses the exit code.
    let waiter = docker
        .command(["wait", "busy"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let refused = docker.run(["rm", "busy"]);
    assert!(!refused.status.success(), "still running");
    assert_eq!(docker.ok(["rm", "-f", "busy"]), "busy\n");
    assert_eq!(waiter.wait_with_output().unwrap().stdout, b"137\n");
    docker.assert_clean();
    let out = docker.run(["rm", "busy"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such container: busy"));
}

#[test]
fn detached_rm_removes_itself_and_wait_still_reports() {
    let docker = Docker::new();
    let id = docker
        .ok(["run", "-d", "--rm", IMAGE, "sh", "-c", "sleep 0.5; exit 4"])
        .trim()
        .to_string();
    assert_eq!(docker.ok(["wait", &id]), "4\n");
    wait_until(
        "--rm never removed the container",
        Duration::from_secs(5),
        || docker.container_ids().is_empty() && docker.store_containers().is_empty(),
    );
    assert!(docker.ps().is_empty());
    docker.assert_clean();
}

#[test]
fn foreground_run_forwards_sigterm() {
    let docker = Docker::new();
    let out = docker.scratch("sig").join("out");
    let mut child = docker
        .command([
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.05; done",
        ])
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    wait_for_text(&out, "ready");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(42));
    assert!(std::fs::read_to_string(&out).unwrap().contains("got-term"));
    docker.assert_clean();
}

#[test]
fn a_killed_monitor_leaves_the_truth_and_rm_f_cleans_up() {
    let docker = Docker::new();
    let id = docker
        .ok(["run", "-d", "--name", "orphan", IMAGE, "sleep", "300"])
        .trim()
        .to_string();
    docker.wait_state("orphan", "running");
    let monitor = monitor_pid(&id).expect("the monitor of a detached container");
    let rss = rss_kib(monitor);
    assert!(rss > 0 && rss < 16 * 1024, "monitor RSS {rss} KiB");
    // SAFETY: killing the monitor found above.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    // The container itself keeps running.
    assert_eq!(docker.container("orphan")["State"], "running");
    docker.ok(["kill", "orphan"]);
    let gone = docker.wait_state("orphan", "exited");
    assert_eq!(gone["Status"], "Exited (unknown)");
    let wait = docker.run(["wait", "orphan"]);
    assert!(!wait.status.success());
    assert!(String::from_utf8_lossy(&wait.stderr).contains("unknown"));
    docker.ok(["rm", "-f", "orphan"]);
    docker.assert_clean();
}

#[test]
fn rm_f_after_twinbox_was_killed_mid_run() {
    let docker = Docker::new();
    let mut child = docker
        .command(["run", "--name", "abandoned", IMAGE, "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = docker.wait_state("abandoned", "running");
    let id = running["Id"].as_str().unwrap().to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(docker.container("abandoned")["State"], "running");
    let cgroup = twinbox_tests::runtime::host_cgroup_dir("memory", &id);
    assert!(cgroup.is_dir());
    assert!(!docker.store_mounts().is_empty());
    assert_eq!(docker.ok(["rm", "-f", "abandoned"]), "abandoned\n");
    assert!(!cgroup.exists(), "the cgroup is removed");
    docker.assert_clean();
}

#[test]
fn logs_of_a_foreground_container_explain_and_inspect_shows_the_container() {
    let docker = Docker::new();
    docker.ok([
        "run",
        "--name",
        "fg",
        "--hostname",
        "fg-host",
        "--memory",
        "64m",
        "-v",
        "vol:/vol",
        IMAGE,
        "true",
    ]);
    let out = docker.run(["logs", "fg"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-d"));
    let inspect: serde_json::Value = serde_json::from_str(&docker.ok(["inspect", "fg"])).unwrap();
    let fg = &inspect[0];
    assert_eq!(fg["Name"], "fg");
    assert_eq!(fg["State"]["Status"], "exited");
    assert_eq!(fg["State"]["ExitCode"], 0);
    assert_eq!(fg["Config"]["Hostname"], "fg-host");
    assert_eq!(fg["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(fg["HostConfig"]["NetworkMode"], "none");
    assert_eq!(fg["Isolation"], "container");
    assert_eq!(fg["Mounts"][0]["Destination"], "/vol");
    assert_eq!(fg["ImageName"], IMAGE);
    // Images are still inspected by the same command.
    let image: serde_json::Value =
        serde_json::from_str(&docker.ok(["inspect", "--type", "image", IMAGE])).unwrap();
    assert!(image[0]["Config"].is_object());
    docker.ok(["rm", "fg"]);
}
