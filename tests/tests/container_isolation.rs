//! Each isolation feature of the container backend, checked from inside the container:
//! capabilities, no_new_privs and seccomp in /proc/self/status, a syscall the profile
//! forbids, user namespace maps, cgroup membership and limits (OOM kill, pids limit), the
//! mount table, masked and read-only paths, hostname, rlimits, exit codes, signals, tty and
//! exec.

use std::time::Duration;

use serde_json::{Value, json};
use twinbox_tests::runtime::{Bundle, Runtime, host_cgroup_dir, unique_id};

/// Runs `script` with `sh -c` in a fresh container configured by `edit`; returns (exit code,
/// stdout, stderr).
fn sh(script: &str, edit: impl FnOnce(&mut Value)) -> (i32, String, String) {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sh", "-c", script], edit);
    rt.run_bundle(&bundle, &unique_id("iso"))
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
        .trim()
        .to_string()
}

#[test]
fn capabilities_no_new_privs_and_seccomp_are_applied() {
    let caps = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let (code, out, err) = sh("cat /proc/self/status", |c| {
        c["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps,
            "ambient": ["CAP_NET_BIND_SERVICE"],
        });
        c["process"]["noNewPrivileges"] = json!(true);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        });
    });
    assert_eq!(code, 0, "{err}");
    // CAP_CHOWN = 0, CAP_KILL = 5, CAP_NET_BIND_SERVICE = 10.
    let mask = format!("{:016x}", (1u64 << 0) | (1 << 5) | (1 << 10));
    for set in ["CapEff", "CapPrm", "CapBnd", "CapInh"] {
        assert_eq!(status_field(&out, set), mask, "{set}");
    }
    assert_eq!(status_field(&out, "CapAmb"), format!("{:016x}", 1u64 << 10));
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(status_field(&out, "Seccomp"), "2");
}

#[test]
fn a_syscall_the_profile_forbids_fails_with_its_errno() {
    let (code, out, err) = sh(
        "mkdir /tmp/blocked; echo rc=$?; touch /tmp/allowed && echo touched",
        |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
            });
        },
    );
    assert_eq!(code, 0);
    assert!(out.contains("rc=1") && out.contains("touched"), "{out}");
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn seccomp_kill_action_kills_the_process() {
    let (code, _, _) = sh("exec uname", |c| {
        c["process"]["noNewPrivileges"] = json!(false);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS"}],
        });
    });
    assert_eq!(code, 128 + libc::SIGSYS);
}

#[test]
fn user_namespace_maps_ids() {
    let (code, out, err) = sh(
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g",
        |c| {
            let namespaces = c["linux"]["namespaces"].as_array_mut().unwrap();
            namespaces.push(json!({"type": "user"}));
            c["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            c["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        },
    );
    assert_eq!(code, 0, "{err}");
    let fields: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(fields[0], ["0", "100000", "65536"]);
    assert_eq!(fields[1], ["0", "100000", "65536"]);
    assert_eq!(fields[2], ["0"]);
    assert_eq!(fields[3], ["0"]);
}

#[test]
fn cgroup_membership_and_limits_are_visible_inside() {
    let rt = Runtime::new();
    let bundle = Bundle::new(
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes \
             /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.shares",
        ],
        |c| {
            c["linux"]["resources"]["memory"] = json!({"limit": 67108864});
            c["linux"]["resources"]["pids"] = json!({"limit": 50});
            c["linux"]["resources"]["cpu"] = json!({"shares": 512});
        },
    );
    let id = unique_id("cg");
    let (code, out, err) = rt.run_bundle(&bundle, &id);
    assert_eq!(code, 0, "{err}");
    // The cgroup namespace makes the container's own cgroup its root.
    assert!(
        out.lines()
            .any(|l| l == "4:memory:/" || l.ends_with(":memory:/")),
        "{out}"
    );
    let values: Vec<&str> = out.lines().rev().take(3).collect();
    assert_eq!(values, ["512", "50", "67108864"]);
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    let rt = Runtime::new();
    // dd with a 256 MiB block allocates and fills the buffer: far over the 32 MiB limit.
    let bundle = Bundle::new(
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        |c| {
            c["linux"]["resources"]["memory"] = json!({"limit": 33554432, "swap": 33554432});
        },
    );
    let id = unique_id("oom");
    let (code, _, err) = rt.run_bundle(&bundle, &id);
    assert_eq!(code, 128 + libc::SIGKILL, "{err}");
    assert!(err.contains("OOM-killed"), "{err}");
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    let rt = Runtime::new();
    let bundle = Bundle::new(
        &[
            "sh",
            "-c",
            // A subshell forks until the kernel refuses (the shell then gives up); after it only
            // builtins run, since nothing can fork any more. When pid 1 exits, the kernel
            // kills the rest of the pid namespace.
            "(while true; do sleep 5 & done); read n < /sys/fs/cgroup/pids/pids.current; echo $n",
        ],
        |c| c["linux"]["resources"]["pids"] = json!({"limit": 10}),
    );
    let id = unique_id("pids");
    rt.track(&id);
    let out = rt.run(["run", "--bundle", bundle.path().to_str().unwrap(), &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("can't fork"), "{stderr}");
    let current: u32 = text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} {stderr}"));
    assert!(current <= 10, "pids.current {current} exceeds the limit");
    assert!(
        current >= 5,
        "the shell should have forked up to the limit, got {current}"
    );
}

#[test]
fn mounts_masked_and_readonly_paths() {
    let (code, out, err) = sh(
        "cat /proc/self/mountinfo; echo ---; wc -c < /proc/timer_list; ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/kernel/domainname && echo sysctl-writable; \
         touch /etc/x && echo root-writable; true",
        |c| {
            c["root"]["readonly"] = json!(true);
        },
    );
    assert_eq!(code, 0, "{err}");
    let (mountinfo, rest) = out.split_once("---\n").unwrap();
    let mount_points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    for expected in [
        "/",
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        assert!(
            mount_points.contains(&expected),
            "{expected} not mounted: {mount_points:?}"
        );
    }
    let root_line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert!(
        root_line.split(' ').nth(5).unwrap().starts_with("ro"),
        "{root_line}"
    );
    // Masked: /proc/timer_list by /dev/null (reads as empty), /sys/firmware by an empty tmpfs.
    let mut rest_lines = rest.lines();
    assert_eq!(rest_lines.next().unwrap().trim(), "0");
    assert_eq!(rest_lines.next().unwrap().trim(), "0");
    assert!(
        !rest.contains("sysctl-writable"),
        "/proc/sys must be read-only"
    );
    assert!(
        !rest.contains("root-writable"),
        "readonly root must refuse writes"
    );
    assert!(err.contains("Read-only file system"), "{err}");
}

#[test]
fn hostname_sysctl_and_rlimits() {
    let (code, out, err) = sh(
        "hostname; cat /proc/sys/net/ipv4/ip_forward; ulimit -n; ulimit -Hn",
        |c| {
            c["hostname"] = json!("tbx-host");
            c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
            c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512}]);
        },
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "tbx-host\n1\n256\n512\n");
}

#[test]
fn an_rlimit_the_host_cannot_grant_names_the_limit() {
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading this process's limit into a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
    let too_high = hard.rlim_max.saturating_mul(2).min(1 << 30);
    let (code, _, err) = sh("true", |c| {
        c["process"]["rlimits"] =
            json!([{"type": "RLIMIT_NOFILE", "soft": too_high, "hard": too_high}]);
    });
    // Root with CAP_SYS_RESOURCE may raise the limit; this machine's bounding set lacks it.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = u64::from_str_radix(&status_field(&status, "CapEff"), 16).unwrap();
    if eff & (1 << 24) == 0 {
        assert_eq!(code, 1);
        assert!(
            err.contains("RLIMIT_NOFILE") && err.contains("CAP_SYS_RESOURCE"),
            "{err}"
        );
    } else {
        assert_eq!(code, 0, "{err}");
    }
}

#[test]
fn exit_codes_127_126_and_user() {
    let (code, _, err) = sh("true", |c| {
        c["process"]["args"] = json!(["no-such-command"])
    });
    assert_eq!(code, 127);
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    let (code, _, err) = sh("true", |c| c["process"]["args"] = json!(["/etc/passwd"]));
    assert_eq!(code, 126, "{err}");
    let (code, out, err) = sh("id -u; id -g; id -G", |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10]});
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1000\n1000\n1000 10\n");
}

#[test]
fn foreground_run_forwards_signals_and_reports_128_plus_signal() {
    let rt = Runtime::new();
    let bundle = Bundle::new(
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.05; done",
        ],
        |_| {},
    );
    let id = rt.track(&unique_id("sig"));
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = rt
        .command(["run", "--bundle", bundle.path().to_str().unwrap(), &id])
        .stdout(out.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(out.path())
        .unwrap()
        .contains("ready")
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    assert!(
        std::fs::read_to_string(out.path())
            .unwrap()
            .contains("got-term")
    );

    // Killed from outside: 128 + 9.
    let bundle = Bundle::new(&["sleep", "30"], |_| {});
    let id = rt.track(&unique_id("sig9"));
    let mut child = rt
        .command(["run", "--bundle", bundle.path().to_str().unwrap(), &id])
        .spawn()
        .unwrap();
    rt.wait_status(&id, "running");
    rt.ok(["kill", &id, "KILL"]);
    assert_eq!(child.wait().unwrap().code(), Some(137));
}

#[test]
fn foreground_run_with_terminal_relays_the_pty() {
    let (code, out, err) = sh("tty; echo done", |c| c["process"]["terminal"] = json!(true));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("/dev/pts/0") && out.contains("done"),
        "{out:?}"
    );
}

#[test]
fn exec_joins_namespaces_cgroup_and_keeps_the_container_profile() {
    let rt = Runtime::new();
    let caps = json!(["CAP_KILL", "CAP_SETUID", "CAP_SETGID"]);
    let bundle = Bundle::new(&["sleep", "30"], |c| {
        c["hostname"] = json!("exec-host");
        c["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps,
        });
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
        });
    });
    let id = unique_id("exec");
    rt.create(&bundle, &id);
    rt.ok(["start", &id]);
    let init_pid = rt.state(&id)["pid"].as_i64().unwrap();
    let out = rt.ok([
        "exec",
        &id,
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; grep -E '^(CapEff|Seccomp):' /proc/self/status; \
         mkdir /tmp/nope 2>&1; cat /proc/self/cgroup | grep memory",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "exec-host");
    assert_eq!(lines[1].trim(), "sleep 30");
    assert_eq!(
        lines[2].split_whitespace().nth(1).unwrap(),
        format!("{:016x}", (1u64 << 5) | (1 << 6) | (1 << 7))
    );
    assert_eq!(lines[3].split_whitespace().nth(1).unwrap(), "2");
    assert!(lines[4].contains("Permission denied"), "{out}");
    assert!(lines[5].ends_with(":memory:/"), "{out}");
    // The exec'd process is in the container's cgroup on the host too.
    let procs =
        std::fs::read_to_string(host_cgroup_dir("memory", &id).join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|p| p == init_pid.to_string()));

    let user = rt.ok([
        "exec",
        "--user",
        "1000:1000",
        "--env",
        "GREETING=hi",
        &id,
        "sh",
        "-c",
        "id -u; echo $GREETING",
    ]);
    assert_eq!(user, "1000\nhi\n");
    let failing = rt.run(["exec", &id, "sh", "-c", "exit 5"]);
    assert_eq!(failing.status.code(), Some(5));
    let missing = rt.run(["exec", &id, "no-such-tool"]);
    assert_eq!(missing.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("executable file not found"));

    // Detached exec with a pid file.
    let pid_file = bundle.path().join("exec.pid");
    rt.ok([
        "exec",
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "20",
    ]);
    let exec_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let pids: Vec<i32> = serde_json::from_str(&rt.ok(["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&exec_pid), "{pids:?} lacks {exec_pid}");
    let table = rt.ok(["ps", &id]);
    assert!(table.lines().next().unwrap().contains("PID"));
    assert!(table.contains("sleep 20"));
    rt.ok(["delete", "--force", &id]);
}

#[test]
fn process_json_exec_and_no_pivot() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sleep", "30"], |_| {});
    let id = unique_id("nopivot");
    rt.track(&id);
    rt.ok([
        "create",
        "--no-pivot",
        "--bundle",
        bundle.path().to_str().unwrap(),
        &id,
    ]);
    rt.ok(["start", &id]);
    let process = bundle.path().join("process.json");
    std::fs::write(
        &process,
        json!({"args": ["sh", "-c", "echo from-json $X"], "env": ["X=1", "PATH=/bin"], "cwd": "/tmp",
               "user": {"uid": 0, "gid": 0}})
        .to_string(),
    )
    .unwrap();
    assert_eq!(
        rt.ok(["exec", "--process", process.to_str().unwrap(), &id]),
        "from-json 1\n"
    );
    rt.ok(["delete", "--force", &id]);
}
