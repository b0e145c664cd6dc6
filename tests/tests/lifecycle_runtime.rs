//! Conformance of the OCI runtime lifecycle (runtime spec runtime.md, issue 4): status
//! transitions, the create/start split, which operations each status allows, pid files, the
//! console socket, hooks with the state on stdin, JSON logs, the pid reuse guard, and cleanup
//! after a killed twinbox.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use twinbox_tests::runtime::{
    Bundle, ConsoleSocket, Runtime, host_cgroup_dir, read_until, unique_id,
};

#[test]
fn status_moves_created_running_stopped_and_delete_removes_every_trace() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sleep", "30"], |c| {
        c["annotations"] = json!({"org.example.key": "value"});
    });
    let id = unique_id("life");
    let pid_file = bundle.path().join("init.pid");
    rt.track(&id);
    rt.ok([
        "create",
        "--bundle",
        bundle.path().to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    let state = rt.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["bundle"], bundle.path().to_str().unwrap());
    assert_eq!(state["annotations"]["org.example.key"], "value");
    assert!(state["ociVersion"].as_str().unwrap().starts_with("1."));
    assert!(state["created"].as_str().unwrap().ends_with('Z'));
    let pid = state["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // The init is alive but has not run the user program yet.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("sleep"));
    assert!(host_cgroup_dir("memory", &id).is_dir());
    // The init was born in (cgroup v2, clone3) or moved itself into (v1) every hierarchy.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines().filter(|l| !l.contains("name=")) {
        assert!(
            line.ends_with(&format!("/twinbox/{id}")),
            "{line} in\n{cgroups}"
        );
    }

    rt.ok(["start", &id]);
    assert_eq!(rt.status(&id), "running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).starts_with("sleep"));
    let again = rt.run(["start", &id]);
    assert!(!again.status.success(), "starting twice must fail");

    let refused = rt.run(["delete", &id]);
    assert!(
        !refused.status.success(),
        "delete of a running container needs --force"
    );
    assert_eq!(rt.status(&id), "running");

    rt.ok(["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    assert_eq!(rt.state(&id)["pid"], 0);
    let not_running = rt.run(["kill", &id, "TERM"]);
    assert!(!not_running.status.success());
    assert!(String::from_utf8_lossy(&not_running.stderr).contains("container not running"));

    rt.ok(["delete", &id]);
    assert!(!host_cgroup_dir("memory", &id).exists());
    assert!(!rt.root().join(&id).exists());
    let gone = rt.run(["state", &id]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("does not exist"));
}

#[test]
fn created_containers_can_be_killed_and_deleted_and_force_deletes_running_ones() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sleep", "30"], |_| {});
    let created = unique_id("created");
    rt.create(&bundle, &created);
    let pid = rt.state(&created)["pid"].as_i64().unwrap();
    // runc (and containerd's shim, which relies on it) deletes never-started containers.
    rt.ok(["delete", &created]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));

    let running = unique_id("running");
    rt.create(&bundle, &running);
    rt.ok(["start", &running]);
    let pid = rt.state(&running)["pid"].as_i64().unwrap();
    rt.ok(["delete", "--force", &running]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
    assert!(!host_cgroup_dir("pids", &running).exists());
}

fn is_zombie(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn kill_accepts_names_numbers_and_all() {
    let rt = Runtime::new();
    let bundle = Bundle::new(
        &[
            "sh",
            "-c",
            "trap 'echo usr1 > /tmp/got; exit 0' USR1; sleep 30 & wait",
        ],
        |_| {},
    );
    let id = unique_id("kill");
    rt.create(&bundle, &id);
    rt.ok(["start", &id]);
    std::thread::sleep(Duration::from_millis(200));
    rt.ok(["kill", &id, "SIGUSR1"]);
    rt.wait_status(&id, "stopped");
    assert_eq!(
        std::fs::read_to_string(bundle.rootfs().join("tmp/got")).unwrap(),
        "usr1\n"
    );
    rt.ok(["delete", &id]);

    let id = unique_id("killall");
    let bundle = Bundle::new(&["sh", "-c", "sleep 30 & sleep 30 & wait"], |_| {});
    rt.create(&bundle, &id);
    rt.ok(["start", &id]);
    std::thread::sleep(Duration::from_millis(200));
    let pids: Vec<i64> = serde_json::from_str(&rt.ok(["ps", "--format", "json", &id])).unwrap();
    assert_eq!(pids.len(), 3, "{pids:?}");
    rt.ok(["kill", "--all", &id, "9"]);
    rt.wait_status(&id, "stopped");
    let bad = rt.run(["kill", &id, "NOSUCHSIG"]);
    assert!(!bad.status.success());
}

#[test]
fn console_socket_receives_the_pty_master() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sh", "-c", "tty; read line; echo got:$line"], |c| {
        c["process"]["terminal"] = json!(true);
    });
    let socket = ConsoleSocket::new();
    let id = rt.track(&unique_id("tty"));
    let mut create = rt.command([
        "create",
        "--bundle",
        bundle.path().to_str().unwrap(),
        "--console-socket",
        socket.path().to_str().unwrap(),
        &id,
    ]);
    let child = create.spawn().unwrap();
    let mut master = socket.receive_master();
    assert!(child.wait_with_output().unwrap().status.success());
    rt.ok(["start", &id]);
    let text = read_until(&mut master, "/dev/pts/");
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    master.write_all(b"hello\n").unwrap();
    let text = read_until(&mut master, "got:hello");
    assert!(text.contains("got:hello"), "{text:?}");
}

/// A hook that appends "<name> <status> <id>" (from the state on stdin) to `log`.
fn logging_hook(name: &str, log: &str) -> Value {
    json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!(
            "read state; status=$(echo \"$state\" | sed 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/'); echo {name} $status >> {log}")],
    })
}

#[test]
fn hooks_run_at_their_points_with_the_state_on_stdin() {
    let rt = Runtime::new();
    let host_dir = tempfile::tempdir().unwrap();
    let host_log = host_dir.path().join("hooks.log");
    let host_log = host_log.to_str().unwrap();
    let mut bundle = Bundle::new(&["sh", "-c", "echo user-program >> /hooks.log"], |_| {});
    let rootfs_log = bundle.rootfs().join("hooks.log");
    let rootfs_log_host = rootfs_log.to_str().unwrap().to_string();
    let h = host_log.to_string();
    bundle.edit(|c| {
        c["hooks"] = json!({
            "prestart": [logging_hook("prestart", &h)],
            "createRuntime": [logging_hook("createRuntime", &h)],
            // Runs in the container's namespaces before pivot_root: host paths still resolve.
            "createContainer": [logging_hook("createContainer", &rootfs_log_host)],
            // Runs in the container after pivot_root: paths resolve inside the rootfs.
            "startContainer": [logging_hook("startContainer", "/hooks.log")],
            "poststart": [logging_hook("poststart", &h)],
            "poststop": [logging_hook("poststop", &h)],
        });
    });
    let id = unique_id("hooks");
    rt.create(&bundle, &id);
    let host_text = std::fs::read_to_string(host_log).unwrap();
    assert_eq!(host_text, "prestart creating\ncreateRuntime creating\n");
    rt.ok(["start", &id]);
    rt.wait_status(&id, "stopped");
    rt.ok(["delete", &id]);
    let host_text = std::fs::read_to_string(host_log).unwrap();
    assert_eq!(
        host_text,
        "prestart creating\ncreateRuntime creating\npoststart running\npoststop stopped\n"
    );
    let container_text = std::fs::read_to_string(&rootfs_log).unwrap();
    assert_eq!(
        container_text,
        "createContainer created\nstartContainer created\nuser-program\n"
    );
}

#[test]
fn failing_create_hook_fails_create_and_leaves_nothing() {
    let rt = Runtime::new();
    let host_dir = tempfile::tempdir().unwrap();
    let poststop_log = host_dir.path().join("poststop.log");
    let bundle = Bundle::new(&["true"], |c| {
        c["hooks"] = json!({
            "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook says no >&2; exit 4"]}],
            "poststop": [logging_hook("poststop", poststop_log.to_str().unwrap())],
        });
    });
    let id = rt.track(&unique_id("badhook"));
    let out = rt.run(["create", "--bundle", bundle.path().to_str().unwrap(), &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("createRuntime hook") && err.contains("hook says no"),
        "{err}"
    );
    assert!(!rt.root().join(&id).exists());
    assert!(!host_cgroup_dir("memory", &id).exists());
    // Runtime spec: a failed create hook continues the lifecycle at destroy + poststop.
    assert_eq!(
        std::fs::read_to_string(&poststop_log).unwrap(),
        "poststop stopped\n"
    );
}

#[test]
fn json_log_has_one_line_per_failure_with_level_msg_and_rfc3339_time() {
    let rt = Runtime::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.json");
    let out = rt.run([
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        "no-such-container",
    ]);
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("does not exist"));
    let time = line["time"].as_str().unwrap();
    assert_eq!(&time[4..5], "-");
    assert_eq!(&time[10..11], "T");
    assert!(time.ends_with('Z'));
}

#[test]
fn pid_reuse_is_detected_by_start_time() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["true"], |_| {});
    let id = unique_id("reuse");
    rt.create(&bundle, &id);
    rt.ok(["start", &id]);
    rt.wait_status(&id, "stopped");
    // Point the record at a live unrelated process, keeping the old start time: the pid was
    // "reused". twinbox must see a stopped container and must not kill the stranger.
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let state_path = rt.root().join(&id).join("state.json");
    let mut record: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    record["init"]["pid"] = json!(stranger.id());
    std::fs::write(&state_path, record.to_string()).unwrap();
    assert_eq!(rt.status(&id), "stopped");
    let kill = rt.run(["kill", &id, "KILL"]);
    assert!(!kill.status.success());
    rt.ok(["delete", &id]);
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the unrelated process must survive"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[test]
fn delete_force_cleans_up_after_a_killed_create() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["true"], |c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"]}]});
    });
    let id = rt.track(&unique_id("killed"));
    let mut create = rt
        .command(["create", "--bundle", bundle.path().to_str().unwrap(), &id])
        .spawn()
        .unwrap();
    // Wait until the init exists (its pid is recorded), then kill twinbox mid-create.
    let state_path = rt.root().join(&id).join("state.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let init_pid = loop {
        if let Ok(bytes) = std::fs::read(&state_path)
            && let Ok(record) = serde_json::from_slice::<Value>(&bytes)
            && record["init"]["pid"].as_i64().unwrap_or(0) > 0
        {
            break record["init"]["pid"].as_i64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "init never recorded");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(100));
    create.kill().unwrap();
    create.wait().unwrap();
    assert_eq!(rt.status(&id), "stopped");
    rt.ok(["delete", "--force", &id]);
    assert!(!rt.root().join(&id).exists());
    assert!(!host_cgroup_dir("memory", &id).exists());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!Path::new(&format!("/proc/{init_pid}")).exists() || is_zombie(init_pid));
}

#[test]
fn list_shows_containers_as_table_and_json() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sleep", "30"], |_| {});
    let id = unique_id("list");
    rt.create(&bundle, &id);
    let table = rt.ok(["list"]);
    assert!(table.starts_with("ID"));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("created"))
    );
    let json: Vec<Value> = serde_json::from_str(&rt.ok(["list", "--format", "json"])).unwrap();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["id"], id.as_str());
    assert_eq!(rt.ok(["list", "-q"]).trim(), id);
}

#[test]
fn pause_and_resume_freeze_the_container() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sleep", "30"], |_| {});
    let id = unique_id("pause");
    rt.create(&bundle, &id);
    rt.ok(["start", &id]);
    rt.ok(["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    assert_eq!(
        std::fs::read_to_string(host_cgroup_dir("freezer", &id).join("freezer.state"))
            .unwrap()
            .trim(),
        "FROZEN"
    );
    rt.ok(["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    assert!(!rt.run(["resume", &id]).status.success());
    rt.ok(["delete", "--force", &id]);
}

#[test]
fn spec_and_features_describe_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new();
    rt.ok(["spec", "--bundle", dir.path().to_str().unwrap()]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["root"]["path"], "rootfs");
    assert!(
        !rt.run(["spec", "--bundle", dir.path().to_str().unwrap()])
            .status
            .success()
    );
    let features: Value = serde_json::from_str(&rt.ok(["features"])).unwrap();
    assert!(
        features["ociVersionMax"]
            .as_str()
            .unwrap()
            .starts_with("1.")
    );
    assert!(
        features["hooks"]
            .as_array()
            .unwrap()
            .contains(&json!("createContainer"))
    );
    assert!(
        features["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!("user"))
    );
}

#[test]
fn run_returns_the_program_exit_code_and_cleans_up() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sh", "-c", "echo out; echo err >&2; exit 3"], |_| {});
    let id = unique_id("run");
    let (code, stdout, stderr) = rt.run_bundle(&bundle, &id);
    assert_eq!(code, 3);
    assert_eq!(stdout, "out\n");
    assert_eq!(stderr, "err\n");
    assert!(!rt.root().join(&id).exists());
    assert!(!host_cgroup_dir("memory", &id).exists());
    let bad_id = rt.run(["run", "--bundle", bundle.path().to_str().unwrap(), "../x"]);
    assert!(!bad_id.status.success());
    assert!(String::from_utf8_lossy(&bad_id.stderr).contains("invalid container id"));
}

#[test]
fn systemd_cgroup_paths_are_managed_with_cgroupfs_and_logged() {
    let rt = Runtime::new();
    let id = unique_id("sysd");
    // "-.slice" is systemd's root slice: the scope lands directly under the hierarchy roots.
    let bundle = Bundle::new(&["sleep", "30"], |c| {
        c["linux"]["cgroupsPath"] = json!(format!("-.slice:tbxtest:{id}"));
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.json");
    rt.track(&id);
    rt.ok([
        "--systemd-cgroup",
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "--bundle",
        bundle.path().to_str().unwrap(),
        &id,
    ]);
    let scope = std::path::PathBuf::from(format!("/sys/fs/cgroup/memory/tbxtest-{id}.scope"));
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let procs = std::fs::read_to_string(scope.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("managed with cgroupfs"), "{text}");
    rt.ok(["delete", &id]);
    assert!(!scope.exists());
}

#[test]
fn failing_start_container_hook_stops_the_container_before_the_program() {
    let rt = Runtime::new();
    let bundle = Bundle::new(&["sh", "-c", "echo program-ran"], |c| {
        c["hooks"] = json!({"startContainer": [{"path": "/bin/false"}]});
    });
    let (code, stdout, stderr) = rt.run_bundle(&bundle, &unique_id("starthook"));
    assert_eq!(code, 1);
    assert!(!stdout.contains("program-ran"));
    assert!(
        stderr.contains("startContainer hook /bin/false failed"),
        "{stderr}"
    );
}
