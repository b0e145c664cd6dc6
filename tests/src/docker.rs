//! Fixtures for the docker-style command tests: a private image store holding a busybox
//! image (built by the test and `twinbox import`ed) and a private run root. Dropping the
//! fixture force-removes every container left in the run root, so a failing test leaves no
//! processes, mounts, cgroups or state behind.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::runtime::{output_via_files, remove_empty_cgroup_parent};

/// The name the busybox image gets in every test store.
pub const IMAGE: &str = "busybox:test";

/// A store with [`IMAGE`] and a run root, both in one temp dir.
pub struct Docker {
    dir: tempfile::TempDir,
}

impl Default for Docker {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes a tar of the busybox root filesystem (symlinks kept as symlinks).
fn busybox_tarball(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    crate::busybox_rootfs(&rootfs).expect("busybox rootfs");
    let tarball = dir.join("busybox.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&tarball).expect("tarball"));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", &rootfs).expect("tar");
    builder.finish().expect("tar");
    std::fs::remove_dir_all(&rootfs).expect("removing the rootfs");
    tarball
}

impl Docker {
    /// A fresh store with the busybox image imported (CMD ["sh"], StopSignal unset).
    pub fn new() -> Docker {
        let docker = Docker {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let tarball = busybox_tarball(docker.dir.path());
        docker.ok([
            OsStr::new("import"),
            tarball.as_os_str(),
            OsStr::new(IMAGE),
            OsStr::new("--change"),
            OsStr::new(r#"CMD ["sh"]"#),
        ]);
        std::fs::remove_file(tarball).expect("removing the tarball");
        docker
    }

    /// The image store (`--root`).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The run root (`--run-root`).
    pub fn run_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A scratch directory for the test (inside the fixture's temp dir).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&path).expect("scratch dir");
        path
    }

    /// `twinbox --root STORE --run-root RUN ARGS...`, not run yet.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(crate::twinbox_bin());
        cmd.arg("--root")
            .arg(self.store())
            .arg("--run-root")
            .arg(self.run_root())
            .args(args)
            .env_remove("TWINBOX_ROOT")
            .env_remove("TWINBOX_RUN_ROOT");
        cmd
    }

    /// Runs a command (stdin empty, outputs via files: a container may outlive twinbox).
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output_via_files(self.command(args))
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self.run(args);
        assert!(
            out.status.success(),
            "twinbox {shown:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `run --rm [FLAGS] IMAGE sh -c SCRIPT`: (exit code, stdout, stderr).
    pub fn sh(&self, flags: &[&str], script: &str) -> (i32, String, String) {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        let out = self.run(args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ps -a --format json`, parsed.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(["ps", "-a", "--format", "json"])).expect("ps JSON")
    }

    /// The `ps -a` entry of container `name`.
    pub fn container(&self, name: &str) -> serde_json::Value {
        self.ps()
            .into_iter()
            .find(|c| c["Names"] == name)
            .unwrap_or_else(|| panic!("{name} is not in ps -a"))
    }

    /// Polls until container `name` has `state` (running, exited, ...), up to 10 s.
    pub fn wait_state(&self, name: &str, state: &str) -> serde_json::Value {
        let mut found = serde_json::Value::Null;
        crate::wait_until(
            &format!("{name} never became {state}"),
            Duration::from_secs(10),
            || match self.ps().into_iter().find(|c| c["Names"] == name) {
                Some(c) if c["State"] == state => {
                    found = c;
                    true
                }
                _ => false,
            },
        );
        found
    }

    /// Ids of the containers in the run root.
    pub fn container_ids(&self) -> Vec<String> {
        entries(&self.run_root())
    }

    /// Entries of the store's `containers/` (per-container root filesystems and logs).
    pub fn store_containers(&self) -> Vec<String> {
        entries(&self.store().join("containers"))
    }

    /// Mounts of this fixture's store that are still mounted.
    pub fn store_mounts(&self) -> Vec<String> {
        let store = self.store().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&store))
            .map(str::to_string)
            .collect()
    }

    /// Asserts that nothing of any container is left: run root, store dirs, mounts.
    pub fn assert_clean(&self) {
        assert!(
            self.container_ids().is_empty(),
            "run root: {:?}",
            self.container_ids()
        );
        assert!(
            self.store_containers().is_empty(),
            "store: {:?}",
            self.store_containers()
        );
        assert!(
            self.store_mounts().is_empty(),
            "mounts: {:?}",
            self.store_mounts()
        );
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Docker {
    fn drop(&mut self) {
        for id in self.container_ids() {
            let _ = self.run(["rm", "--force", "--volumes", &id]);
        }
        // Whatever a broken run left mounted would keep the temp dir from being removed.
        for mount in self.store_mounts() {
            let _ = nix::mount::umount2(Path::new(&mount), nix::mount::MntFlags::MNT_DETACH);
        }
        remove_empty_cgroup_parent("twinbox");
    }
}
