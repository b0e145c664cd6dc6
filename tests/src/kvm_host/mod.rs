//! An emulated KVM host for booting real, stock kernels on machines whose own `/dev/kvm`
//! cannot (PVM hosts such as the development and CI machines).
//!
//! - **L1** is `qemu-system-x86_64 -accel tcg -cpu EPYC,+svm -smp 1` running Debian's cloud
//!   kernel with `kvm.ko` + `kvm-amd.ko`: it has a real `/dev/kvm` (emulated SVM). Its root is
//!   an initramfs holding busybox, those modules and the job's files.
//! - **L2** is the guest under test, booted inside L1 by the VMM under test (QEMU microvm for
//!   peers, twinbox's own VMM), from a shell script that L1 runs.
//!
//! A [`Job`] names host files to place into L1 (copied into its initramfs, so they live in
//! L1's RAM; large images can be attached as L1 virtio disks instead), the script, and a
//! timeout; [`KvmHost::run`]
//! boots L1 once and returns the script's output and exit status ([`JobOutput`]), or a clear
//! error: L1 did not boot, L1 has no KVM, the script or L1 timed out, L1 stopped early. One L1
//! boot costs seconds, so batch many L2 runs in one job with [`StepScript`], whose per-step
//! results [`JobOutput::step`] parses. [`l2_initramfs`] and [`QemuMicrovm`] build L2 guests.
//!
//! L1 runs at one vCPU (two emulated SVM vCPUs crashed now and then); L2 may have more. L2 runs
//! at TCG speed: compare timings only as ratios measured inside one job.

mod assets;
mod job;
mod l2;
mod steps;

pub use assets::L1Assets;
pub use job::{Job, JobOutput, without_debug_info};
pub use l2::{QemuMicrovm, l2_initramfs, l2_initramfs_with};
pub use steps::{Step, StepScript, shell_quote};

use std::sync::OnceLock;
use std::time::Duration;

/// Errors of the emulated KVM host harness. Messages carry the relevant end of L1's console
/// or of the job's output, so a failing test says what happened.
#[derive(Debug, thiserror::Error)]
pub enum KvmHostError {
    /// L1's kernel or modules could not be fetched or unpacked.
    #[error("emulated KVM host: {what} failed: {detail}")]
    Assets {
        /// What was being prepared.
        what: String,
        /// Why it failed, with a hint.
        detail: String,
    },
    /// An I/O error on the host side of the harness.
    #[error("emulated KVM host: {context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A job file could not be archived into L1's initramfs.
    #[error("emulated KVM host: building L1's initramfs: {0}")]
    Initramfs(#[from] crate::cpio::CpioError),
    /// A job file would replace a file of the harness in L1.
    #[error(
        "emulated KVM host: {0} is the harness's own file in L1; place the job's file elsewhere"
    )]
    ReservedPath(String),
    /// L1's QEMU could not be started.
    #[error(
        "emulated KVM host: cannot start {qemu}: {source}; install qemu-system-x86 (apt-get install qemu-system-x86)"
    )]
    QemuSpawn {
        /// The QEMU binary.
        qemu: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// L1's QEMU exited before L1's init started.
    #[error(
        "L1 (the emulated KVM host) did not boot: QEMU {status} before L1's init ran\nQEMU said: {qemu_log}\nL1 console (end):\n{console}"
    )]
    L1DidNotBoot {
        /// QEMU's exit status.
        status: String,
        /// QEMU's own messages.
        qemu_log: String,
        /// The end of L1's console.
        console: String,
    },
    /// L1 booted but `/dev/kvm` did not appear after loading kvm-amd.
    #[error(
        "L1 booted but has no /dev/kvm: kvm-amd did not load (an L1 CPU model without svm, or an L1 kernel without KVM)\nL1 console (end):\n{console}"
    )]
    NoKvmInL1 {
        /// The end of L1's console.
        console: String,
    },
    /// The job script ran longer than the job's timeout; L1 killed it.
    #[error(
        "the job script did not finish within {limit:?} inside L1 and was killed\noutput so far (end):\n{output}"
    )]
    ScriptTimeout {
        /// The job's timeout.
        limit: Duration,
        /// The end of the script's output.
        output: String,
    },
    /// L1 as a whole (boot + script) did not finish in time; the harness killed QEMU.
    #[error(
        "L1 did not finish within {limit:?} (boot + script) and was killed\nL1 console (end):\n{console}\noutput so far (end):\n{output}"
    )]
    L1Timeout {
        /// Boot allowance plus the job's timeout.
        limit: Duration,
        /// The end of L1's console.
        console: String,
        /// The end of the script's output.
        output: String,
    },
    /// L1's console fell silent (its init's heartbeat stopped): L1 froze whole, which
    /// emulated SVM under TCG very rarely does. The harness killed it.
    #[error(
        "L1 (the emulated KVM host) froze: its console fell silent {after:?} into the run and QEMU was killed\nL1 console (end):\n{console}\noutput so far (end):\n{output}"
    )]
    L1Froze {
        /// When the harness gave up on L1.
        after: Duration,
        /// The end of L1's console.
        console: String,
        /// The end of the script's output.
        output: String,
    },
    /// L1 stopped (panic, reset) before the job script finished.
    #[error(
        "L1 stopped before the job script finished (QEMU {status})\nL1 console (end):\n{console}\noutput so far (end):\n{output}"
    )]
    L1Stopped {
        /// QEMU's exit status.
        status: String,
        /// The end of L1's console.
        console: String,
        /// The end of the script's output.
        output: String,
    },
    /// A step of a [`StepScript`] is not in the job's output.
    #[error(
        "step '{name}' did not run to its end (an earlier step hung, or L1 stopped)\njob output (end):\n{output}"
    )]
    StepMissing {
        /// The step's name.
        name: String,
        /// The end of the job's output.
        output: String,
    },
    /// A step of a [`StepScript`] failed (for an L2 run: the L2 VMM failed or the guest did
    /// not exit cleanly).
    #[error("step '{name}' failed: {status}\nits output (end):\n{output}")]
    StepFailed {
        /// The step's name.
        name: String,
        /// "exit status N" or "timed out after ...".
        status: String,
        /// The end of the step's output.
        output: String,
    },
}

/// An `Io` error constructor for `map_err`.
fn io_error(context: String) -> impl FnOnce(std::io::Error) -> KvmHostError {
    move |source| KvmHostError::Io { context, source }
}

/// The last `lines` lines of `text`, for error messages.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A prepared emulated KVM host: the L1 assets, ready to run jobs.
#[derive(Debug, Clone)]
pub struct KvmHost {
    assets: L1Assets,
}

impl KvmHost {
    /// Prepares L1's assets in `target/kvm-host/` (downloads the cloud kernel package on
    /// first use).
    pub fn prepare() -> Result<Self, KvmHostError> {
        Self::with_cache(&crate::target_dir().join("kvm-host"))
    }

    /// Like [`KvmHost::prepare`], caching in `cache`.
    pub fn with_cache(cache: &std::path::Path) -> Result<Self, KvmHostError> {
        Ok(Self {
            assets: L1Assets::prepare(cache)?,
        })
    }

    /// The L1 kernel and modules in use.
    pub fn assets(&self) -> &L1Assets {
        &self.assets
    }
}

/// The shared emulated KVM host of this process, prepared on first use. Panics with the
/// preparation error: meant for tests and benches.
pub fn kvm_host() -> &'static KvmHost {
    static HOST: OnceLock<KvmHost> = OnceLock::new();
    HOST.get_or_init(|| {
        KvmHost::prepare().unwrap_or_else(|error| panic!("emulated KVM host: {error}"))
    })
}
