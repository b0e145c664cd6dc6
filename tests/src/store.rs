//! Running the `twinbox` image commands against a private store in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

/// A temporary store root; every command runs with `--root` pointing at it and with
/// `TWINBOX_CONFIG` set to a file in it (absent unless a test writes it).
pub struct TestStore {
    /// The temporary directory: `store/` is the root, `config.toml` the config file.
    pub dir: tempfile::TempDir,
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TestStore {
    /// A new, empty store.
    pub fn new() -> TestStore {
        TestStore {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The store root.
    pub fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    /// Runs `twinbox --root <store> ARGS`.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new(crate::twinbox_bin())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("TWINBOX_CONFIG", self.dir.path().join("config.toml"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "twinbox {:?} failed: {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "twinbox {:?} succeeded but should have failed: {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `twinbox images --format json`, parsed.
    pub fn images(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<Vec<serde_json::Value>>(&self.ok(&["images", "--format", "json"]))
            .unwrap()
    }

    /// Names of the entries in a store subdirectory (e.g. `blobs/sha256`, `tmp`).
    pub fn entries(&self, sub: &str) -> Vec<String> {
        match std::fs::read_dir(self.root().join(sub)) {
            Ok(dir) => dir
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Runs an OCI bundle with `runc run` under a unique container id; returns the output.
/// The container is deleted afterwards even if the run failed.
pub fn runc_run(bundle: &Path) -> Output {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = format!(
        "twinbox-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let out = Command::new("runc")
        .args(["run", &id])
        .current_dir(bundle)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("runc")
        .args(["delete", "--force", &id])
        .output();
    out
}
