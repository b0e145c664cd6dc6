//! Acceptance: containerd from Debian, started by the test with its own root, state and
//! socket, runs containers through its runc shim with twinbox as the runc binary
//! (`ctr run --runc-binary $(twinbox) ...`).

use std::time::{Duration, Instant};

use twinbox_tests::engines::Containerd;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ctr run` flags that make the shim use twinbox on a rootfs directory.
fn run_args<'a>(rootfs: &'a str, twinbox: &'a str, root: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--rootfs",
        "--runc-binary",
        twinbox,
        "--runc-root",
        root,
        rootfs,
    ]
}

#[test]
fn ctr_run_exec_and_kill_through_the_runc_shim() {
    let ctd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    twinbox_tests::busybox_rootfs(&rootfs).unwrap();
    let twinbox = twinbox_tests::twinbox_bin();
    let (rootfs, twinbox) = (rootfs.to_str().unwrap(), twinbox.to_str().unwrap());
    let root = ctd.runc_root();
    let root = root.to_str().unwrap();
    let id = format!("fg{}", std::process::id());

    // Foreground run: output and exit code come back through containerd.
    let mut args = run_args(rootfs, twinbox, root);
    args.insert(1, "--rm");
    let out =
        ctd.ctr(
            args.iter()
                .copied()
                .chain([id.as_str(), "sh", "-c", "echo hi from ctr; exit 9"]),
        );
    assert_eq!(out.status.code(), Some(9), "{}\n{}", text(&out), ctd.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from ctr\n");

    // Detached task: exec into it, then kill it.
    let id = format!("bg{}", std::process::id());
    let mut args = run_args(rootfs, twinbox, root);
    args.insert(1, "-d");
    let out = ctd.ctr(args.iter().copied().chain([
        id.as_str(),
        "sh",
        "-c",
        "trap 'exit 3' TERM; while true; do sleep 0.1; done",
    ]));
    assert!(out.status.success(), "{}\n{}", text(&out), ctd.log());
    let state_dir = std::path::Path::new(root).join("default").join(&id);
    assert!(
        state_dir.join("state.json").is_file(),
        "twinbox state expected in {}",
        state_dir.display()
    );
    let exec = ctd.ctr([
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo exec-out; exit 5",
    ]);
    assert_eq!(exec.status.code(), Some(5), "{}", text(&exec));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "exec-out\n");
    let ps = ctd.ctr(["task", "ps", &id]);
    assert!(ps.status.success(), "{}", text(&ps));
    let kill = ctd.ctr(["task", "kill", &id]);
    assert!(kill.status.success(), "{}", text(&kill));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ls = ctd.ctr(["task", "ls"]);
        let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
        if listing
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "task never stopped: {listing}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let delete = ctd.ctr(["task", "delete", &id]);
    assert!(delete.status.success(), "{}", text(&delete));
    assert!(
        text(&delete).contains("exit code 3"),
        "exit status 3 expected: {}",
        text(&delete)
    );
    assert!(ctd.ctr(["container", "rm", &id]).status.success());
    // twinbox's state for the task is gone (the shim runs twinbox with --root ROOT/NAMESPACE).
    assert!(!state_dir.exists());
}
