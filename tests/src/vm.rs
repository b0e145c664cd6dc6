//! Fixtures for the VM backend's end-to-end tests in the emulated KVM host: OCI bundles made
//! by the test, and an L1 job that holds twinbox, its guest agent, the guest kernel, the
//! filesystem tools the backend runs, `twinbox-vm` on the PATH, and podman; containerd on
//! request ([`with_containerd`]).
//!
//! Container runtimes need a root that `pivot_root` can leave, which L1's initramfs root is
//! not; the job therefore runs its script in a private mount namespace whose root is a bind
//! mount of L1's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::kvm_host::{Job, StepScript};

/// Where the bundles are in L1: `/b/<name>/config.json`, sharing `/b/rootfs`.
pub const L1_BUNDLES: &str = "/b";

/// A set of bundles that share one busybox root filesystem.
pub struct Bundles {
    dir: tempfile::TempDir,
}

impl Default for Bundles {
    fn default() -> Self {
        Self::new()
    }
}

impl Bundles {
    /// An empty set with the busybox root filesystem.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for bundles");
        crate::busybox_rootfs(&dir.path().join("b/rootfs")).expect("busybox rootfs");
        Bundles { dir }
    }

    /// Adds bundle `name` running `args` (no terminal, writable root), with its config then
    /// changed by `edit`.
    pub fn add(&mut self, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> &mut Self {
        let spec = twinbox::commands::features::default_spec(false);
        let mut config = serde_json::to_value(&spec).expect("spec as JSON");
        config["root"]["path"] = Value::from("../rootfs");
        config["root"]["readonly"] = Value::from(false);
        config["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        config["process"]["terminal"] = Value::from(false);
        edit(&mut config);
        let dir = self.dir.path().join("b").join(name);
        std::fs::create_dir_all(&dir).expect("bundle dir");
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).expect("config.json"),
        )
        .expect("writing config.json");
        self
    }

    /// A tarball of all bundles, to unpack at `/` in L1.
    pub fn tarball(&self) -> PathBuf {
        let tarball = self.dir.path().join("bundles.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(self.dir.path())
            .arg("-cf")
            .arg(&tarball)
            .arg("b")
            .status()
            .expect("tar");
        assert!(status.success(), "tar of the bundles failed");
        tarball
    }
}

/// A bind mount entry for a bundle's config.
pub fn bind_mount(source: &str, destination: &str, read_only: bool) -> Value {
    let mut options = vec!["rbind"];
    options.push(if read_only { "ro" } else { "rw" });
    serde_json::json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": options,
    })
}

/// `binary` without debug information, in `dir` (debug builds are hundreds of MiB, and L1
/// holds its files in RAM).
pub fn stripped(binary: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(binary.file_name().expect("a binary's file name"));
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&out)
        .status()
        .expect("objcopy (binutils) strips the binary");
    assert!(
        status.success(),
        "objcopy --strip-debug {} failed",
        binary.display()
    );
    out
}

/// Commands that run first in every twinbox job: cgroup2, /dev/shm, `twinbox` and
/// `twinbox-vm` on the PATH.
pub const TWINBOX_SETUP: &str = r#"mount -t cgroup2 none /sys/fs/cgroup
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
mkdir -p /usr/local/bin && ln -s /job/twinbox /usr/local/bin/twinbox-vm && ln -s /job/twinbox /usr/local/bin/twinbox
export PATH=/usr/local/bin:$PATH
"#;

/// Commands that run next in the VM tests' jobs: the bundles, and podman's private storage
/// and configuration (podman calls `twinbox-vm` with a clean environment, so twinbox's own
/// config is installed at /etc/twinbox/config.toml).
const BUNDLES_AND_PODMAN_SETUP: &str = r#"tar -C / -xf /job/bundles.tar
mkdir -p /tmp/podman /var/tmp
cat > /tmp/podman/storage.conf <<EOF
[storage]
driver = "vfs"
graphroot = "/tmp/podman/graph"
runroot = "/tmp/podman/run"
EOF
cat > /tmp/podman/containers.conf <<EOF
[containers]
netns = "none"
default_ulimits = ["nofile=1024:1024"]
[engine]
runtime = "twinbox-vm"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "/tmp/podman/events.log"
conmon_path = ["/usr/bin/conmon"]
tmp_dir = "/tmp/podman/tmp"
[engine.runtimes]
twinbox-vm = ["/usr/local/bin/twinbox-vm"]
EOF
export CONTAINERS_STORAGE_CONF=/tmp/podman/storage.conf CONTAINERS_CONF=/tmp/podman/containers.conf
"#;

/// A step script that starts with the VM tests' setup: cgroup2, `twinbox-vm` on the PATH,
/// the bundles unpacked, podman configured to use `twinbox-vm`.
pub fn vm_steps() -> StepScript {
    StepScript::new()
        .setup(TWINBOX_SETUP)
        .setup(BUNDLES_AND_PODMAN_SETUP)
}

/// The job running `steps` (made with [`vm_steps`]) with `bundles`, the binaries under test,
/// the guest kernel, and podman with conmon, in a root that container runtimes can pivot from. `work` holds the
/// stripped binaries.
pub fn vm_job(steps: &StepScript, bundles: &Bundles, work: &Path, timeout: Duration) -> Job {
    twinbox_job(steps, work, timeout)
        .file(bundles.tarball(), "/job/bundles.tar")
        .file("/etc/containers/policy.json", "/etc/containers/policy.json")
        .program("/usr/bin/podman", "/usr/bin/podman")
        .program("/usr/bin/conmon", "/usr/bin/conmon")
}

/// The job running `steps` (starting with [`TWINBOX_SETUP`]) with twinbox (stripped into
/// `work`), its guest agent, the guest kernel at /l2/vmlinux with a config that boots it, and
/// the filesystem tools the VM backend runs, in a root that container runtimes can pivot from.
pub fn twinbox_job(steps: &StepScript, work: &Path, timeout: Duration) -> Job {
    let kernel = crate::guest_kernel();
    let twinbox = stripped(&crate::twinbox_bin(), work);
    let vmm = stripped(&crate::workspace_bin("twinbox-vmm"), work);
    let agent = crate::workspace_bin("twinbox-agent");
    let config =
        "[vm]\nkernel = \"/l2/vmlinux\"\n# L2 boots at TCG speed.\nboot_timeout_secs = 120\n";
    Job::new(
        "exec unshare -m --propagation private sh -c 'mkdir -p /newroot && mount -o rbind / \
         /newroot && cd /newroot && mount -o move . / && exec chroot . sh /job/steps.sh'",
    )
    .data("/job/steps.sh", steps.script().as_bytes().to_vec(), 0o755)
    .file(&twinbox, "/job/twinbox")
    .file(&vmm, "/job/twinbox-vmm")
    .file(&agent, "/job/twinbox-agent")
    .file(&kernel.vmlinux, "/l2/vmlinux")
    .data(
        "/etc/twinbox/config.toml",
        config.as_bytes().to_vec(),
        0o644,
    )
    .program("/usr/bin/mkfs.erofs", "/usr/bin/mkfs.erofs")
    .program("/sbin/mke2fs", "/sbin/mkfs.ext4")
    .timeout(timeout)
}

/// Where containerd keeps its root, state and sockets in a [`with_containerd`] job.
pub const L1_CONTAINERD_DIR: &str = "/tmp/containerd";
/// containerd's configuration in a [`with_containerd`] job.
pub const L1_CONTAINERD_CONFIG: &str = "/job/containerd.toml";
/// A busybox OCI archive in a [`with_containerd`] job; its index tags the image `vm` (import
/// it with `ctr image import --base-name REPO`).
pub const L1_BUSYBOX_OCI: &str = "/job/busybox-oci.tar";

/// `job` with containerd, its runc v2 shim and ctr, the configuration of a private daemon in
/// [`L1_CONTAINERD_DIR`] at [`L1_CONTAINERD_CONFIG`] (the one the host's containerd tests
/// use, [`crate::engines::containerd_config`]), and a busybox image at [`L1_BUSYBOX_OCI`].
/// The script starts the daemon itself. `work` holds the archive. (About 80 MiB of
/// binaries in L1's RAM: only the jobs that drive containerd take them.)
pub fn with_containerd(job: Job, work: &Path) -> Job {
    let mut layout = crate::oci::OciLayout::create(&work.join("busybox-oci"));
    let image = layout.image(
        &[crate::oci::busybox_layer(crate::oci::Compression::None)],
        serde_json::json!({"Cmd": ["sh"]}),
        "amd64",
    );
    layout.tag(image, "vm");
    let archive = work.join("busybox-oci.tar");
    layout.archive(&archive);
    let config = crate::engines::containerd_config(Path::new(L1_CONTAINERD_DIR));
    job.file(archive, L1_BUSYBOX_OCI)
        .data(L1_CONTAINERD_CONFIG, config.into_bytes(), 0o644)
        .program("/usr/bin/containerd", "/usr/bin/containerd")
        .program(
            "/usr/bin/containerd-shim-runc-v2",
            "/usr/bin/containerd-shim-runc-v2",
        )
        .program("/usr/bin/ctr", "/usr/bin/ctr")
}
