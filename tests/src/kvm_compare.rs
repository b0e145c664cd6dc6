//! `twinbox compare` inside the emulated KVM host (L1): how VM mode is measured on machines
//! whose own `/dev/kvm` cannot boot twinbox's stock guest kernel (PVM hosts such as the
//! development and CI machines).
//!
//! The image is exported from the host store as an OCI archive (`twinbox save`) and loaded
//! into a fresh store in L1 (`twinbox load`), so L1 compares the same image: the same layers
//! and the same config (Env, Entrypoint, Cmd, WorkingDir, User). L1 then runs `twinbox compare` with the emulated-host
//! note set ([`twinbox::compare::orchestrate::EMULATED_KVM_ENV`]), so container mode and VM mode
//! are measured in the same L1 and their ratio is like for like. Afterwards L1 lists what the
//! run left behind (work directories, cgroups, mounts, processes, container roots), which
//! [`EmulatedCompare::leftovers`] returns: empty after a clean run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::kvm_host::{JobOutput, KvmHost, KvmHostError, StepScript, shell_quote};
use crate::vm::{TWINBOX_SETUP, twinbox_job};

/// Where L1 holds the image archive and the report.
const L1_IMAGE_TAR: &str = "/job/image.tar";
const L1_REPORT: &str = "/tmp/compare-report.json";
/// Memory of L1: room for L1, the image in RAM and a few idle guests.
const L1_MEMORY_MIB: u64 = 2048;
/// Time for the steps besides `compare` itself.
const SHORT_STEP: Duration = Duration::from_secs(60);

/// Errors of a compare run in the emulated host.
#[derive(Debug, thiserror::Error)]
pub enum KvmCompareError {
    /// The image could not be exported from the host store.
    #[error("exporting {image} from the host store: {detail}")]
    Export {
        /// The image.
        image: String,
        /// What failed.
        detail: String,
    },
    /// The emulated host failed, or a step in it.
    #[error(transparent)]
    KvmHost(#[from] KvmHostError),
}

/// One `twinbox compare` run inside L1.
#[derive(Debug, Clone)]
pub struct EmulatedCompare {
    /// The host's image store (`twinbox --root`).
    pub store_root: PathBuf,
    /// The image, as the host store names it.
    pub image: String,
    /// Further `twinbox compare` arguments (`--runs`, `--density`, `--modes`, `-- CMD`...).
    pub compare_args: Vec<String>,
    /// Time `compare` may take inside L1 (TCG speed).
    pub timeout: Duration,
}

/// What the run brought back.
#[derive(Debug, Clone)]
pub struct EmulatedRun {
    /// The report, as `twinbox compare --format json` wrote it in L1.
    pub report_json: String,
    /// `twinbox compare`'s messages (stderr) in L1.
    pub log: String,
    /// What the run left in L1 (one line per leftover; empty after a clean run).
    pub leftovers: Vec<String>,
    /// Wall time of the whole L1 run.
    pub elapsed: Duration,
}

impl EmulatedCompare {
    /// Boots L1 once, runs `twinbox compare` there and brings the report back. `work` holds
    /// the files staged for L1 (stripped binaries, the image tarball).
    pub fn run(&self, host: &KvmHost, work: &Path) -> Result<EmulatedRun, KvmCompareError> {
        let archive = self.export_image(work)?;
        let image = shell_quote(&self.image);
        let args: Vec<String> = self.compare_args.iter().map(|a| shell_quote(a)).collect();
        let steps = StepScript::new()
            .setup(TWINBOX_SETUP)
            .step(
                "load",
                SHORT_STEP,
                &format!("twinbox --root /tmp/store load {L1_IMAGE_TAR} >/dev/null"),
            )
            .step(
                "compare",
                self.timeout,
                &format!(
                    "{env}=1 twinbox --root /tmp/store compare {image} --quiet --format json \
                     --work-dir /run {args} > {L1_REPORT}",
                    env = twinbox::compare::orchestrate::EMULATED_KVM_ENV,
                    args = args.join(" ")
                ),
            )
            .step("report", SHORT_STEP, &format!("cat {L1_REPORT}"))
            .step("leftovers", SHORT_STEP, LEFTOVERS);
        let job = twinbox_job(&steps, work, self.timeout + 3 * SHORT_STEP)
            .file(crate::workspace_bin("twinbox-probe"), "/job/twinbox-probe")
            .file(&archive, L1_IMAGE_TAR)
            // The QEMU microvm peer column (`--peers qemu`).
            .qemu()
            .memory_mib(L1_MEMORY_MIB);
        let output = host.run(&job)?;
        collect(&output)
    }

    /// `twinbox save` of the image from the host store, as an OCI archive in `work`.
    fn export_image(&self, work: &Path) -> Result<PathBuf, KvmCompareError> {
        let archive = work.join("image.tar");
        let output = Command::new(crate::twinbox_bin())
            .arg("--root")
            .arg(&self.store_root)
            .arg("save")
            .arg(&self.image)
            .arg("-o")
            .arg(&archive)
            .output()
            .map_err(|e| KvmCompareError::Export {
                image: self.image.clone(),
                detail: format!("running twinbox save: {e}"),
            })?;
        if !output.status.success() {
            return Err(KvmCompareError::Export {
                image: self.image.clone(),
                detail: format!(
                    "twinbox save {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(archive)
    }
}

/// Lists what a compare run may leave in L1, one line each: work directories, cgroups,
/// mounts and processes of its sandboxes (ids `tbc<pid>-...`), any twinbox process (a VMM,
/// a shim), container roots in the store.
/// (The process pattern is written so that this script's own command line does not match; a
/// process that exits during the scan, such as the scan's own `tr`, is skipped silently.)
const LEFTOVERS: &str = r#"ls -d /run/twinbox-compare-* /sys/fs/cgroup/twinbox-compare-* 2>/dev/null
grep -e tbc -e twinbox-compare /proc/self/mountinfo
for p in /proc/[0-9]*; do
	c=$( { tr '\0' ' ' < $p/cmdline; } 2>/dev/null)
	case "$c" in *tb[c][0-9]*) echo "process: $c"; continue;; esac
	[ "$(readlink $p/exe)" = /job/twinbox ] && echo "twinbox process: $c"
done
ls /tmp/store/containers 2>/dev/null | sed 's/^/container root: /'
true"#;

fn collect(output: &JobOutput) -> Result<EmulatedRun, KvmCompareError> {
    output.step("load")?.check()?;
    let compare = output.step("compare")?;
    let log = compare.output.clone();
    compare.check()?;
    let report_json = output.step("report")?.check()?.output;
    let leftovers = output
        .step("leftovers")?
        .check()?
        .output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect();
    Ok(EmulatedRun {
        report_json,
        log,
        leftovers,
        elapsed: output.elapsed,
    })
}
