//! The project's guest kernel (`guest/kernel/`), built once by `guest/kernel/build.sh` and
//! cached under `target/guest-kernel/<config hash>/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Errors from locating or building the guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum GuestKernelError {
    /// The build script could not be started.
    #[error("cannot run {script}: {source}")]
    Spawn {
        /// The build script.
        script: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The build script failed; it printed the reason on stderr.
    #[error("{script} failed ({status}); its messages above say why (or run `make kernel`)")]
    BuildFailed {
        /// The build script.
        script: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// A build directory lacks one of its files.
    #[error(
        "the guest kernel build in {dir} is incomplete: {file} is missing ({source}); delete the directory and run `make kernel`"
    )]
    Incomplete {
        /// The build directory.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A built guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// The build directory, `target/guest-kernel/<hash>/`.
    pub dir: PathBuf,
    /// Uncompressed ELF kernel with the PVH entry note.
    pub vmlinux: PathBuf,
    /// Compressed kernel for the 64-bit/bzImage boot protocol.
    pub bzimage: PathBuf,
    /// The kernel's full configuration.
    pub config: PathBuf,
    /// What `uname -r` prints inside the guest (from the build's `kernel.release`).
    pub release: String,
}

impl GuestKernel {
    /// Returns the kernel cached in `cache` for the current config, building it first (minutes;
    /// progress on stderr) when it is missing.
    pub fn build(cache: &Path) -> Result<Self, GuestKernelError> {
        let script = crate::repo_root().join("guest/kernel/build.sh");
        let output = Command::new(&script)
            .arg("--cache")
            .arg(cache)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|source| GuestKernelError::Spawn {
                script: script.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(GuestKernelError::BuildFailed {
                script,
                status: output.status,
            });
        }
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Self::load(Path::new(&dir))
    }

    /// Describes the build in `dir` (as printed by `build.sh`), checking its files exist.
    pub fn load(dir: &Path) -> Result<Self, GuestKernelError> {
        let file = |file: &'static str| {
            let path = dir.join(file);
            std::fs::metadata(&path)
                .map(|_| path)
                .map_err(|source| GuestKernelError::Incomplete {
                    dir: dir.to_path_buf(),
                    file,
                    source,
                })
        };
        let release_file = file("kernel.release")?;
        let release = std::fs::read_to_string(&release_file)
            .map_err(|source| GuestKernelError::Incomplete {
                dir: dir.to_path_buf(),
                file: "kernel.release",
                source,
            })?
            .trim()
            .to_string();
        Ok(Self {
            dir: dir.to_path_buf(),
            vmlinux: file("vmlinux")?,
            bzimage: file("bzImage")?,
            config: file("config")?,
            release,
        })
    }
}

/// The guest kernel for this checkout, built on first use (once per process) in
/// `target/guest-kernel/`. Panics with the build error: meant for tests and benches.
pub fn guest_kernel() -> &'static GuestKernel {
    static KERNEL: OnceLock<GuestKernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        GuestKernel::build(&crate::target_dir().join("guest-kernel"))
            .unwrap_or_else(|error| panic!("guest kernel: {error}"))
    })
}
