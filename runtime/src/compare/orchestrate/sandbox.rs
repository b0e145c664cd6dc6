//! Sandboxes of a compare run: a private work directory, one bundle per sandbox (the image's
//! root filesystem from the store, the probe bind-mounted in, the configured limits), and drop
//! guards that leave nothing behind: no processes, mounts, cgroups, runtime state or files.

use std::path::{Path, PathBuf};
use std::process::ChildStdout;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxMemoryBuilder, LinuxPidsBuilder, MountBuilder, Spec};

use super::runtime::{Running, log_tail, read_until};
use super::{Context, Lane, Launcher, OrchestrateError};
use crate::backend::ISOLATION_ANNOTATION;
use crate::compare::memory;
use crate::compare::probe::IN_SANDBOX_PATH;
use crate::compare::report::Phase;
use crate::compare::timing::{LaunchClock, vm_phases};
use crate::image::store::{Image, ImageStore};
use crate::vm::phases::BootPhases;
use twinbox_probe::StartMarker;

/// The probe's exit status when it cannot exec the workload (as a shell's).
const PROBE_EXEC_FAILED: i32 = 127;

/// How long a sandbox may take to reach its workload.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The directory all sandboxes of one compare run live in, and the cgroup parent they share.
/// Dropping it removes the runtimes' state directories, the cgroup parents and the directory
/// itself (after every [`Sandbox`] is gone).
pub struct Workspace {
    dir: PathBuf,
    /// `linux.cgroupsPath` parent of every sandbox: `/twinbox-compare-<pid>`.
    pub cgroup_parent: String,
}

impl Workspace {
    /// Creates the work directory `twinbox-compare-<pid>` under `parent` (default `/run`).
    pub fn create(parent: Option<&Path>) -> Result<Workspace, OrchestrateError> {
        let pid = std::process::id();
        let dir = parent
            .unwrap_or(Path::new("/run"))
            .join(format!("twinbox-compare-{pid}"));
        std::fs::create_dir_all(&dir).map_err(|e| OrchestrateError::io(&dir, e))?;
        Ok(Workspace {
            dir,
            cgroup_parent: format!("/twinbox-compare-{pid}"),
        })
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A runtime's private state directory (created).
    pub fn state_root(&self, lane_id: &str) -> Result<PathBuf, OrchestrateError> {
        let path = self.dir.join("state").join(lane_id);
        std::fs::create_dir_all(&path).map_err(|e| OrchestrateError::io(&path, e))?;
        Ok(path)
    }

    /// A directory in the workspace holding a copy of `probe` under the probe's in-sandbox
    /// name, and nothing else: what the sandboxes bind-mount.
    pub fn probe_dir(&self, probe: &Path) -> Result<PathBuf, OrchestrateError> {
        let dir = self.dir.join("probe");
        std::fs::create_dir_all(&dir).map_err(|e| OrchestrateError::io(&dir, e))?;
        let copy = dir.join(probe_file_name());
        std::fs::copy(probe, &copy).map_err(|e| OrchestrateError::io(&copy, e))?;
        Ok(dir)
    }

    /// The cgroup directories a sandbox cgroup parent may have left, on v1 and v2.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs(&self.cgroup_parent)
    }
}

/// `parent` under every mounted cgroup hierarchy (v1 controllers and the v2 tree).
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let relative = parent.trim_start_matches('/');
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(relative)];
    for entry in entries.filter_map(Result::ok) {
        dirs.push(entry.path().join(relative));
    }
    dirs.retain(|dir| dir.is_dir());
    dirs
}

/// Removes a cgroup tree bottom-up (cgroup directories hold only control files, removed by
/// `rmdir`). Errors are ignored: a cgroup still in use stays, and the leak check reports it.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Workspace {
    fn drop(&mut self) {
        for dir in self.cgroup_dirs() {
            remove_cgroup_tree(&dir);
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove {}: {error}", self.dir.display());
        }
    }
}

/// One sandbox: its root filesystem in the store, its bundle, and (once created) its runtime
/// state; or, in the QEMU column, its initramfs and its QEMU process. Dropping it deletes
/// everything it made, in reverse order.
pub struct Sandbox<'a> {
    lane: &'a Lane,
    store: &'a ImageStore,
    /// The container id (unique per compare run).
    pub id: String,
    /// The bundle directory (the QEMU column's per-sandbox directory).
    bundle: PathBuf,
    /// `linux.cgroupsPath` of the sandbox.
    cgroup: String,
    rootfs_prepared: bool,
    created: bool,
    /// The QEMU process of an idle QEMU sandbox (killed on removal).
    vm_process: Option<Running>,
}

/// A started sandbox's first moments, as measured.
pub struct Started {
    /// The clocks at launch.
    pub launch: LaunchClock,
    /// Launch to the end of each start phase, for create/start launches: container setup
    /// (`create` returning), or a VM's phases as its `state` reports them.
    pub phases: Vec<(Phase, Duration)>,
    /// The marker the probe printed and when the host read it.
    pub marker: StartMarker,
    /// When the marker line was read.
    pub read_at: Instant,
}

/// The marker line, once `output` holds a complete one.
fn marker_in(output: &[u8]) -> Option<StartMarker> {
    let text = String::from_utf8_lossy(output);
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    StartMarker::find_in(complete)
}

impl<'a> Sandbox<'a> {
    /// Prepares a sandbox of `lane` running `argv` (a path inside the sandbox first): root
    /// filesystem, bundle and config.json (for QEMU: the initramfs). Nothing runs yet.
    pub fn prepare(
        ctx: &'a Context,
        lane: &'a Lane,
        serial: u32,
        argv: Vec<String>,
    ) -> Result<Sandbox<'a>, OrchestrateError> {
        let id = format!("tbc{}-{}-{serial}", std::process::id(), lane.id);
        let bundle = ctx.workspace.dir().join("bundles").join(&id);
        let mut sandbox = Sandbox {
            lane,
            store: &ctx.store,
            cgroup: format!("{}/{id}", ctx.workspace.cgroup_parent),
            id,
            bundle,
            rootfs_prepared: false,
            created: false,
            vm_process: None,
        };
        std::fs::create_dir_all(&sandbox.bundle)
            .map_err(|e| OrchestrateError::io(&sandbox.bundle, e))?;
        if let Launcher::Qemu(qemu) = &lane.launcher {
            qemu.prepare(&sandbox.bundle, argv, &sandbox.id)?;
            return Ok(sandbox);
        }
        let rootfs = ctx.store.prepare_rootfs(&sandbox.id, &ctx.image)?;
        sandbox.rootfs_prepared = true;
        let spec = bundle_spec(
            ctx,
            lane.vm,
            &sandbox.id,
            &sandbox.cgroup,
            &rootfs.path,
            argv,
        )?;
        let config = sandbox.bundle.join("config.json");
        spec.save(&config)
            .map_err(|e| OrchestrateError::io(&config, std::io::Error::other(e.to_string())))?;
        Ok(sandbox)
    }

    fn log(&self) -> PathBuf {
        self.bundle.join("runtime.log")
    }

    /// Starts the sandbox's workload in the foreground: `run` of an OCI runtime, or a QEMU
    /// boot (whose console is its stdout).
    fn spawn_foreground(&self) -> Result<Running, OrchestrateError> {
        match &self.lane.launcher {
            Launcher::Oci(runtime) => runtime.spawn_run(&self.bundle, &self.id, &self.log()),
            Launcher::Qemu(qemu) => qemu.spawn(&self.bundle, &self.log()),
        }
    }

    /// Runs the workload in the foreground (`run`): returns the marker (if the workload
    /// printed one), stdout, and the launch-to-exit time. The runtime deletes the sandbox.
    pub fn run_foreground(
        &mut self,
        want_marker: bool,
    ) -> Result<(Option<Started>, String, Duration), OrchestrateError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let launch = LaunchClock::now();
        self.created = true;
        let mut running: Running = self.spawn_foreground()?;
        let lane = self.lane;
        let fail = move |message: String| lane.error("run", message);
        let mut started = None;
        if want_marker {
            let read_at = running
                .read_until(deadline, |out| marker_in(out).is_some())
                .map_err(fail)?;
            if let (Some(read_at), Some(marker)) = (read_at, marker_in(&running.output)) {
                started = Some(Started {
                    launch,
                    phases: Vec::new(),
                    marker,
                    read_at,
                });
            }
        }
        running.read_until(deadline, |_| false).map_err(fail)?;
        let stdout = String::from_utf8_lossy(&running.output).into_owned();
        let mut status = running.finish(deadline).map_err(fail)?;
        let exited = launch.instant.elapsed();
        if matches!(lane.launcher, Launcher::Qemu(_)) {
            status = super::qemu::workload_status(&stdout, status);
        }
        // A workload that started may exit with any status (`-- sh -c 'exit 3'` is a fine
        // workload to time); 127 is the probe failing to exec it.
        let workload_ran = started.is_some() && status.code() != Some(PROBE_EXEC_FAILED);
        if !status.success() && !workload_ran {
            return Err(fail(format!("{status}: {}", self.failure_output(&stdout))));
        }
        // `run` deleted the sandbox.
        self.created = false;
        if want_marker && started.is_none() {
            return Err(fail(format!(
                "the workload exited without the probe's start marker (stdout: {:?}; log: {})",
                tail_chars(&stdout, 300),
                log_tail(&self.log())
            )));
        }
        Ok((started, stdout, exited))
    }

    /// What explains a failed run: the runtime's log, and for QEMU the end of the console.
    fn failure_output(&self, stdout: &str) -> String {
        match &self.lane.launcher {
            Launcher::Oci(_) => log_tail(&self.log()),
            Launcher::Qemu(_) => format!(
                "{} (console: {:?})",
                log_tail(&self.log()),
                tail_chars(stdout, 300)
            ),
        }
    }

    /// Starts an idle sandbox with `create` + `start` (QEMU: boots it) and waits for its
    /// start marker.
    pub fn start_idle(&mut self) -> Result<Started, OrchestrateError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let launch = LaunchClock::now();
        let runtime = match &self.lane.launcher {
            Launcher::Oci(runtime) => runtime,
            Launcher::Qemu(qemu) => {
                let running = self
                    .vm_process
                    .insert(qemu.spawn(&self.bundle, &self.log())?);
                let read_at = running
                    .read_until(deadline, |out| marker_in(out).is_some())
                    .map_err(|e| self.lane.error("start", e))?;
                return match (read_at, marker_in(&running.output)) {
                    (Some(read_at), Some(marker)) => Ok(Started {
                        launch,
                        phases: super::qemu::guest_phases(
                            &launch,
                            read_at,
                            &marker,
                            &String::from_utf8_lossy(&running.output),
                        ),
                        marker,
                        read_at,
                    }),
                    _ => {
                        let console = String::from_utf8_lossy(&running.output).into_owned();
                        Err(self.lane.error(
                            "start",
                            format!(
                                "the guest stopped before its start marker ({})",
                                self.failure_output(&console)
                            ),
                        ))
                    }
                };
            }
        };
        self.created = true;
        let mut stdout: ChildStdout = runtime.create(&self.bundle, &self.id, &self.log())?;
        let setup = launch.instant.elapsed();
        runtime.call("start", &["start", self.id.as_str()])?;
        let mut output = Vec::new();
        let read_at = read_until(&mut stdout, &mut output, deadline, |out| {
            marker_in(out).is_some()
        })
        .map_err(|e| runtime.error("start", e))?;
        match (read_at, marker_in(&output)) {
            (Some(read_at), Some(marker)) => {
                // Read after the marker, so the extra `state` call is not part of the start.
                let phases = if self.lane.vm {
                    let state = runtime.state(&self.id)?;
                    let annotations = state["annotations"].as_object().into_iter().flatten();
                    vm_phases(
                        &launch,
                        &BootPhases::from_annotations(
                            annotations.filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))),
                        ),
                    )
                } else {
                    vec![(Phase::ContainerSetup, setup)]
                };
                Ok(Started {
                    launch,
                    phases,
                    marker,
                    read_at,
                })
            }
            _ => Err(runtime.error(
                "start",
                format!(
                    "the sandbox exited before its start marker ({})",
                    log_tail(&self.log())
                ),
            )),
        }
    }

    /// The sandbox's host processes: its init's process tree plus every process in its
    /// cgroup (runsc's gofer, say, is neither the init nor its descendant); for QEMU, the
    /// QEMU process and its children.
    pub fn host_processes(&self) -> Result<Vec<u32>, OrchestrateError> {
        let runtime = match &self.lane.launcher {
            Launcher::Oci(runtime) => runtime,
            Launcher::Qemu(_) => {
                let running = self.vm_process.as_ref().ok_or_else(|| {
                    self.lane
                        .error("state", "the guest is not running".to_string())
                })?;
                return Ok(memory::process_tree(running.pid())?);
            }
        };
        let init = runtime.init_pid(&self.id)?;
        let mut pids = memory::process_tree(init)?;
        for dir in cgroup_dirs(&self.cgroup) {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            pids.extend(
                procs
                    .lines()
                    .filter_map(|line| line.trim().parse::<u32>().ok()),
            );
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// The directories holding what this sandbox adds on disk: its writable layer and bundle
    /// (for QEMU: its initramfs directory; the guest writes only to its RAM).
    pub fn own_disk(&self) -> Vec<PathBuf> {
        match &self.lane.launcher {
            Launcher::Oci(_) => vec![
                self.store.container_dir(&self.id).join("upper"),
                self.bundle.clone(),
            ],
            Launcher::Qemu(_) => vec![self.bundle.clone()],
        }
    }

    /// Deletes the sandbox now (what dropping it does), reporting the first error.
    pub fn remove(mut self) -> Result<(), OrchestrateError> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<(), OrchestrateError> {
        let mut first_error = None;
        // Dropping a running QEMU kills its process group and reaps it.
        drop(self.vm_process.take());
        if std::mem::take(&mut self.created)
            && let Launcher::Oci(runtime) = &self.lane.launcher
            && let Err(error) = runtime.delete(&self.id)
        {
            first_error.get_or_insert(error);
        }
        if std::mem::take(&mut self.rootfs_prepared)
            && let Err(error) = self.store.remove_rootfs(&self.id)
        {
            first_error.get_or_insert(error.into());
        }
        if self.bundle.exists()
            && let Err(error) = std::fs::remove_dir_all(&self.bundle)
        {
            first_error.get_or_insert(OrchestrateError::io(&self.bundle, error));
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.cleanup() {
            tracing::warn!("cleaning up sandbox {}: {error}", self.id);
        }
    }
}

/// The last `n` characters of `text`.
fn tail_chars(text: &str, n: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(n)).collect()
}

/// The probe's file name inside the sandbox (and in the workspace's probe directory).
fn probe_file_name() -> &'static str {
    IN_SANDBOX_PATH
        .rsplit('/')
        .next()
        .unwrap_or(IN_SANDBOX_PATH)
}

/// The runtime spec of one sandbox: the image's, with `argv` as the process, the probe's
/// directory bind-mounted read-only, the configured memory and pids limits, a cgroup under the
/// workspace's parent, and the VM annotation for VM lanes.
fn bundle_spec(
    ctx: &Context,
    vm: bool,
    id: &str,
    cgroup: &str,
    rootfs: &Path,
    argv: Vec<String>,
) -> Result<Spec, OrchestrateError> {
    let mut options = crate::spec::SpecOptions {
        entrypoint: Some(Vec::new()),
        command: argv,
        cap_add: ctx.options.cap_add.clone(),
        hostname: Some(id.to_string()),
        ..Default::default()
    };
    if vm {
        options
            .annotations
            .insert(ISOLATION_ANNOTATION.to_string(), "vm".to_string());
    }
    let mut spec = crate::spec::from_image(&ctx.image_config, rootfs, &options)?;
    let build = |e: oci_spec::OciSpecError| OrchestrateError::Spec(e.to_string());

    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    spec.set_root(Some(root));

    let probe_mount = MountBuilder::default()
        .destination(
            Path::new(IN_SANDBOX_PATH)
                .parent()
                .unwrap_or(Path::new("/")),
        )
        .typ("bind")
        .source(&ctx.probe_dir)
        .options(vec!["bind".into(), "ro".into(), "nosuid".into()])
        .build()
        .map_err(build)?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(probe_mount);
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let limit = ctx.options.memory_limit_bytes as i64;
    resources.set_memory(Some(
        LinuxMemoryBuilder::default()
            .limit(limit)
            .swap(limit)
            .build()
            .map_err(build)?,
    ));
    resources.set_pids(Some(
        LinuxPidsBuilder::default()
            .limit(ctx.options.pids_limit as i64)
            .build()
            .map_err(build)?,
    ));
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(Some(cgroup.into()));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// What the image occupies on disk once, shared by all sandboxes of `lane`: its unpacked
/// layers (for QEMU: the image disk it boots).
pub fn image_dirs(
    store: &ImageStore,
    image: &Image,
    lane: &Lane,
) -> Result<Vec<PathBuf>, OrchestrateError> {
    match &lane.launcher {
        Launcher::Oci(_) => Ok(store.layer_dirs(image)?),
        Launcher::Qemu(qemu) => Ok(qemu.shared_disk()),
    }
}

/// The runtime spec a VM-mode sandbox of the image gets (limits, the image's process
/// settings), resolved against a root filesystem prepared for the call and removed after.
pub fn spec_with_rootfs(ctx: &Context, name: &str) -> Result<Spec, OrchestrateError> {
    let id = format!("tbc{}-{name}", std::process::id());
    let rootfs = ctx.store.prepare_rootfs(&id, &ctx.image)?;
    let spec = bundle_spec(
        ctx,
        true,
        &id,
        &format!("{}/{id}", ctx.workspace.cgroup_parent),
        &rootfs.path,
        vec![IN_SANDBOX_PATH.to_string()],
    );
    let removed = ctx.store.remove_rootfs(&id);
    let spec = spec?;
    removed?;
    Ok(spec)
}
