//! The container backend: namespaces, cgroups, capabilities and seccomp on the host kernel,
//! set up by [`twinbox_sandbox`].

use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::{Process, Spec};
use twinbox_sandbox::cgroups::Cgroup;
use twinbox_sandbox::launch::{
    ExecSetup, InitOptions, InitSetup, ProcessSetup, SetupObserver, spawn_exec, spawn_init,
};

use crate::backend::{Backend, BackendError, BackendKind, CreateRequest, ExecOptions};
use crate::state::ContainerRecord;

/// How long delete waits for the container's processes to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Containers as namespaced host processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ContainerBackend;

/// The container's cgroup as recorded (None: it has none).
pub(crate) fn cgroup_of(record: &ContainerRecord) -> Result<Option<Cgroup>, BackendError> {
    record
        .cgroup_path
        .as_deref()
        .map(Cgroup::discover)
        .transpose()
        .map_err(BackendError::from)
}

/// The cgroup whose freezer pauses and resumes the container.
fn freezer_cgroup(record: &ContainerRecord, operation: &str) -> Result<Cgroup, BackendError> {
    cgroup_of(record)?.ok_or_else(|| {
        BackendError::Unsupported(format!(
            "{operation} needs the container's cgroup (the freezer), and this container has none"
        ))
    })
}

fn create_cgroup(path: &Path, spec: &Spec) -> Result<Cgroup, BackendError> {
    let cgroup = Cgroup::discover(path)?;
    cgroup.create()?;
    tracing::debug!(path = %path.display(), "cgroup created");
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    if let Some(resources) = resources
        && let Err(err) = cgroup.apply(resources)
    {
        let _ = cgroup.remove();
        return Err(err.into());
    }
    Ok(cgroup)
}

/// Creates the cgroup at `cgroup_path` with the spec's resources and starts the init of
/// `spec` in it (see [`spawn_init`]); on error removes what it made. The VM backend starts
/// its jailed VMM with this too.
pub(crate) fn create_init(
    spec: &Spec,
    rootfs: &Path,
    cgroup_path: Option<&Path>,
    options: InitOptions,
    observer: &mut dyn SetupObserver,
) -> Result<i32, BackendError> {
    let cgroup = cgroup_path
        .map(|path| create_cgroup(path, spec))
        .transpose()?;
    let result = InitSetup::new(spec, rootfs, cgroup.as_ref(), options)
        .and_then(|setup| spawn_init(setup, cgroup.as_ref(), observer));
    match result {
        Ok(pid) => Ok(pid),
        Err(err) => {
            if let Some(cgroup) = &cgroup {
                let _ = cgroup.kill_all(KILL_TIMEOUT);
                let _ = cgroup.remove();
            }
            Err(err.into())
        }
    }
}

impl Backend for ContainerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    fn create(
        &self,
        request: CreateRequest<'_>,
        observer: &mut dyn SetupObserver,
    ) -> Result<i32, BackendError> {
        let options = request.options;
        create_init(
            request.spec,
            request.rootfs,
            request.cgroup_path,
            InitOptions {
                no_pivot: options.no_pivot,
                session_keyring: (!options.no_new_keyring).then(|| format!("_ses.{}", request.id)),
                exec_fifo: Some(request.exec_fifo),
                console_socket: options.console_socket,
                preserve_fds: options.preserve_fds,
                stdio: options.stdio,
            },
            observer,
        )
    }

    fn signal(&self, record: &ContainerRecord, signal: i32, all: bool) -> Result<(), BackendError> {
        if all && let Some(cgroup) = cgroup_of(record)? {
            cgroup.signal_all(signal)?;
            return Ok(());
        }
        // SAFETY: kill(2) with plain integers; the caller checked the pid's start time.
        if unsafe { libc::kill(record.init.pid, signal) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(BackendError::Unsupported(format!(
                    "sending signal {signal} to pid {}: {err}",
                    record.init.pid
                )));
            }
        }
        Ok(())
    }

    fn destroy(&self, record: &ContainerRecord) -> Result<(), BackendError> {
        if record.init.is_alive() {
            // SAFETY: kill(2) of the verified init pid.
            unsafe { libc::kill(record.init.pid, libc::SIGKILL) };
        }
        if let Some(cgroup) = cgroup_of(record)? {
            if cgroup.is_frozen() {
                cgroup.thaw()?;
            }
            cgroup.kill_all(KILL_TIMEOUT)?;
            cgroup.remove()?;
        }
        // Without a cgroup (or a pid namespace) only the init can be waited for.
        let deadline = std::time::Instant::now() + KILL_TIMEOUT;
        while record.init.is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn exec(
        &self,
        record: &ContainerRecord,
        spec: &Spec,
        process: &Process,
        options: ExecOptions,
    ) -> Result<i32, BackendError> {
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        let mut setup = ProcessSetup::new(process, seccomp, options.console_socket)?
            .preserve_fds(options.preserve_fds);
        if let Some(stdio) = options.stdio {
            setup = setup.stdio(stdio);
        }
        let setup = ExecSetup::new(record.init.pid, setup)?;
        let cgroup = cgroup_of(record)?;
        Ok(spawn_exec(setup, cgroup.as_ref())?)
    }

    fn processes(&self, record: &ContainerRecord) -> Result<Vec<i32>, BackendError> {
        match cgroup_of(record)? {
            Some(cgroup) => Ok(cgroup.processes()?),
            None => Ok(if record.init.is_alive() {
                vec![record.init.pid]
            } else {
                Vec::new()
            }),
        }
    }

    fn pause(&self, record: &ContainerRecord) -> Result<(), BackendError> {
        Ok(freezer_cgroup(record, "pause")?.freeze()?)
    }

    fn resume(&self, record: &ContainerRecord) -> Result<(), BackendError> {
        Ok(freezer_cgroup(record, "resume")?.thaw()?)
    }

    fn is_paused(&self, record: &ContainerRecord) -> bool {
        cgroup_of(record)
            .ok()
            .flatten()
            .is_some_and(|c| c.is_frozen())
    }

    fn oom_killed(&self, record: &ContainerRecord) -> bool {
        cgroup_of(record)
            .ok()
            .flatten()
            .and_then(|c| c.oom_kills())
            .is_some_and(|n| n > 0)
    }
}
