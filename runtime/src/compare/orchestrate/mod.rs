//! The `twinbox compare` run: plans the columns (twinbox's modes and the peers), measures
//! each one with the same bundles and the same probe, and fills a [`Report`].
//!
//! Every container-class column (twinbox's container and VM modes, runc, runsc, crun) runs
//! the same OCI bundle through the same runc-compatible CLI calls ([`runtime::OciRuntime`]),
//! so the columns differ only in the runtime. The QEMU microvm column boots the VM mode's
//! kernel and image disk instead ([`qemu`]), behind the same [`sandbox::Sandbox`] interface.
//! Per column, in order:
//! 1. isolation: the probe's `isolation` mode, twice (the second run is the first's sibling
//!    for the clone-uniqueness rows); a column whose first run fails is reported with the
//!    reason and skipped;
//! 2. start time: N foreground `run`s of `probe start-marker -- CMD` (workload start from the
//!    marker, exit when `run` returns: create, start, exit and delete);
//! 3. weight: two idle sandboxes (`create` + `start` of `probe idle`), their host
//!    processes' PSS/USS and disk; their starts give the phases (`create` is the
//!    container-setup phase; a VM's `state` annotations give its VMM start, kernel boot and
//!    agent ready milestones, see [`crate::vm::phases`]);
//! 4. density (with `--density K`): idle sandboxes at 1, 10, 50, ... K.
//!
//! Everything started is a drop guard ([`sandbox::Sandbox`], [`sandbox::Workspace`]), and
//! Ctrl-C only sets a flag ([`interrupt`]), so every exit path leaves no processes, mounts,
//! cgroups or state behind.

pub mod interrupt;
pub mod qemu;
pub mod runtime;
pub mod sandbox;

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oci_spec::image::ImageConfiguration;

use self::runtime::{OciRuntime, find_program, version_of};
use self::sandbox::{Sandbox, Started, Workspace};
use super::CompareError;
use super::disk::DiskCounter;
use super::memory::{MemoryUsage, memory_usage};
use super::probe::{IN_SANDBOX_PATH, isolation_args, parse_observations, start_marker_args};
use super::report::*;
use super::stats::Distribution;
use super::timing::{StartClock, workload_start};
use super::verdict::{Expectation, HostFacts, HostProcess, SiblingIdentity, Verdict, assess};
use crate::image::ImageError;
use crate::image::store::{Image, ImageStore};

/// Environment variable the emulated-KVM-host harness sets inside L1, so the report header
/// says its VM timings are valid only as ratios.
pub const EMULATED_KVM_ENV: &str = "TWINBOX_COMPARE_EMULATED_KVM";

/// Idle sandboxes measured for the weight section.
const WEIGHT_SAMPLES: u32 = 2;

/// Errors of a compare run.
#[derive(Debug, thiserror::Error)]
pub enum OrchestrateError {
    /// The image store or image is not usable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Measuring or reporting failed.
    #[error(transparent)]
    Compare(#[from] CompareError),
    /// The runtime spec for the sandboxes cannot be built.
    #[error("building the sandbox's runtime spec: {0}")]
    Spec(String),
    /// A runtime call failed.
    #[error("{runtime} {action}: {message}")]
    Runtime {
        /// The runtime.
        runtime: String,
        /// What it was asked to do.
        action: &'static str,
        /// What it said.
        message: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// Ctrl-C or SIGTERM: everything started was stopped and removed.
    #[error("interrupted; every sandbox started was stopped and removed")]
    Interrupted,
}

impl OrchestrateError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        OrchestrateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<crate::spec::SpecError> for OrchestrateError {
    fn from(error: crate::spec::SpecError) -> Self {
        OrchestrateError::Spec(error.to_string())
    }
}

/// twinbox's isolation modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The container backend.
    Container,
    /// The VM backend.
    Vm,
}

/// Peer runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// runc.
    Runc,
    /// gVisor.
    Runsc,
    /// crun.
    Crun,
    /// QEMU microvm.
    Qemu,
}

impl Peer {
    /// Every peer, in column order.
    pub const ALL: [Peer; 4] = [Peer::Runc, Peer::Runsc, Peer::Crun, Peer::Qemu];

    fn id(self) -> &'static str {
        match self {
            Peer::Runc => "runc",
            Peer::Runsc => "runsc",
            Peer::Crun => "crun",
            Peer::Qemu => "qemu-microvm",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Peer::Runc => "runc",
            Peer::Runsc => "runsc",
            Peer::Crun => "crun",
            Peer::Qemu => "qemu-system-x86_64",
        }
    }
}

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The image store root.
    pub store_root: PathBuf,
    /// The image (name or id).
    pub image: String,
    /// The workload (default `/bin/true`).
    pub command: Vec<String>,
    /// Timed starts per column.
    pub runs: u32,
    /// twinbox modes.
    pub modes: Vec<Mode>,
    /// Peers; `None` = those installed.
    pub peers: Option<Vec<Peer>>,
    /// Density run up to K sandboxes (0: none).
    pub density: u32,
    /// Memory limit of every sandbox.
    pub memory_limit_bytes: u64,
    /// Pids limit of every sandbox.
    pub pids_limit: u64,
    /// Capabilities added to every sandbox.
    pub cap_add: Vec<String>,
    /// Parent of the work directory (default /run).
    pub work_parent: Option<PathBuf>,
    /// The twinbox binary used as the runtime of twinbox's own columns.
    pub twinbox: PathBuf,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

/// How a column's sandboxes are started.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// A runc-compatible runtime CLI on OCI bundles.
    Oci(OciRuntime),
    /// QEMU microvm booting the VM mode's kernel and image disk.
    Qemu(Box<qemu::QemuMicrovm>),
}

/// One measurable column: what starts its sandboxes.
#[derive(Debug, Clone)]
pub struct Lane {
    /// Column id.
    pub id: String,
    /// The runtime.
    pub launcher: Launcher,
    /// Whether the bundle selects twinbox's VM backend.
    pub vm: bool,
}

impl Lane {
    /// An error of this column's runtime.
    pub fn error(&self, action: &'static str, message: String) -> OrchestrateError {
        OrchestrateError::Runtime {
            runtime: match &self.launcher {
                Launcher::Oci(runtime) => runtime.name.clone(),
                Launcher::Qemu(_) => self.id.clone(),
            },
            action,
            message,
        }
    }

    /// Flags the runtime ran with beyond the defaults, for the report's notes.
    fn global_args(&self) -> &[String] {
        match &self.launcher {
            Launcher::Oci(runtime) => &runtime.global_args,
            Launcher::Qemu(_) => &[],
        }
    }
}

/// Everything the sandboxes of a run share.
pub struct Context {
    /// The options.
    pub options: CompareOptions,
    /// The image store.
    pub store: ImageStore,
    /// The image.
    pub image: Image,
    /// Its config.
    pub image_config: ImageConfiguration,
    /// The host directory holding the probe, a private copy bind-mounted into every sandbox
    /// as the directory of [`IN_SANDBOX_PATH`] (a VM receives a directory by sharing, while a
    /// file is copied by value and limited in size).
    pub probe_dir: PathBuf,
    /// The work directory (dropped last).
    pub workspace: Workspace,
    host: HostFacts,
    host_boot_id: Option<String>,
}

/// The density steps up to `k`: 1, 10, 50, 100, 200, 500, 1000, 2000, 5000, ... and `k`.
pub fn ladder(k: u32) -> Vec<u32> {
    let mut steps = Vec::new();
    let mut decade = 1u32;
    'outer: loop {
        for factor in [1u32, 2, 5] {
            let step = match decade.checked_mul(factor) {
                Some(step) if step < k => step,
                _ => break 'outer,
            };
            // 2 and 5 are skipped: 1, 10, 50, 100, 200, 500, ...
            if step != 2 && step != 5 && step != 20 {
                steps.push(step);
            }
        }
        decade = match decade.checked_mul(10) {
            Some(next) => next,
            None => break,
        };
    }
    if k > 0 {
        steps.push(k);
    }
    steps
}

/// The KVM the VM columns of this run use.
pub fn kvm_kind() -> KvmKind {
    if std::env::var_os(EMULATED_KVM_ENV).is_some() {
        KvmKind::Emulated
    } else if vmm::vstate::vm::host_is_pvm() {
        KvmKind::Pvm
    } else if Path::new("/dev/kvm").exists() {
        KvmKind::Hardware
    } else {
        KvmKind::None
    }
}

/// Why VM columns cannot run on a KVM of `kind` (`None` when they can).
pub fn vm_unavailable(kind: KvmKind) -> Option<String> {
    match kind {
        KvmKind::Pvm => Some(
            "this host's /dev/kvm is PVM (kvm_pvm), which cannot boot twinbox's stock guest \
             kernel: measure VM mode on a host with hardware KVM (VMX/SVM), or inside the \
             emulated KVM host, which measures container and VM mode side by side: \
             `cargo run --release -p twinbox-tests --bin kvm-compare -- IMAGE --runs N` \
             (see README, \"twinbox compare\"); container mode and the peers are measured \
             here"
                .to_string(),
        ),
        KvmKind::None => Some(
            "no /dev/kvm on this host: load kvm-intel or kvm-amd, or run on a host with \
             hardware virtualization"
                .to_string(),
        ),
        KvmKind::Hardware | KvmKind::Emulated => None,
    }
}

/// A planned column: measurable, or reported with the reason it is not.
enum Planned {
    Measure(Column, Lane),
    /// The QEMU column, planned once the run's context (image disk, spec) exists.
    Qemu(Column, PathBuf),
    Skip(Column),
}

fn column(id: &str, label: &str, kind: ColumnKind, version: Option<String>) -> Column {
    Column {
        id: id.to_string(),
        label: label.to_string(),
        kind,
        version,
        status: ColumnStatus::Ok,
    }
}

/// runsc's flags for this host: no rootless, no network (loopback only, like the other
/// columns), and the fastest platform this build knows (systrap since 2023, else ptrace).
fn runsc_flags(program: &Path, probe_root: &Path) -> Vec<String> {
    let systrap = std::process::Command::new(program)
        .arg("--root")
        .arg(probe_root)
        .args(["--platform=systrap", "list"])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success());
    let platform = if systrap { "systrap" } else { "ptrace" };
    vec![
        "--rootless=false".into(),
        "--network=none".into(),
        format!("--platform={platform}"),
    ]
}

fn plan(
    options: &CompareOptions,
    workspace: &Workspace,
    kvm: KvmKind,
) -> Result<Vec<Planned>, OrchestrateError> {
    let mut planned = Vec::new();
    let twinbox_version = Some(env!("CARGO_PKG_VERSION").to_string());
    for mode in &options.modes {
        let (id, label, vm) = match mode {
            Mode::Container => ("container", "twinbox container", false),
            Mode::Vm => ("vm", "twinbox vm", true),
        };
        let mut col = column(id, label, ColumnKind::Mode, twinbox_version.clone());
        if vm && let Some(reason) = vm_unavailable(kvm) {
            col.status = ColumnStatus::Failed { reason };
            planned.push(Planned::Skip(col));
            continue;
        }
        let lane = Lane {
            id: id.to_string(),
            launcher: Launcher::Oci(OciRuntime {
                name: "twinbox".into(),
                program: options.twinbox.clone(),
                global_args: Vec::new(),
                state_root: workspace.state_root(id)?,
            }),
            vm,
        };
        planned.push(Planned::Measure(col, lane));
    }
    let explicit = options.peers.is_some();
    for peer in options.peers.clone().unwrap_or(Peer::ALL.to_vec()) {
        let id = peer.id();
        let Some(program) = find_program(peer.program()) else {
            if explicit {
                let mut col = column(id, id, ColumnKind::Peer, None);
                col.status = ColumnStatus::Absent {
                    reason: format!(
                        "{} is not installed (Debian package {})",
                        peer.program(),
                        match peer {
                            Peer::Qemu => "qemu-system-x86",
                            other => other.program(),
                        }
                    ),
                };
                planned.push(Planned::Skip(col));
            }
            continue;
        };
        let mut col = column(id, id, ColumnKind::Peer, version_of(&program));
        if peer == Peer::Qemu {
            col.label = "QEMU microvm".into();
            match vm_unavailable(kvm) {
                Some(reason) => {
                    col.status = ColumnStatus::Failed {
                        reason: format!("a VM column: {reason}"),
                    };
                    planned.push(Planned::Skip(col));
                }
                None => planned.push(Planned::Qemu(col, program)),
            }
            continue;
        }
        let state_root = workspace.state_root(id)?;
        let global_args = if peer == Peer::Runsc {
            runsc_flags(&program, &state_root)
        } else {
            Vec::new()
        };
        let lane = Lane {
            id: id.to_string(),
            launcher: Launcher::Oci(OciRuntime {
                name: id.to_string(),
                program,
                global_args,
                state_root,
            }),
            vm: false,
        };
        planned.push(Planned::Measure(col, lane));
    }
    Ok(planned)
}

/// What one column measured.
#[derive(Default)]
struct LaneResult {
    start_time: Option<StartTimes>,
    weight: Option<Weight>,
    density: Option<DensitySeries>,
    verdicts: Vec<Verdict>,
    notes: Vec<String>,
}

/// Runs the whole comparison and returns the report.
pub fn compare(options: CompareOptions) -> Result<Report, OrchestrateError> {
    if options.modes.is_empty() && options.peers.as_ref().is_some_and(Vec::is_empty) {
        return Err(OrchestrateError::Usage(
            "nothing to compare: give at least one mode or peer".into(),
        ));
    }
    let _interrupts = interrupt::Handler::install();
    let store = ImageStore::open(&options.store_root)?;
    let image = store.resolve(&options.image)?;
    let image_config = store.config(&image)?;
    let probe = super::probe::probe_binary()?;
    let host = HostFacts::collect()?;
    let workspace = Workspace::create(options.work_parent.as_deref())?;
    let probe_dir = workspace.probe_dir(&probe)?;
    let wants_vm = options.modes.contains(&Mode::Vm)
        || options
            .peers
            .as_ref()
            .is_none_or(|p| p.contains(&Peer::Qemu));
    let kvm = if wants_vm { kvm_kind() } else { KvmKind::None };
    let planned = plan(&options, &workspace, kvm)?;
    let command = if options.command.is_empty() {
        vec!["/bin/true".to_string()]
    } else {
        options.command.clone()
    };
    let mut header =
        Header::for_this_host(&options.image, &command, options.runs, KvmHost::new(kvm))?;
    let ctx = Context {
        host_boot_id: host.kernel.boot_id.clone(),
        options,
        store,
        image,
        image_config,
        probe_dir,
        workspace,
        host,
    };

    let mut columns = Vec::new();
    let mut start_time = Vec::new();
    let mut weight = Vec::new();
    let mut density = Vec::new();
    let mut verdicts: Vec<(String, Vec<Verdict>)> = Vec::new();
    let mut serial = 0u32;
    for planned in planned {
        let (mut col, lane) = match planned {
            Planned::Skip(col) => {
                columns.push(col);
                continue;
            }
            Planned::Measure(col, lane) => (col, lane),
            Planned::Qemu(mut col, program) => match qemu::QemuMicrovm::plan(&ctx, program) {
                Ok(qemu) => {
                    let lane = Lane {
                        id: col.id.clone(),
                        launcher: Launcher::Qemu(Box::new(qemu)),
                        vm: false,
                    };
                    (col, lane)
                }
                Err(error) => {
                    col.status = ColumnStatus::Failed {
                        reason: format!("cannot prepare the guest: {error}"),
                    };
                    columns.push(col);
                    continue;
                }
            },
        };
        match measure(&ctx, &lane, &command, &mut serial) {
            Ok(result) => {
                start_time.extend(result.start_time);
                weight.extend(result.weight);
                density.extend(result.density);
                verdicts.push((col.id.clone(), result.verdicts));
                header.notes.extend(result.notes);
                if !lane.global_args().is_empty() {
                    header.notes.push(format!(
                        "{} ran with {}",
                        lane.id,
                        lane.global_args().join(" ")
                    ));
                }
            }
            Err(OrchestrateError::Interrupted) => return Err(OrchestrateError::Interrupted),
            Err(error) => {
                col.status = ColumnStatus::Failed {
                    reason: error.to_string(),
                };
            }
        }
        columns.push(col);
    }
    let verdict_refs: Vec<(&str, Vec<Verdict>)> = verdicts
        .iter()
        .map(|(id, rows)| (id.as_str(), rows.clone()))
        .collect();
    let isolation = Isolation::from_verdicts(&verdict_refs);
    let report = Report {
        schema_version: REPORT_SCHEMA_VERSION,
        header,
        columns,
        start_time,
        weight,
        density,
        isolation,
    };
    report.check_columns()?;
    Ok(report)
}

/// Writes report.json, report.html and report.txt into `dir`.
pub fn write_out(report: &Report, dir: &Path) -> Result<(), OrchestrateError> {
    std::fs::create_dir_all(dir).map_err(|source| OrchestrateError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (name, format) in [
        ("report.json", super::render::Format::Json),
        ("report.html", super::render::Format::Html),
        ("report.txt", super::render::Format::Table),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, super::render::render(report, format)?)
            .map_err(|source| OrchestrateError::Io { path, source })?;
    }
    Ok(())
}

fn check_interrupt() -> Result<(), OrchestrateError> {
    if interrupt::requested() {
        Err(OrchestrateError::Interrupted)
    } else {
        Ok(())
    }
}

/// A progress bar for one phase of one column (hidden without `progress`).
fn bar(ctx: &Context, lane: &Lane, phase: &str, len: u64) -> ProgressBar {
    let bar = if ctx.options.progress {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("{} {phase}", lane.id));
    bar
}

fn in_sandbox(args: Vec<String>) -> Vec<String> {
    std::iter::once(IN_SANDBOX_PATH.to_string())
        .chain(args)
        .collect()
}

fn measure(
    ctx: &Context,
    lane: &Lane,
    command: &[String],
    serial: &mut u32,
) -> Result<LaneResult, OrchestrateError> {
    let mut next = || {
        *serial += 1;
        *serial
    };
    let (verdicts, note) = isolation(ctx, lane, &mut next)?;
    let mut result = LaneResult {
        verdicts,
        notes: note.into_iter().collect(),
        ..LaneResult::default()
    };
    check_interrupt()?;

    // Start times.
    let runs = ctx.options.runs;
    let progress = bar(ctx, lane, "start", u64::from(runs));
    let argv = in_sandbox(start_marker_args(command));
    let (mut starts, mut exits, mut failures) = (Vec::new(), Vec::new(), 0u32);
    let mut clock = None;
    let mut first_failure = None;
    for _ in 0..runs {
        check_interrupt()?;
        let mut sandbox = Sandbox::prepare(ctx, lane, next(), argv.clone())?;
        match sandbox.run_foreground(true) {
            Ok((Some(started), _, exited)) => {
                let (start, used) = start_of(ctx, &started);
                starts.push(start);
                exits.push(exited);
                clock = Some(used);
            }
            Ok((None, _, _)) => failures += 1,
            Err(error) => {
                failures += 1;
                first_failure.get_or_insert(error.to_string());
            }
        }
        sandbox.remove()?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    if let Some(failure) = first_failure {
        result.notes.push(format!(
            "{}: {failures} of {runs} timed runs failed; the first: {failure}",
            lane.id
        ));
    }

    // Weight: idle sandboxes.
    check_interrupt()?;
    let idle_argv = in_sandbox(start_marker_args(&in_sandbox(vec!["idle".into()])));
    let progress = bar(ctx, lane, "weight", u64::from(WEIGHT_SAMPLES));
    let mut phase_samples = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..WEIGHT_SAMPLES {
        check_interrupt()?;
        let mut sandbox = Sandbox::prepare(ctx, lane, next(), idle_argv.clone())?;
        let started = sandbox.start_idle()?;
        phase_samples.extend(started.phases);
        idle.push(sandbox);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let usage = measure_all(&idle)?;
    let mut disk = DiskCounter::new();
    let mut shared = 0;
    for dir in sandbox::image_dirs(&ctx.store, &ctx.image, lane)? {
        shared += disk.measure(&dir)?.allocated_bytes;
    }
    let mut own = 0;
    for dir in idle.iter().flat_map(Sandbox::own_disk) {
        own += disk.measure(&dir)?.allocated_bytes;
    }
    for sandbox in idle {
        sandbox.remove()?;
    }
    result.weight = Some(Weight {
        column: lane.id.clone(),
        sandboxes: WEIGHT_SAMPLES,
        pss_bytes: usage.pss_bytes / u64::from(WEIGHT_SAMPLES),
        uss_bytes: usage.uss_bytes / u64::from(WEIGHT_SAMPLES),
        disk_shared_bytes: shared,
        disk_per_sandbox_bytes: own / u64::from(WEIGHT_SAMPLES),
    });

    // Density.
    if ctx.options.density > 0 {
        let (series, mut density_phases) = density(ctx, lane, &idle_argv, &mut next)?;
        phase_samples.append(&mut density_phases);
        result.density = Some(series);
    }

    let phases = phase_times(&phase_samples);
    // A VM restored from a template snapshot has no kernel boot of its own.
    let reported = |wanted| phases.iter().any(|times| times.phase == wanted);
    if lane.vm && !(reported(Phase::VmmStart) && reported(Phase::AgentReady)) {
        result.notes.push(format!(
            "{}: some VM phases were not reported by `twinbox state` (annotations {}*)",
            lane.id,
            crate::vm::phases::ANNOTATION_PREFIX
        ));
    }
    result.start_time = Some(StartTimes {
        column: lane.id.clone(),
        runs,
        failures,
        workload_start: Distribution::from_durations(&starts),
        start_clock: clock,
        exit: Distribution::from_durations(&exits),
        phases,
    });
    Ok(result)
}

/// One distribution per phase of `samples` (launch to the phase's end), in phase order.
fn phase_times(samples: &[(Phase, Duration)]) -> Vec<PhaseTimes> {
    let mut phases: Vec<Phase> = samples.iter().map(|(phase, _)| *phase).collect();
    phases.sort();
    phases.dedup();
    phases
        .into_iter()
        .filter_map(|phase| {
            let durations: Vec<Duration> = samples
                .iter()
                .filter(|(p, _)| *p == phase)
                .map(|(_, d)| *d)
                .collect();
            Some(PhaseTimes {
                phase,
                distribution: Distribution::from_durations(&durations)?,
            })
        })
        .collect()
}

/// Launch to workload start of a started sandbox.
fn start_of(ctx: &Context, started: &Started) -> (Duration, StartClock) {
    workload_start(
        &started.launch,
        &started.marker,
        started.read_at,
        ctx.host_boot_id.as_deref(),
    )
}

/// Runs the isolation probe twice and judges the first run (the second is its sibling);
/// returns the verdicts and a note when the allocation test had to be left out.
fn isolation(
    ctx: &Context,
    lane: &Lane,
    next: &mut impl FnMut() -> u32,
) -> Result<(Vec<Verdict>, Option<String>), OrchestrateError> {
    let me = std::process::id();
    let limit = ctx.options.memory_limit_bytes;
    // Allocate a quarter more than the limit: an enforced limit stops the allocation.
    let allocate_mib = (limit + limit / 4).div_ceil(1 << 20);
    let mut argv = in_sandbox(isolation_args(Some(me), Some(allocate_mib)));
    let progress = bar(ctx, lane, "isolation", 2);
    let mut observed = Vec::new();
    let mut note = None;
    while observed.len() < 2 {
        check_interrupt()?;
        let mut sandbox = Sandbox::prepare(ctx, lane, next(), argv.clone())?;
        let run = sandbox.run_foreground(false);
        sandbox.remove()?;
        let stdout = match run {
            Ok((_, stdout, _)) => stdout,
            // Where the limit applies to the whole sandbox (gVisor's Sentry, a VM's guest),
            // exceeding it can end the sandbox rather than the probe's allocating child: try
            // once more without the allocation test, and say so.
            Err(error) if note.is_none() && observed.is_empty() => {
                note = Some(format!(
                    "{}: the isolation probe failed with its {allocate_mib} MiB allocation \
                     test ({error}); it ran again without it, so the memory-limit row is not \
                     tested",
                    lane.id
                ));
                argv = in_sandbox(isolation_args(Some(me), None));
                continue;
            }
            Err(error) => return Err(error),
        };
        observed.push(parse_observations(&stdout)?);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let sibling = observed[1].identity.ok().map(|identity| SiblingIdentity {
        boot_id: observed[1].kernel.ok().and_then(|k| k.boot_id.clone()),
        machine_id: identity.machine_id.clone(),
    });
    let configured = crate::spec::capabilities(&ctx.options.cap_add, &[])?
        .iter()
        .filter_map(|cap| serde_json::to_value(cap).ok()?.as_str().map(str::to_string))
        .collect();
    let expect = Expectation {
        memory_limit_bytes: Some(limit),
        pids_limit: Some(ctx.options.pids_limit),
        configured_capabilities: Some(configured),
        host_process: HostProcess::of(me),
        host_paths: vec![
            ctx.workspace.dir().display().to_string(),
            ctx.store.root().display().to_string(),
        ],
        siblings: sibling.into_iter().collect(),
    };
    Ok((assess(&observed[0], &ctx.host, &expect), note))
}

/// The density ladder: idle sandboxes at each step, memory per sandbox and start latencies.
/// Returns the series and the phase times of every launch.
fn density(
    ctx: &Context,
    lane: &Lane,
    idle_argv: &[String],
    next: &mut impl FnMut() -> u32,
) -> Result<(DensitySeries, Vec<(Phase, Duration)>), OrchestrateError> {
    let steps = ladder(ctx.options.density);
    let progress = bar(ctx, lane, "density", u64::from(ctx.options.density));
    let mut running: Vec<Sandbox> = Vec::new();
    let mut points = Vec::new();
    let mut phase_samples = Vec::new();
    let mut attempted = 0u32;
    for step in steps {
        let mut latencies = Vec::new();
        let mut failures = 0;
        while attempted < step {
            check_interrupt()?;
            attempted += 1;
            let mut sandbox = Sandbox::prepare(ctx, lane, next(), idle_argv.to_vec())?;
            match sandbox.start_idle() {
                Ok(started) => {
                    latencies.push(start_of(ctx, &started).0);
                    phase_samples.extend(started.phases);
                    running.push(sandbox);
                }
                Err(error) => {
                    tracing::warn!("{}: density sandbox failed: {error}", lane.id);
                    failures += 1;
                }
            }
            progress.inc(1);
        }
        let usage = measure_all(&running)?;
        let alive = running.len().max(1) as u64;
        points.push(DensityPoint {
            sandboxes: running.len() as u32,
            pss_per_sandbox_bytes: usage.pss_bytes / alive,
            uss_per_sandbox_bytes: usage.uss_bytes / alive,
            start_latency: Distribution::from_durations(&latencies),
            failures,
        });
        if latencies.is_empty() {
            // Nothing more starts: stop climbing.
            break;
        }
    }
    progress.finish_and_clear();
    let stopping = bar(ctx, lane, "stopping", running.len() as u64);
    for sandbox in running {
        sandbox.remove()?;
        stopping.inc(1);
    }
    stopping.finish_and_clear();
    Ok((
        DensitySeries {
            column: lane.id.clone(),
            points,
        },
        phase_samples,
    ))
}

/// PSS/USS of the host processes of all `sandboxes` together (each process once). A process
/// that exits while being read (a runtime helper) makes it measure again.
fn measure_all(sandboxes: &[Sandbox]) -> Result<MemoryUsage, OrchestrateError> {
    let mut attempt = 0;
    loop {
        let mut pids = Vec::new();
        for sandbox in sandboxes {
            pids.extend(sandbox.host_processes()?);
        }
        pids.sort_unstable();
        pids.dedup();
        match memory_usage(&pids) {
            Ok(usage) => return Ok(usage),
            Err(error) if attempt >= 2 => return Err(error.into()),
            Err(_) => attempt += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_climbs_to_k() {
        assert_eq!(ladder(0), Vec::<u32>::new());
        assert_eq!(ladder(1), [1]);
        assert_eq!(ladder(3), [1, 3]);
        assert_eq!(ladder(10), [1, 10]);
        assert_eq!(ladder(120), [1, 10, 50, 100, 120]);
        assert_eq!(ladder(1000), [1, 10, 50, 100, 200, 500, 1000]);
    }

    #[test]
    fn vm_columns_explain_pvm_and_missing_kvm() {
        assert!(
            vm_unavailable(KvmKind::Pvm)
                .unwrap()
                .contains("--bin kvm-compare -- IMAGE")
        );
        assert!(vm_unavailable(KvmKind::None).unwrap().contains("/dev/kvm"));
        assert_eq!(vm_unavailable(KvmKind::Hardware), None);
        assert_eq!(vm_unavailable(KvmKind::Emulated), None);
    }
}
