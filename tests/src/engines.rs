//! Container engines driving twinbox as their OCI runtime: podman with private storage and
//! configuration, and a containerd daemon with its own root, state and socket. Neither
//! touches the host's engine state; both clean up on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Writes a busybox rootfs tarball (for `podman import`) into `dir` and returns its path.
pub fn busybox_tarball(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    crate::busybox_rootfs(&rootfs).expect("busybox rootfs");
    let tarball = dir.join("busybox.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success(), "tar of the busybox rootfs failed");
    tarball
}

fn require(binary: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{binary} is not installed: apt-get install {package} (`make setup` does)"
    );
}

/// podman with its own storage, run root and configuration, using twinbox as the runtime.
pub struct Podman {
    dir: tempfile::TempDir,
    /// The imported busybox image.
    pub image: String,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    /// Sets up private podman configuration and imports a busybox image built by the test.
    /// containers.conf: no network namespace setup on the host, ulimits this machine can
    /// grant (see ENVIRONMENT.md), cgroupfs, file events.
    pub fn new() -> Podman {
        require("podman", "podman");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("graph").display(),
                d.join("run").display()
            ),
        )
        .expect("storage.conf");
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\nnetns = \"none\"\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\ntmp_dir = \"{}\"\nvolume_path = \"{}\"\n",
                d.join("events.log").display(),
                d.join("tmp").display(),
                d.join("volumes").display()
            ),
        )
        .expect("containers.conf");
        let tarball = busybox_tarball(d);
        let image = format!("localhost/twinbox-test-busybox-{}", std::process::id());
        let podman = Podman { dir, image };
        let out = podman.run(["import", tarball.to_str().unwrap(), &podman.image]);
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        podman
    }

    /// `podman --runtime TWINBOX ARGS...` with the private configuration.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new("podman");
        cmd.env(
            "CONTAINERS_STORAGE_CONF",
            self.dir.path().join("storage.conf"),
        )
        .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
        .arg("--runtime")
        .arg(crate::twinbox_bin())
        .args(args);
        cmd
    }

    /// Runs a podman command and returns its output.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        crate::runtime::output_via_files(self.command(args))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(["rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(["rmi", "--all", "--force"]);
        // podman's cgroupfs manager puts conmon in /libpod_parent/conmon.
        crate::runtime::remove_empty_cgroup_parent("libpod_parent/conmon");
        crate::runtime::remove_empty_cgroup_parent("libpod_parent");
    }
}

/// A containerd configuration whose root, state and sockets are all under `dir` (the gRPC
/// socket is `dir/containerd.sock`), with the CRI plugin off: a daemon of the test's own that
/// leaves the host's containerd alone.
pub fn containerd_config(dir: &Path) -> String {
    format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        sock = dir.join(CONTAINERD_SOCKET).display()
    )
}

/// The gRPC socket's name in a [`containerd_config`] directory.
pub const CONTAINERD_SOCKET: &str = "containerd.sock";

/// A containerd daemon of the test's own (root, state, socket), with the CRI plugin off.
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    /// Starts containerd and waits until its socket answers.
    pub fn start() -> Containerd {
        require("containerd", "containerd");
        require("containerd-shim-runc-v2", "containerd");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(&config, containerd_config(d)).expect("config.toml");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let containerd = Containerd { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !containerd.ctr(["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        containerd
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The run root twinbox gets from the shim (`--runc-root`).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("twinbox")
    }

    /// `ctr --address SOCK ARGS...` as a command.
    pub fn ctr_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join(CONTAINERD_SOCKET))
            .args(args);
        cmd
    }

    /// Runs ctr and returns its output.
    pub fn ctr<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        crate::runtime::output_via_files(self.ctr_command(args))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first (their shims exit with them), then the daemon.
        let tasks = self.ctr(["task", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(["task", "kill", "-s", "KILL", id]);
            let _ = self.ctr(["task", "delete", "--force", id]);
        }
        let containers = self.ctr(["container", "ls", "-q"]);
        for id in String::from_utf8_lossy(&containers.stdout).lines() {
            let _ = self.ctr(["container", "rm", id]);
        }
        // SAFETY: signalling the daemon this fixture started.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // ctr's default cgroups path is /NAMESPACE/ID.
        crate::runtime::remove_empty_cgroup_parent("default");
    }
}
