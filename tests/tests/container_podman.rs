//! Acceptance: podman from Debian drives twinbox as its OCI runtime
//! (`podman --runtime $(twinbox) ...`), with an image podman imported from a busybox rootfs
//! the test built, and private storage and configuration.

use std::time::{Duration, Instant};

use twinbox_tests::engines::Podman;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn podman_run_rm_prints_and_returns_exit_codes() {
    let podman = Podman::new();
    let out = podman.run(["run", "--rm", &podman.image, "echo", "hi"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    let out = podman.run(["run", "--rm", &podman.image, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));

    let out = podman.run(["run", "--rm", &podman.image, "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(text(&out).contains("executable file not found"));

    let out = podman.run(["run", "--rm", "-t", &podman.image, "tty"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/dev/pts/0"));
}

#[test]
fn podman_detached_container_exec_logs_stop_ps_rm() {
    let podman = Podman::new();
    let name = format!("web-{}", std::process::id());
    let out = podman.run([
        "run",
        "-d",
        "--name",
        &name,
        "--memory",
        "64m",
        &podman.image,
        "sh",
        "-c",
        "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let ps = podman.run(["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.starts_with(&name) && l.contains("Up")),
        "{}",
        text(&ps)
    );
    let exec = podman.run([
        "exec",
        &name,
        "sh",
        "-c",
        "echo in-exec; cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    assert!(exec.status.success(), "{}", text(&exec));
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        format!("in-exec\n{}\n", 64 << 20)
    );
    let exec = podman.run(["exec", &name, "sh", "-c", "exit 4"]);
    assert_eq!(exec.status.code(), Some(4));
    let exec = podman.run(["exec", "-t", &name, "tty"]);
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains("/dev/pts/"),
        "{}",
        text(&exec)
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = podman.run(["logs", &name]);
        if String::from_utf8_lossy(&logs.stdout).contains("started") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&logs));
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = podman.run(["stop", "-t", "10", &name]);
    assert!(stop.status.success(), "{}", text(&stop));
    let inspect = podman.run([
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        &name,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "exited 0",
        "{}",
        text(&inspect)
    );
    let logs = podman.run(["logs", &name]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "started\nbye\n");
    let ps = podman.run(["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains("Exited (0)"),
        "{}",
        text(&ps)
    );
    let rm = podman.run(["rm", &name]);
    assert!(rm.status.success(), "{}", text(&rm));
    let ps = podman.run(["ps", "-a", "-q"]);
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty());
}
