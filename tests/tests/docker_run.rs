//! `twinbox run IMAGE` flags, each checked from inside the container: environment, env file,
//! workdir, user and groups, hostname, bind mounts, named volumes, tmpfs, read-only root,
//! cgroup limits, capabilities, seccomp, no_new_privs, networking, terminal and stdin; and
//! the exit codes of the container and of twinbox's own failures.

use std::io::Write;
use std::process::Stdio;

use twinbox_tests::docker::{Docker, IMAGE};

fn status_field(status: &str, key: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap_or_else(|_| hex.parse().unwrap())
}

#[test]
fn env_env_file_workdir_user_groups_and_hostname() {
    let docker = Docker::new();
    let env_file = docker.scratch("env").join("vars");
    std::fs::write(
        &env_file,
        "# settings\nFROM_FILE=file value\nOVERRIDDEN=file\n",
    )
    .unwrap();
    let out = docker
        .command([
            "run",
            "--rm",
            "-e",
            "A=1",
            "-e",
            "PASSED",
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "OVERRIDDEN=flag",
            "-w",
            "/tmp",
            "-u",
            "tester",
            "--hostname",
            "box.example",
            IMAGE,
            "sh",
            "-c",
            "echo A=$A; echo PASSED=$PASSED; echo FROM_FILE=$FROM_FILE; \
             echo OVERRIDDEN=$OVERRIDDEN; pwd; id -u; id -g; id -G; hostname; echo HOME=$HOME",
        ])
        .env("PASSED", "from twinbox's environment")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "A=1",
            "PASSED=from twinbox's environment",
            "FROM_FILE=file value",
            "OVERRIDDEN=flag",
            "/tmp",
            "1000",
            "1000",
            // tester's primary group and wheel, from the image's /etc/group.
            "1000 10",
            "box.example",
            "HOME=/home/tester",
        ]
    );

    let (code, out, err) = docker.sh(&["-u", "65534:10"], "id -u; id -g");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "65534\n10\n");

    // A missing working directory is created; /etc/hostname and /etc/hosts name the host.
    let (code, out, err) = docker.sh(
        &["-w", "/srv/app", "--hostname", "web1"],
        "pwd; cat /etc/hostname; grep -c localhost /etc/hosts; grep web1 /etc/hosts",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "/srv/app\nweb1\n2\n127.0.1.1\tweb1\n");
}

#[test]
fn bind_mounts_read_only_and_read_write() {
    let docker = Docker::new();
    let host = docker.scratch("bind");
    std::fs::write(host.join("hello"), "from the host\n").unwrap();
    let ro = format!("{}:/data:ro", host.display());
    let (code, out, err) = docker.sh(
        &["-v", &ro],
        "cat /data/hello; touch /data/new 2>&1 || echo write-refused",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from the host"), "{out}");
    assert!(
        out.contains("Read-only file system") && out.contains("write-refused"),
        "{out}"
    );
    let rw = format!("{}:/data", host.display());
    let (code, _, err) = docker.sh(&["-v", &rw], "echo from the container > /data/new");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(host.join("new")).unwrap(),
        "from the container\n"
    );

    let missing = docker.run(["run", "--rm", "-v", "/no/such/dir:/x", IMAGE, "true"]);
    assert_eq!(missing.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/dir"));
    docker.assert_clean();
}

#[test]
fn named_volumes_persist_across_containers_and_survive_rm() {
    let docker = Docker::new();
    docker.ok([
        "run",
        "--name",
        "writer",
        "-v",
        "data:/vol",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /vol/file",
    ]);
    let listed = docker.ok(["volume", "ls", "-q"]);
    assert_eq!(listed, "data\n");
    // In use by the (stopped) writer: refused.
    let busy = docker.run(["volume", "rm", "data"]);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("writer"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    docker.ok(["rm", "writer"]);
    let (code, out, err) = docker.sh(&["-v", "data:/vol:ro"], "cat /vol/file; touch /vol/x 2>&1");
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("kept") && out.contains("Read-only"), "{out}");

    let inspect: serde_json::Value =
        serde_json::from_str(&docker.ok(["volume", "inspect", "data"])).unwrap();
    let mountpoint = inspect[0]["Mountpoint"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(format!("{mountpoint}/file")).unwrap(),
        "kept\n"
    );
    assert_eq!(inspect[0]["Driver"], "local");

    // Anonymous volumes go with --rm; named ones stay.
    let (code, _, err) = docker.sh(&["-v", "/scratch"], "touch /scratch/x");
    assert_eq!(code, 0, "{err}");
    assert_eq!(docker.ok(["volume", "ls", "-q"]), "data\n");

    assert_eq!(docker.ok(["volume", "create", "spare"]), "spare\n");
    let pruned = docker.ok(["volume", "prune"]);
    assert!(
        pruned.contains("data") && pruned.contains("spare"),
        "{pruned}"
    );
    assert_eq!(docker.ok(["volume", "ls", "-q"]), "");
    docker.assert_clean();
}

#[test]
fn tmpfs_and_read_only_root() {
    let docker = Docker::new();
    let (code, out, err) = docker.sh(
        &["--read-only", "--tmpfs", "/scratch:size=1m,mode=1770"],
        "touch /newfile 2>&1; touch /scratch/ok && echo scratch-writable; \
         grep ' /scratch ' /proc/mounts",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("scratch-writable"), "{out}");
    let mount = out.lines().last().unwrap();
    assert!(mount.starts_with("tmpfs /scratch tmpfs"), "{mount}");
    for option in ["rw", "nosuid", "nodev", "noexec", "size=1024k", "mode=1770"] {
        assert!(mount.contains(option), "{option} missing: {mount}");
    }
}

#[test]
fn memory_cpu_and_pids_limits_are_in_the_cgroup() {
    let docker = Docker::new();
    let (code, out, err) = docker.sh(
        &["--memory", "64m", "--cpus", "0.5", "--pids-limit", "50"],
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
         /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/pids/pids.max",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}\n50000\n100000\n50\n", 64 << 20));
    for (flag, value) in [("--memory", "1k"), ("--cpus", "1000"), ("--memory", "lots")] {
        let out = docker.run(["run", "--rm", flag, value, IMAGE, "true"]);
        assert_eq!(out.status.code(), Some(125), "{flag} {value}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag));
    }
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    let docker = Docker::new();
    let out = docker.run([
        "run",
        "--name",
        "hog",
        "--memory",
        "32m",
        IMAGE,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=256M",
        "count=1",
    ]);
    assert_eq!(out.status.code(), Some(137));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OOM killer"), "{stderr}");
    let hog = docker.container("hog");
    assert_eq!(hog["OOMKilled"], true);
    assert_eq!(hog["ExitCode"], 137);
    assert!(
        hog["Status"].as_str().unwrap().contains("OOM killed"),
        "{hog}"
    );
    let table = docker.ok(["ps", "-a"]);
    assert!(
        table.contains("Exited (137)") && table.contains("(OOM killed)"),
        "{table}"
    );
    let inspect: serde_json::Value = serde_json::from_str(&docker.ok(["inspect", "hog"])).unwrap();
    assert_eq!(inspect[0]["State"]["OOMKilled"], true);
    docker.ok(["rm", "hog"]);
}

#[test]
fn capabilities_added_and_dropped() {
    let docker = Docker::new();
    let (code, default, err) = docker.sh(&[], "cat /proc/self/status");
    assert_eq!(code, 0, "{err}");
    let (code, changed, err) = docker.sh(
        &["--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN"],
        "cat /proc/self/status",
    );
    assert_eq!(code, 0, "{err}");
    const CHOWN: u64 = 1 << 0;
    const NET_ADMIN: u64 = 1 << 12;
    let before = status_field(&default, "CapEff");
    let after = status_field(&changed, "CapEff");
    assert_eq!(before.count_ones(), 14, "docker's default set: {before:x}");
    assert!(before & CHOWN != 0 && before & NET_ADMIN == 0);
    assert_eq!(after, (before & !CHOWN) | NET_ADMIN);
    assert_eq!(status_field(&changed, "CapBnd"), after);
    let (code, none, _) = docker.sh(&["--cap-drop", "ALL", "-u", "0"], "cat /proc/self/status");
    assert_eq!(code, 0);
    assert_eq!(status_field(&none, "CapEff"), 0);
}

#[test]
fn seccomp_default_unconfined_profile_file_and_no_new_privileges() {
    let docker = Docker::new();
    // The default profile refuses unshare(2) (no CAP_SYS_ADMIN).
    let script = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; \
                  unshare -m true 2>/dev/null && echo unshare-allowed || echo unshare-refused";
    let (code, out, err) = docker.sh(&[], script);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Seccomp:\t2") && out.contains("NoNewPrivs:\t1"),
        "{out}"
    );
    assert!(out.contains("unshare-refused"), "{out}");
    let (code, out, err) = docker.sh(
        &[
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "no-new-privileges=false",
            "--cap-add",
            "SYS_ADMIN",
        ],
        script,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Seccomp:\t0") && out.contains("NoNewPrivs:\t0"),
        "{out}"
    );
    assert!(out.contains("unshare-allowed"), "{out}");

    // A Docker-format profile file: mkdir refused with EACCES, the rest allowed.
    let profile = docker.scratch("seccomp").join("profile.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "comment": "", "includes": {}, "excludes": {}},
                {"names": ["chdir"], "action": "SCMP_ACT_ERRNO",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let (code, out, err) = docker.sh(
        &["--security-opt", &opt],
        "mkdir /tmp/d 2>&1; cd /tmp && echo chdir-allowed",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(
        out.contains("chdir-allowed"),
        "the CAP_SYS_ADMIN-only rule must not apply: {out}"
    );

    // The compiled programs are kept for the next container (run root, owner only).
    let cached = std::fs::read_dir(docker.run_root().join(".seccomp"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".bpf")
        })
        .count();
    assert!(cached >= 2, "default and file profiles: {cached}");

    let bad = docker.run([
        "run",
        "--rm",
        "--security-opt",
        "apparmor=custom",
        IMAGE,
        "true",
    ]);
    assert_eq!(bad.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--security-opt"));
}

#[test]
fn network_none_has_only_loopback_up_and_host_sees_the_host() {
    let docker = Docker::new();
    let (code, out, err) = docker.sh(&[], "ls /sys/class/net; cat /sys/class/net/lo/flags");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lo", "{out}");
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
    assert!(flags & libc::IFF_UP as u32 != 0, "lo is down: {out}");
    // Loopback traffic works: a listener and a client in the container.
    let (code, out, err) = docker.sh(
        &[],
        "nc -l -p 8080 > /tmp/got & sleep 0.2; echo ping | nc 127.0.0.1 8080; wait; cat /tmp/got",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "ping");

    let (code, out, err) = docker.sh(&["--network", "host"], "ls /sys/class/net; hostname");
    assert_eq!(code, 0, "{err}");
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    let hostname = lines.pop().unwrap();
    assert_eq!(lines, host);
    assert_eq!(
        hostname,
        nix::unistd::gethostname().unwrap().to_string_lossy()
    );
    let bad = docker.run(["run", "--rm", "--network", "bridge", IMAGE, "true"]);
    assert_eq!(bad.status.code(), Some(125));
}

#[test]
fn terminal_with_t_and_stdin_with_i() {
    let docker = Docker::new();
    // -t under a pseudo-terminal made by script(1).
    let under_a_terminal = |args: &str| {
        let command = format!(
            "{} --root {} --run-root {} {args}",
            twinbox_tests::twinbox_bin().display(),
            docker.store().display(),
            docker.run_root().display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args}: {text}");
        text
    };
    let text = under_a_terminal(&format!(
        "run --rm -t {IMAGE} sh -c 'tty; test -t 1 && echo stdout-is-a-tty'"
    ));
    assert!(
        text.contains("/dev/pts/0") && text.contains("stdout-is-a-tty"),
        "{text}"
    );
    // Detached with a terminal: the log gets the terminal's output; exec -it gets its own.
    docker.ok([
        "run",
        "-d",
        "-t",
        "--name",
        "term",
        IMAGE,
        "sh",
        "-c",
        "tty; sleep 300",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !docker.ok(["logs", "term"]).contains("/dev/pts/0") {
        assert!(
            std::time::Instant::now() < deadline,
            "no terminal output logged"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let text = under_a_terminal("exec -it term tty");
    assert!(text.contains("/dev/pts/1"), "{text}");
    docker.ok(["rm", "-f", "term"]);

    // -i: stdin reaches the container; without -i it reads nothing.
    for (flags, expected) in [(&["-i"][..], "hello from stdin\n"), (&[][..], "")] {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, "cat"]);
        let mut child = docker
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"hello from stdin\n");
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{flags:?}");
    }
}

#[test]
fn exit_codes_like_docker() {
    let docker = Docker::new();
    assert_eq!(docker.sh(&[], "exit 3").0, 3);
    let code = |args: &[&str]| {
        let out = docker.run(args);
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (not_found, err) = code(&["run", "--rm", IMAGE, "/no/such/program"]);
    assert_eq!(not_found, 127, "{err}");
    assert!(err.contains("/no/such/program"), "{err}");
    let (not_executable, err) = code(&["run", "--rm", IMAGE, "/etc/passwd"]);
    assert_eq!(not_executable, 126, "{err}");
    let (missing_image, err) = code(&["run", "--rm", "no-such-image:1", "true"]);
    assert_eq!(missing_image, 125);
    assert!(err.contains("no-such-image"), "{err}");
    let (bad_flag, err) = code(&["run", "--no-such-flag", IMAGE, "true"]);
    assert_eq!(bad_flag, 125);
    assert!(err.contains("--no-such-flag"), "{err}");
    let (bad_user, err) = code(&["run", "--rm", "-u", "nosuchuser", IMAGE, "true"]);
    assert_eq!(bad_user, 125);
    assert!(err.contains("nosuchuser"), "{err}");
    let (no_image, _) = code(&["run"]);
    assert_eq!(no_image, 125);
    let (bundle_and_docker_flags, err) = code(&["run", "--bundle", "/tmp", "--rm", "x"]);
    assert_ne!(bundle_and_docker_flags, 0);
    assert!(err.contains("--bundle"), "{err}");
    docker.assert_clean();
}

#[test]
fn names_are_unique() {
    let docker = Docker::new();
    docker.ok(["run", "--name", "one", IMAGE, "true"]);
    let (conflict, err) = {
        let out = docker.run(["run", "--name", "one", IMAGE, "true"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(conflict, Some(125));
    assert!(err.contains("\"one\" is already in use"), "{err}");
    let bad = docker.run(["run", "--name", "-bad", IMAGE, "true"]);
    assert_eq!(bad.status.code(), Some(125));
    docker.ok(["rm", "one"]);
    docker.ok(["run", "--rm", "--name", "one", IMAGE, "true"]);
    // Generated names are docker-like and unique.
    docker.ok(["run", IMAGE, "true"]);
    docker.ok(["run", IMAGE, "true"]);
    let names: Vec<String> = docker
        .ps()
        .iter()
        .map(|c| c["Names"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2);
    assert_ne!(names[0], names[1]);
    assert!(names.iter().all(|n| n.contains('_')), "{names:?}");
}
