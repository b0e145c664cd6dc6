//! The VM backend's clear errors on this machine directly (no emulated host needed): a
//! missing guest kernel, and a kernel this host's /dev/kvm cannot boot. Each fails before a
//! VM exists and leaves no container state, sandbox or cgroup behind.

use std::path::Path;

use serde_json::Value;
use twinbox_tests::docker::{Docker, IMAGE};
use twinbox_tests::runtime::{Bundle, Runtime, unique_id};

/// A bundle that asks for a microVM by annotation, plus `extra` annotations.
fn vm_bundle(extra: &[(&str, &str)]) -> Bundle {
    Bundle::new(&["true"], |config| {
        config["process"]["terminal"] = Value::from(false);
        let mut annotations = serde_json::Map::new();
        annotations.insert("io.twinbox.isolation".into(), Value::from("vm"));
        for (key, value) in extra {
            annotations.insert((*key).into(), Value::from(*value));
        }
        config["annotations"] = Value::Object(annotations);
    })
}

/// Runs the bundle with a private run root and image store; returns (exit code, stderr).
fn run(bundle: &Bundle, store: &Path, config: Option<&Path>) -> (i32, String, Runtime) {
    let runtime = Runtime::new();
    let id = runtime.track(&unique_id("vm-error"));
    let mut command = runtime.command(["run", "--bundle", bundle.path().to_str().unwrap(), &id]);
    command.env("TWINBOX_ROOT", store);
    if let Some(config) = config {
        command.env("TWINBOX_CONFIG", config);
    }
    let out = twinbox_tests::runtime::output_via_files(command);
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        runtime,
    )
}

/// Asserts that the run root holds no container and the store no sandbox.
fn assert_nothing_left(runtime: &Runtime, store: &Path) {
    let containers: Vec<_> = std::fs::read_dir(runtime.root()).unwrap().collect();
    assert!(
        containers.is_empty(),
        "container state left: {containers:?}"
    );
    let sandboxes = store.join("vm/sandboxes");
    if sandboxes.exists() {
        let left: Vec<_> = std::fs::read_dir(&sandboxes).unwrap().collect();
        assert!(left.is_empty(), "sandboxes left: {left:?}");
    }
}

#[test]
fn a_missing_guest_kernel_is_named_with_the_ways_to_give_one() {
    let store = tempfile::tempdir().unwrap();
    let bundle = vm_bundle(&[("io.twinbox.vm.kernel", "/no/such/vmlinux")]);
    let (code, stderr, runtime) = run(&bundle, store.path(), None);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("the guest kernel /no/such/vmlinux does not exist")
            && stderr.contains("--kernel"),
        "{stderr}"
    );
    assert_nothing_left(&runtime, store.path());

    // The same through the config file's `[vm] kernel`.
    let config = store.path().join("config.toml");
    std::fs::write(&config, "[vm]\nkernel = \"/no/such/bzImage\"\n").unwrap();
    let (code, stderr, runtime) = run(&vm_bundle(&[]), store.path(), Some(&config));
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("/no/such/bzImage does not exist") && stderr.contains("config.toml"),
        "{stderr}"
    );
    assert_nothing_left(&runtime, store.path());
}

/// This machine's /dev/kvm is PVM (see ENVIRONMENT.md): twinbox's guest kernel, built for
/// the emulated host's hardware KVM, is refused with the reason instead of hanging.
#[test]
fn a_kernel_without_pvm_support_is_refused_on_a_pvm_host() {
    assert!(
        Path::new("/sys/module/kvm_pvm").exists(),
        "this test expects the PVM host described in ENVIRONMENT.md"
    );
    let kernel = twinbox_tests::guest_kernel();
    let store = tempfile::tempdir().unwrap();
    let bundle = vm_bundle(&[("io.twinbox.vm.kernel", kernel.vmlinux.to_str().unwrap())]);
    let (code, stderr, runtime) = run(&bundle, store.path(), None);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("without PVM guest support") && stderr.contains("CONFIG_PVM_GUEST"),
        "{stderr}"
    );
    assert_nothing_left(&runtime, store.path());
}

/// `twinbox run --isolation vm IMAGE` on this PVM host: the docker-style engine goes through
/// the same backend, fails with the same explanation and an engine exit code (125), and
/// leaves no container, name, root filesystem, mount, anonymous volume, sandbox or cgroup
/// behind.
#[test]
fn run_isolation_vm_on_a_pvm_host_explains_and_leaves_nothing() {
    assert!(
        Path::new("/sys/module/kvm_pvm").exists(),
        "this test expects the PVM host described in ENVIRONMENT.md"
    );
    let kernel = twinbox_tests::guest_kernel();
    let docker = Docker::new();
    let out = docker.run([
        "--debug",
        "run",
        "--rm",
        "--name",
        "vm-on-pvm",
        "--isolation",
        "vm",
        "--kernel",
        kernel.vmlinux.to_str().unwrap(),
        "-v",
        "/anon",
        IMAGE,
        "uname",
        "-r",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("without PVM guest support") && stderr.contains("CONFIG_PVM_GUEST"),
        "{stderr}"
    );
    let id = stderr
        .split("id=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
        .filter(|id| id.len() == 64)
        .unwrap_or_else(|| panic!("no container id in the debug log: {stderr}"));
    docker.assert_clean();
    assert!(docker.ps().is_empty(), "ps -a: {:?}", docker.ps());
    assert_eq!(
        docker.ok(["volume", "ls", "-q"]),
        "",
        "the anonymous volume is removed"
    );
    // The name is free again.
    let names = docker.run_root().join(".names");
    let left: Vec<_> = std::fs::read_dir(&names)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "names left: {left:?}");
    let sandboxes = docker.store().join("vm/sandboxes");
    if sandboxes.exists() {
        let left: Vec<_> = std::fs::read_dir(&sandboxes).unwrap().collect();
        assert!(left.is_empty(), "sandboxes left: {left:?}");
    }
    let mut hierarchies = vec![Path::new("/sys/fs/cgroup").to_path_buf()];
    hierarchies.extend(
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.path()),
    );
    for hierarchy in hierarchies {
        let cgroup = hierarchy.join("twinbox").join(id);
        assert!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
    }
}

/// `--kernel` belongs to VMs: with container isolation it is refused before anything is made.
#[test]
fn run_kernel_needs_vm_isolation() {
    let docker = Docker::new();
    let out = docker.run(["run", "--rm", "--kernel", "/boot/vmlinuz", IMAGE, "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("--kernel") && stderr.contains("--isolation vm"),
        "{stderr}"
    );
    docker.assert_clean();
}
