//! runc bundles for end-to-end tests: a busybox root filesystem, a `runc spec` config the
//! test edits, and a private runc state root. Everything (container, cgroup, files) is
//! removed when the bundle is dropped, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// The runc binary (Debian's `runc` package).
pub const RUNC: &str = "runc";

/// Cgroup v1 controllers runc may create a directory in (cleaned up on drop).
const CGROUP_V1_CONTROLLERS: [&str; 8] = [
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
];

fn context(what: String) -> impl FnOnce(std::io::Error) -> std::io::Error {
    move |error| std::io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// A runc bundle with a unique container id and cgroup.
pub struct RuncBundle {
    dir: tempfile::TempDir,
    /// The container id (unique per bundle in this machine's lifetime).
    pub id: String,
    /// The container's cgroup path (`linux.cgroupsPath`).
    pub cgroup: String,
    /// The parsed `config.json`; edit it, it is written before each run.
    pub config: Value,
}

impl RuncBundle {
    /// A bundle with a busybox root filesystem and `runc spec`'s default config, changed to
    /// run without a terminal in a cgroup of its own.
    pub fn new(name: &str) -> std::io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "twinbox-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new().prefix("runc-bundle-").tempdir()?;
        crate::busybox_rootfs(&dir.path().join("rootfs"))?;
        let spec = Command::new(RUNC)
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .map_err(context(format!(
                "cannot run `{RUNC} spec` (apt-get install runc)"
            )))?;
        if !spec.status.success() {
            return Err(std::io::Error::other(format!(
                "`runc spec` failed: {}",
                String::from_utf8_lossy(&spec.stderr)
            )));
        }
        let text = std::fs::read_to_string(dir.path().join("config.json"))?;
        let mut config: Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        let cgroup = format!("/{id}");
        config["process"]["terminal"] = Value::Bool(false);
        config["linux"]["cgroupsPath"] = Value::String(cgroup.clone());
        config["hostname"] = Value::String(name.to_string());
        Ok(RuncBundle {
            dir,
            id,
            cgroup,
            config,
        })
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The root filesystem directory.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn state_root(&self) -> PathBuf {
        self.dir.path().join("runc-state")
    }

    /// Bind-mounts a host file read-only into the container at `destination`.
    pub fn bind_file(&mut self, source: &Path, destination: &str) {
        let mounts = self.config["mounts"]
            .as_array_mut()
            .expect("runc spec writes a mounts array");
        mounts.push(serde_json::json!({
            "destination": destination,
            "type": "bind",
            "source": source,
            "options": ["rbind", "ro"],
        }));
    }

    /// Adds `capability` (e.g. `CAP_SYS_ADMIN`) to every capability set of the process.
    pub fn add_capability(&mut self, capability: &str) {
        let sets = self.config["process"]["capabilities"]
            .as_object_mut()
            .expect("runc spec writes process.capabilities");
        for set in sets.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.push(Value::String(capability.to_string()));
            }
        }
    }

    /// Removes the namespace of `kind` (e.g. `network`): the container shares the host's.
    pub fn share_host_namespace(&mut self, kind: &str) {
        let namespaces = self.config["linux"]["namespaces"]
            .as_array_mut()
            .expect("runc spec writes linux.namespaces");
        namespaces.retain(|ns| ns["type"] != kind);
    }

    /// Runs `args` in the container with `runc run` and waits for it (runc removes the
    /// container when the process exits).
    pub fn run(&self, args: &[&str]) -> std::io::Result<Output> {
        let mut config = self.config.clone();
        config["process"]["args"] = serde_json::json!(args);
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config).map_err(std::io::Error::other)?,
        )?;
        Command::new(RUNC)
            .arg("--root")
            .arg(self.state_root())
            .args(["run", "--bundle"])
            .arg(self.dir.path())
            .arg(&self.id)
            .output()
            .map_err(context(format!("cannot run `{RUNC} run`")))
    }

    /// Like [`RuncBundle::run`], failing with runc's stderr unless the container exits 0.
    pub fn run_ok(&self, args: &[&str]) -> std::io::Result<Output> {
        let output = self.run(args)?;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "`runc run {}` of {:?} failed ({}): {}",
                self.id,
                args,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(output)
    }
}

impl Drop for RuncBundle {
    fn drop(&mut self) {
        // Normally runc has removed everything already; this covers a run that was
        // interrupted half-way.
        let _ = Command::new(RUNC)
            .arg("--root")
            .arg(self.state_root())
            .args(["delete", "--force", &self.id])
            .output();
        for controller in CGROUP_V1_CONTROLLERS {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{controller}{}", self.cgroup));
        }
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/unified{}", self.cgroup));
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup{}", self.cgroup));
    }
}
