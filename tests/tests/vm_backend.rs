//! The VM backend end to end: `twinbox-vm` (the runtime CLI invoked by the name that selects
//! microVMs) runs OCI bundles in twinbox's own VMM with twinbox's guest kernel and agent,
//! inside the emulated KVM host (this machine's /dev/kvm cannot boot stock kernels).
//!
//! Every VM of this file runs in one L1 boot (`batch()`); each test checks its own step.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use twinbox_tests::engines::CONTAINERD_SOCKET;
use twinbox_tests::guest_kernel;
use twinbox_tests::kvm_host::{JobOutput, kvm_host};
use twinbox_tests::vm::{
    Bundles, L1_BUSYBOX_OCI, L1_CONTAINERD_CONFIG, L1_CONTAINERD_DIR, bind_mount, vm_job, vm_steps,
    with_containerd,
};

/// The image `twinbox import`s in L1 for the docker-style steps.
const ENGINE_IMAGE: &str = "busybox:vm";
/// `twinbox run` of a VM that removes itself.
const VM_RUN: &str = "twinbox run --rm --isolation vm";

/// A per-step limit: an L2 boot takes seconds at TCG speed; this only bounds a hang.
const STEP: Duration = Duration::from_secs(120);

fn set_env(config: &mut Value, env: &[&str]) {
    config["process"]["env"] = env.iter().map(|e| Value::from(*e)).collect();
}

/// containerd (started by the step, on its own root) runs microVMs through its runc v2 shim
/// with `twinbox-vm` as the runc binary (`BinaryName`, as a Kata-style runtime class sets it):
/// a foreground run, a detached task with exec, kill and delete; then containerd stops and
/// the step counts what is left of it and of twinbox (processes by name; container
/// directories in the shim's runc root, where twinbox also keeps its hidden `.seccomp`
/// cache of compiled filters, as in its own run root).
fn containerd_step() -> String {
    let image = "docker.io/library/busybox:vm";
    let run = "ctr run --snapshotter native --runc-binary /usr/local/bin/twinbox-vm";
    let root = "/run/containerd/runc/default";
    format!(
        "export CONTAINERD_ADDRESS={L1_CONTAINERD_DIR}/{CONTAINERD_SOCKET}; \
         containerd --config {L1_CONTAINERD_CONFIG} >/tmp/containerd.log 2>&1 & ctd=$!; \
         for i in $(seq 300); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done; \
         ctr image import --snapshotter native --base-name docker.io/library/busybox \
           {L1_BUSYBOX_OCI} >/dev/null; echo \"import=$?\"; \
         {run} --rm {image} ctr-fg sh -c 'uname -r; echo to-stderr >&2; exit 7' \
           >/tmp/ctr.out 2>/tmp/ctr.err; echo \"code=$?\"; \
         echo \"stdout=$(cat /tmp/ctr.out)\"; echo \"stderr=$(cat /tmp/ctr.err)\"; \
         {run} -d {image} ctr-bg sh -c \"trap 'exit 3' TERM; while true; do sleep 0.1; done\" \
           >/dev/null; echo \"detach=$?\"; \
         echo \"state=$(ls {root})\"; \
         ctr task exec --exec-id e1 ctr-bg sh -c 'echo in-exec; uname -r; exit 5' >/tmp/ctr.exec; \
         echo \"exec-code=$?\"; echo \"exec=$(tr '\\n' , </tmp/ctr.exec)\"; \
         ctr task kill ctr-bg; echo \"kill=$?\"; \
         for i in $(seq 600); do ctr task ls | grep ctr-bg | grep -q STOPPED && break; sleep 0.2; done; \
         echo \"delete=$(ctr task delete ctr-bg 2>&1 | tr '\\n' ' ')\"; \
         ctr container rm ctr-bg; echo \"rm=$?\"; \
         echo \"listed=$(ctr container ls -q | wc -l),$(ctr task ls -q | wc -l)\"; \
         kill $ctd; wait $ctd; \
         for i in $(seq 50); do \
           n=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -c -e twinbox -e containerd); \
           [ \"$n\" = 0 ] && break; sleep 0.1; done; \
         echo \"processes=$n\"; \
         echo \"left-state=$(ls {root} 2>/dev/null | wc -l)\"; \
         echo \"sandboxes=$(ls -A /var/lib/twinbox/vm/sandboxes 2>/dev/null | wc -l)\"; \
         echo \"cgroups=$(ls -d /sys/fs/cgroup/default/*/ 2>/dev/null | wc -l)\"; \
         echo \"mounts=$(grep -c -e {L1_CONTAINERD_DIR} -e /run/containerd /proc/mounts)\"; \
         [ \"$(cat /tmp/ctr.out)\" ] || cat /tmp/containerd.log"
    )
}

/// Boots L1 once and runs every step of this file in it.
fn batch() -> &'static JobOutput {
    static BATCH: OnceLock<JobOutput> = OnceLock::new();
    BATCH.get_or_init(|| {
        let mut bundles = Bundles::new();
        bundles
            .add("uname", &["uname", "-r"], |_| {})
            .add(
                "streams",
                &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
                |_| {},
            )
            .add("cat", &["cat"], |_| {})
            .add(
                "identity",
                &["sh", "-c", "echo \"$GREETING\"; id -u; id -g; pwd"],
                |config| {
                    set_env(config, &["PATH=/bin", "GREETING=hello-from-the-vm"]);
                    config["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
                    config["process"]["cwd"] = Value::from("/home/tester");
                },
            )
            .add(
                "volumes",
                &[
                    "sh",
                    "-c",
                    "cat /data/in; echo written-in-the-vm > /data/out; rm /data/gone; \
                     mkdir /data/new; echo deep > /data/new/file; \
                     if (echo x > /config/x) 2>/dev/null; then echo RO-WRITABLE; else echo ro-refused; fi",
                ],
                |config| {
                    let mounts = config["mounts"].as_array_mut().unwrap();
                    mounts.push(bind_mount("/tmp/vol", "/data", false));
                    mounts.push(bind_mount("/tmp/vol-ro", "/config", true));
                },
            )
            .add(
                "limits",
                &["sh", "-c", "grep MemTotal /proc/meminfo; nproc; touch /x 2>&1 || echo ro-root"],
                |config| {
                    config["root"]["readonly"] = Value::from(true);
                    config["linux"]["resources"] = serde_json::json!({
                        "memory": {"limit": 200 << 20},
                        "cpu": {"quota": 150000, "period": 100000},
                    });
                },
            )
            .add(
                "sleeper",
                &[
                    "sh",
                    "-c",
                    "echo started; trap 'echo got-term; exit 7' TERM; while true; do sleep 0.1; done",
                ],
                |_| {},
            )
            .add("terminal", &["tty"], |config| {
                config["process"]["terminal"] = Value::from(true);
            })
            .add("annotated", &["uname", "-r"], |config| {
                config["annotations"] = serde_json::json!({"io.twinbox.isolation": "vm"});
            })
            .add("clone", &["sh", "-c", CLONE_PROBE], |_| {})
            .add("cold", &["sh", "-c", CLONE_PROBE], |config| {
                config["annotations"] = serde_json::json!({"io.twinbox.vm.start": "boot"});
            })
            .add("panic", &["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 10"], |config| {
                config["linux"]["readonlyPaths"] = Value::Array(Vec::new());
            });

        let wait_stopped = |id: &str| {
            format!(
                "for i in $(seq 300); do twinbox-vm state {id} | grep -q '\"stopped\"' && break; sleep 0.2; done; \
                 twinbox-vm state {id} | grep status"
            )
        };
        let steps = vm_steps()
            .step("uname", STEP, "twinbox-vm run --bundle /b/uname c-uname")
            .step(
                "streams",
                STEP,
                "twinbox-vm run --bundle /b/streams c-streams >/tmp/o 2>/tmp/e; echo \"code=$?\"; \
                 echo \"stdout=$(cat /tmp/o)\"; echo \"stderr=$(cat /tmp/e)\"",
            )
            .step(
                "stdin",
                STEP,
                "printf 'line one\\nline two\\n' | twinbox-vm run --bundle /b/cat c-stdin",
            )
            .step("identity", STEP, "twinbox-vm run --bundle /b/identity c-identity")
            .step(
                "volumes",
                STEP,
                "mkdir -p /tmp/vol /tmp/vol-ro && echo from-the-host > /tmp/vol/in && touch /tmp/vol/gone && \
                 twinbox-vm run --bundle /b/volumes c-volumes; echo \"code=$?\"; \
                 echo \"out=$(cat /tmp/vol/out)\"; echo \"new=$(cat /tmp/vol/new/file)\"; \
                 if [ -e /tmp/vol/gone ]; then echo gone=still-there; else echo gone=removed; fi; \
                 ls /tmp/vol-ro | wc -l",
            )
            .step("limits", STEP, "twinbox-vm run --bundle /b/limits c-limits")
            .step(
                "exec-kill",
                STEP,
                &format!(
                    "twinbox-vm run -d --bundle /b/sleeper c-sleeper >/tmp/sleeper.out 2>&1 && \
                     twinbox-vm exec c-sleeper sh -c 'echo in-exec; exit 5'; echo \"exec-code=$?\"; \
                     twinbox-vm exec c-sleeper /no/such/program; echo \"missing-code=$?\"; \
                     echo \"ps=$(twinbox-vm ps --format json c-sleeper)\"; \
                     twinbox-vm kill --all c-sleeper TERM; echo \"kill-all=$?\"; {}; cat /tmp/sleeper.out; \
                     twinbox-vm delete c-sleeper && echo deleted",
                    wait_stopped("c-sleeper")
                ),
            )
            .step(
                "snapshot",
                STEP,
                "templates=\"ls /var/lib/twinbox/vm/templates | wc -l\"; \
                 for id in c-clone1 c-clone2; do twinbox-vm run --bundle /b/clone $id | tr '\\n' ' '; \
                   echo \"host-time=$(date +%s) templates=$(eval $templates)\"; done; \
                 twinbox-vm run --bundle /b/cold c-cold | tr '\\n' ' '; echo \"templates=$(eval $templates)\"",
            )
            .step("terminal", STEP, "twinbox-vm run --bundle /b/terminal c-terminal")
            .step(
                "panic",
                STEP,
                "twinbox-vm run --bundle /b/panic c-panic; echo \"code=$?\"",
            )
            .step(
                "annotation",
                STEP,
                "twinbox run --bundle /b/annotated c-annotated",
            )
            .step(
                "podman",
                STEP,
                "tar -C /b/rootfs -cf /tmp/busybox.tar . && podman import -q /tmp/busybox.tar localhost/busybox >/dev/null && \
                 podman run --rm localhost/busybox uname -r; echo \"code=$?\"; \
                 podman run --rm localhost/busybox sh -c 'exit 7'; echo \"exit7=$?\"; \
                 podman run -d --name web localhost/busybox sh -c 'trap \"exit 0\" TERM; while true; do sleep 0.1; done' >/dev/null && \
                 podman exec web sh -c 'echo exec=ok'; podman stop -t 30 web >/dev/null; echo \"stop=$?\"; \
                 podman rm web >/dev/null; echo \"left=$(podman ps -aq | wc -l)\"",
            )
            .step(
                "engine-import",
                STEP,
                &format!(
                    "tar -C /b/rootfs -cf /tmp/engine.tar . && \
                     twinbox import /tmp/engine.tar {ENGINE_IMAGE} --change 'CMD [\"sh\"]' >/dev/null && echo imported"
                ),
            )
            .step(
                "engine-run",
                STEP,
                &format!(
                    "echo \"release=$({VM_RUN} {ENGINE_IMAGE} uname -r)\"; \
                     {VM_RUN} {ENGINE_IMAGE} sh -c 'echo out; echo err >&2; exit 42' >/tmp/eo 2>/tmp/ee; \
                     echo \"code=$?\"; echo \"stdout=$(cat /tmp/eo)\"; echo \"stderr=$(cat /tmp/ee)\"; \
                     echo \"identity=$({VM_RUN} -e GREETING=hi -w /tmp -u 1000:1000 {ENGINE_IMAGE} \
                       sh -c 'echo $GREETING,$(id -u),$(id -g),$(pwd)')\"; \
                     echo \"newdir=$({VM_RUN} -w /srv/new {ENGINE_IMAGE} pwd 2>&1 | tr '\\n' ' ')\"; \
                     echo \"stdin=$(printf 'a\\nb\\n' | {VM_RUN} -i {ENGINE_IMAGE} cat | tr '\\n' ,)\"; \
                     echo \"tty=$({VM_RUN} -t {ENGINE_IMAGE} tty </dev/null 2>&1 | tr -d '\\r')\""
                ),
            )
            .step(
                "engine-resources",
                STEP,
                &format!(
                    "mkdir -p /tmp/evol && echo from-host > /tmp/evol/in && \
                     echo \"volume=$({VM_RUN} -v /tmp/evol:/data {ENGINE_IMAGE} \
                       sh -c 'cat /data/in; echo from-vm > /data/out')\"; \
                     echo \"volume-back=$(cat /tmp/evol/out)\"; \
                     echo \"limits=$({VM_RUN} --memory 200m --cpus 1.5 --read-only {ENGINE_IMAGE} \
                       sh -c 'grep MemTotal /proc/meminfo | tr -s \" \" | cut -d\" \" -f2; nproc; touch /x 2>/dev/null || echo ro' | tr '\\n' ,)\""
                ),
            )
            .step(
                "engine-storage",
                STEP,
                &format!(
                    "echo \"tmpfs=$({VM_RUN} --tmpfs /scratch {ENGINE_IMAGE} \
                       sh -c 'echo x > /scratch/f && grep \" /scratch \" /proc/mounts | cut -d\" \" -f3')\"; \
                     twinbox volume create vmdata >/dev/null; \
                     {VM_RUN} -v vmdata:/data {ENGINE_IMAGE} sh -c 'echo kept > /data/f'; \
                     echo \"named=$({VM_RUN} -v vmdata:/data {ENGINE_IMAGE} cat /data/f)\"; \
                     twinbox volume rm vmdata >/dev/null; echo \"volume-rm=$?\"; \
                     forks='for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait'; \
                     echo \"pids-limited=$({VM_RUN} --pids-limit 5 {ENGINE_IMAGE} sh -c \"$forks\" 2>&1 | grep -c \"can't fork\")\"; \
                     echo \"pids-free=$({VM_RUN} {ENGINE_IMAGE} sh -c \"$forks\" 2>&1 | grep -c \"can't fork\")\""
                ),
            )
            .step(
                "engine-signal",
                STEP,
                &format!(
                    "{VM_RUN} {ENGINE_IMAGE} sh -c 'trap \"echo got-term; exit 9\" TERM; echo ready; \
                       while true; do sleep 0.1; done' >/tmp/fg.out 2>&1 & fg=$!; \
                     for i in $(seq 600); do grep -q ready /tmp/fg.out && break; \
                       kill -0 $fg 2>/dev/null || break; sleep 0.2; done; \
                     kill -TERM $fg; wait $fg; echo \"signal-code=$?\"; echo \"signal-out=$(tr '\\n' , </tmp/fg.out)\""
                ),
            )
            .step(
                "engine-detached",
                STEP,
                &format!(
                    "twinbox run -d --name evm --isolation vm {ENGINE_IMAGE} sh -c \
                       \"echo started; trap 'echo got-term; exit 7' TERM; while true; do sleep 0.1; done\" >/dev/null; \
                     echo \"detach=$?\"; \
                     for i in $(seq 600); do twinbox logs evm 2>/dev/null | grep -q started && break; \
                       twinbox ps | grep -q evm || break; sleep 0.2; done; \
                     echo \"ps=$(twinbox ps --format json | tr -d '\\n')\"; \
                     echo \"exec=$(twinbox exec -e WHO=exec evm sh -c 'echo in-$WHO; uname -r; exit 5' | tr '\\n' ,)\"; \
                     twinbox exec evm sh -c 'exit 5'; echo \"exec-code=$?\"; \
                     twinbox stop -t 60 evm >/dev/null; echo \"stop=$?\"; \
                     echo \"wait=$(twinbox wait evm)\"; \
                     echo \"logs=$(twinbox logs evm | tr '\\n' ,)\"; \
                     echo \"psa=$(twinbox ps -a --format json | tr -d '\\n')\"; \
                     twinbox rm evm >/dev/null; echo \"rm=$?\"; \
                     echo \"left=$(twinbox ps -aq | wc -l)\"; \
                     echo \"rootfs=$(ls /var/lib/twinbox/containers 2>/dev/null | wc -l)\""
                ),
            )
            .step("containerd", STEP, &containerd_step())
            .step(
                "clean",
                STEP,
                "echo \"containers=$(ls /run/twinbox | wc -l)\"; \
                 echo \"sandboxes=$(ls /var/lib/twinbox/vm/sandboxes 2>/dev/null | wc -l)\"; \
                 echo \"cgroups=$(ls -d /sys/fs/cgroup/twinbox/*/ 2>/dev/null | wc -l)\"; \
                 echo \"names=$(ls -A /run/twinbox/.names 2>/dev/null | wc -l)\"; \
                 echo \"rootfs=$(ls -A /var/lib/twinbox/containers 2>/dev/null | wc -l)\"",
            );
        let work = tempfile::tempdir().unwrap();
        let job = with_containerd(
            vm_job(&steps, &bundles, work.path(), 18 * STEP),
            work.path(),
        );
        let run = kvm_host().run(&job).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.exit_code, 0, "the batch script failed:\n{}", run.output);
        run
    })
}

/// The output of step `name`, which must have exited with status 0.
fn step(name: &str) -> String {
    batch()
        .step(name)
        .and_then(|s| s.check())
        .unwrap_or_else(|e| panic!("{e}"))
        .output
}

/// The value of `key=value` lines of a step's output.
fn value<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in:\n{output}"))
}

#[test]
fn the_workload_runs_on_twinboxs_guest_kernel() {
    assert_eq!(step("uname").trim(), guest_kernel().release);
}

#[test]
fn exit_code_and_separate_stdout_and_stderr() {
    let out = step("streams");
    assert_eq!(value(&out, "code"), "3", "{out}");
    assert_eq!(value(&out, "stdout"), "to-stdout", "{out}");
    assert_eq!(value(&out, "stderr"), "to-stderr", "{out}");
}

#[test]
fn stdin_reaches_the_workload_and_ends() {
    assert_eq!(step("stdin"), "line one\nline two\n");
}

#[test]
fn env_user_and_cwd_apply_in_the_guest() {
    assert_eq!(
        step("identity"),
        "hello-from-the-vm\n1000\n1000\n/home/tester\n"
    );
}

#[test]
fn volumes_are_disks_whose_changes_come_back() {
    let out = step("volumes");
    assert!(out.starts_with("from-the-host\nro-refused\n"), "{out}");
    assert_eq!(value(&out, "code"), "0", "{out}");
    assert_eq!(value(&out, "out"), "written-in-the-vm", "{out}");
    assert_eq!(value(&out, "new"), "deep", "{out}");
    assert_eq!(value(&out, "gone"), "removed", "{out}");
    assert_eq!(
        out.lines().last().map(str::trim),
        Some("0"),
        "the read-only volume stays empty: {out}"
    );
}

#[test]
fn memory_and_cpu_limits_size_the_vm_and_the_root_can_be_read_only() {
    let out = step("limits");
    let kib: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out}"));
    // The guest kernel keeps a few MiB of the 200 MiB for itself.
    assert!(
        (150 << 10..=200 << 10).contains(&kib),
        "MemTotal {kib} kB: {out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[1], "2", "1.5 CPUs become 2 vCPUs: {out}");
    assert!(out.contains("ro-root"), "{out}");
}

#[test]
fn exec_into_a_running_vm_and_kill_it() {
    let out = step("exec-kill");
    assert!(out.starts_with("in-exec\n"), "{out}");
    assert_eq!(value(&out, "exec-code"), "5", "{out}");
    assert_eq!(value(&out, "missing-code"), "127", "{out}");
    let pids: Vec<i32> = serde_json::from_str(value(&out, "ps")).unwrap();
    assert!(!pids.is_empty(), "ps lists the VM's processes: {out}");
    assert!(out.contains("\"stopped\""), "{out}");
    // `kill --all` goes through a request session of the agent, which signals every process
    // in the workload's cgroup (when the shell's `sleep` gets it too, the shell reports
    // "Terminated" before its trap runs).
    assert_eq!(value(&out, "kill-all"), "0", "{out}");
    let started = out.find("started\n").expect("the workload started");
    assert!(
        out[started..].contains("got-term\n"),
        "SIGTERM reached the workload: {out}"
    );
    assert!(out.trim_end().ends_with("deleted"), "{out}");
}

#[test]
fn a_terminal_is_a_pty_in_the_guest() {
    let out = step("terminal");
    assert!(out.contains("/dev/pts/0"), "{out}");
}

#[test]
fn a_guest_kernel_panic_is_reported_clearly() {
    let out = batch()
        .step("panic")
        .unwrap_or_else(|e| panic!("{e}"))
        .output;
    assert_eq!(value(&out, "code"), "255", "{out}");
    assert!(out.contains("the guest kernel panicked"), "{out}");
    assert!(out.contains("sysrq triggered crash"), "{out}");
}

/// What the snapshot step's workloads print: the kernel, whether the VM was restored from
/// a template (its kernel command line), 16 random bytes and the guest's clock.
const CLONE_PROBE: &str = "echo release=$(uname -r) restored=$(grep -c twinbox_template /proc/cmdline) \
     random=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n') guest-time=$(date +%s)";

/// The `key=value` words of one line.
fn words(line: &str) -> std::collections::HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .collect()
}

#[test]
fn vms_start_from_a_template_snapshot_with_their_own_entropy_and_clock() {
    let out = step("snapshot");
    let lines: Vec<_> = out.lines().map(words).collect();
    assert_eq!(lines.len(), 3, "{out}");
    let (first, second, cold) = (&lines[0], &lines[1], &lines[2]);
    for clone in [first, second] {
        assert_eq!(clone["release"], guest_kernel().release, "{out}");
        assert_eq!(
            clone["restored"], "1",
            "not restored from a template:\n{out}"
        );
        let guest: i64 = clone["guest-time"].parse().unwrap();
        let host: i64 = clone["host-time"].parse().unwrap();
        assert!(
            (host - guest).abs() <= 30,
            "the restored guest's clock is off:\n{out}"
        );
        assert_eq!(clone["random"].len(), 32, "{out}");
    }
    assert_ne!(
        first["random"], second["random"],
        "two VMs of one template drew the same random bytes"
    );
    assert_eq!(cold["release"], guest_kernel().release, "{out}");
    assert_eq!(
        cold["restored"], "0",
        "the start annotation did not boot:\n{out}"
    );
    assert!(first["templates"] != "0", "no template was built:\n{out}");
    assert_eq!(
        (second["templates"], cold["templates"]),
        (first["templates"], first["templates"]),
        "the second VM and the booted one built no template of their own:\n{out}"
    );
}

#[test]
fn the_isolation_annotation_selects_a_vm() {
    assert_eq!(step("annotation").trim(), guest_kernel().release);
}

#[test]
fn podman_runs_microvms_with_twinbox_vm() {
    let out = step("podman");
    assert!(
        out.starts_with(&format!("{}\n", guest_kernel().release)),
        "{out}"
    );
    assert_eq!(value(&out, "code"), "0", "{out}");
    assert_eq!(value(&out, "exit7"), "7", "{out}");
    assert_eq!(value(&out, "exec"), "ok", "{out}");
    assert_eq!(value(&out, "stop"), "0", "{out}");
    assert_eq!(value(&out, "left"), "0", "{out}");
}

#[test]
fn containerd_runs_microvms_through_its_runc_shim_with_twinbox_vm() {
    let out = step("containerd");
    assert_eq!(value(&out, "import"), "0", "{out}");
    assert_eq!(value(&out, "stdout"), guest_kernel().release, "{out}");
    assert_eq!(value(&out, "stderr"), "to-stderr", "{out}");
    assert_eq!(value(&out, "code"), "7", "{out}");
    assert_eq!(value(&out, "detach"), "0", "{out}");
    assert_eq!(
        value(&out, "state"),
        "ctr-bg",
        "twinbox keeps the task's state in the shim's runc root: {out}"
    );
    assert_eq!(value(&out, "exec-code"), "5", "{out}");
    assert_eq!(
        value(&out, "exec"),
        format!("in-exec,{},", guest_kernel().release),
        "{out}"
    );
    assert_eq!(value(&out, "kill"), "0", "{out}");
    assert!(
        value(&out, "delete").contains("exit code 3"),
        "the task's TERM trap status comes back: {out}"
    );
    assert_eq!(value(&out, "rm"), "0", "{out}");
    assert_eq!(value(&out, "listed"), "0,0", "{out}");
    for left in ["processes", "left-state", "sandboxes", "cgroups", "mounts"] {
        assert_eq!(value(&out, left), "0", "{left} left behind: {out}");
    }
}

#[test]
fn nothing_is_left_behind() {
    let out = step("clean");
    assert_eq!(value(&out, "containers"), "0", "{out}");
    assert_eq!(value(&out, "sandboxes"), "0", "{out}");
    assert_eq!(value(&out, "cgroups"), "0", "{out}");
    assert_eq!(value(&out, "names"), "0", "{out}");
    assert_eq!(value(&out, "rootfs"), "0", "{out}");
}

/// Output of a docker-style step, after the image was imported into L1's store.
fn engine_step(name: &str) -> String {
    assert_eq!(step("engine-import").trim(), "imported");
    step(name)
}

#[test]
fn run_isolation_vm_runs_the_image_on_the_guest_kernel_with_its_flags() {
    let out = engine_step("engine-run");
    assert_eq!(value(&out, "release"), guest_kernel().release, "{out}");
    assert_eq!(value(&out, "code"), "42", "{out}");
    assert_eq!(value(&out, "stdout"), "out", "{out}");
    assert_eq!(value(&out, "stderr"), "err", "{out}");
    assert_eq!(value(&out, "identity"), "hi,1000,1000,/tmp", "{out}");
    assert_eq!(
        value(&out, "newdir").trim(),
        "/srv/new",
        "a missing workdir is created, as in containers: {out}"
    );
    assert_eq!(value(&out, "stdin"), "a,b,", "{out}");
    assert_eq!(value(&out, "tty"), "/dev/pts/0", "{out}");
}

#[test]
fn run_isolation_vm_volumes_memory_cpus_and_read_only() {
    let out = engine_step("engine-resources");
    assert_eq!(value(&out, "volume"), "from-host", "{out}");
    assert_eq!(value(&out, "volume-back"), "from-vm", "{out}");
    let limits: Vec<&str> = value(&out, "limits").split(',').collect();
    let kib: u64 = limits[0]
        .parse()
        .unwrap_or_else(|_| panic!("MemTotal: {out}"));
    assert!(
        (150 << 10..=200 << 10).contains(&kib),
        "MemTotal {kib} kB: {out}"
    );
    assert_eq!(limits[1..], ["2", "ro", ""], "{out}");
}

#[test]
fn run_isolation_vm_tmpfs_named_volumes_and_pids_limit() {
    let out = engine_step("engine-storage");
    assert_eq!(value(&out, "tmpfs"), "tmpfs", "{out}");
    assert_eq!(value(&out, "named"), "kept", "{out}");
    assert_eq!(value(&out, "volume-rm"), "0", "{out}");
    let limited: u32 = value(&out, "pids-limited").parse().unwrap();
    assert!(limited > 0, "--pids-limit 5 let 8 forks through: {out}");
    assert_eq!(value(&out, "pids-free"), "0", "{out}");
}

#[test]
fn run_isolation_vm_forwards_signals_in_the_foreground() {
    let out = engine_step("engine-signal");
    assert_eq!(value(&out, "signal-out"), "ready,got-term,", "{out}");
    assert_eq!(value(&out, "signal-code"), "9", "{out}");
}

#[test]
fn run_isolation_vm_detached_with_logs_exec_ps_stop_and_rm() {
    let out = engine_step("engine-detached");
    assert_eq!(value(&out, "detach"), "0", "{out}");
    let ps: Vec<Value> = serde_json::from_str(value(&out, "ps")).unwrap();
    let running = ps
        .iter()
        .find(|c| c["Names"] == "evm")
        .unwrap_or_else(|| panic!("evm is not in ps: {out}"));
    assert_eq!(running["State"], "running", "{out}");
    assert_eq!(running["Isolation"], "vm", "{out}");
    assert_eq!(
        value(&out, "exec"),
        format!("in-exec,{},", guest_kernel().release),
        "{out}"
    );
    assert_eq!(value(&out, "exec-code"), "5", "{out}");
    assert_eq!(value(&out, "stop"), "0", "{out}");
    assert_eq!(value(&out, "wait"), "7", "{out}");
    assert_eq!(value(&out, "logs"), "started,got-term,", "{out}");
    let all: Vec<Value> = serde_json::from_str(value(&out, "psa")).unwrap();
    let exited = all
        .iter()
        .find(|c| c["Names"] == "evm")
        .unwrap_or_else(|| panic!("evm is not in ps -a: {out}"));
    assert_eq!(exited["State"], "exited", "{out}");
    assert_eq!(value(&out, "rm"), "0", "{out}");
    assert_eq!(value(&out, "left"), "0", "{out}");
    assert_eq!(value(&out, "rootfs"), "0", "{out}");
}
