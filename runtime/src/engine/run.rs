//! `run IMAGE`: resolve the image, reserve the name, build the container's root filesystem in
//! the store (`containers/<id>/rootfs`, the bundle directory) and its runtime spec, create and
//! start it through the lifecycle API, and either wait for it in this process (foreground) or
//! hand it to a monitor (detached).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder, MountBuilder, Spec,
};

use super::options::{CPU_PERIOD_US, MountSource, NetworkMode, Resources, VolumeSpec};
use super::volumes::VolumeStore;
use super::{Engine, EngineError, ExitRecord, annotations, monitor, random_hex};
use crate::backend::{BackendKind, ISOLATION_ANNOTATION};
use crate::image::{Image, ImageStore};
use crate::lifecycle::{ContainerBuilder, forward_signals_to, hold_signals, tty, wait_for_exit};
use crate::spec::{SpecError, SpecOptions, from_image};
use crate::state::rfc3339_now;
use crate::vm::assets::KERNEL_ANNOTATION;

/// Everything `twinbox run IMAGE` was asked for.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The image (name, id or digest).
    pub image: String,
    /// Image config overrides: command, env (complete `KEY=VALUE` entries), user, workdir,
    /// hostname, terminal, read-only root, capabilities, seccomp, rlimits.
    pub spec: SpecOptions,
    /// The container name (generated when None).
    pub name: Option<String>,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// Leave it running in the background under a monitor.
    pub detach: bool,
    /// Keep stdin open.
    pub interactive: bool,
    /// `-v` mounts.
    pub volumes: Vec<VolumeSpec>,
    /// `--tmpfs` mounts: destination and options.
    pub tmpfs: Vec<(String, Vec<String>)>,
    /// cgroup limits.
    pub resources: Resources,
    /// `--network`.
    pub network: NetworkMode,
    /// `--isolation` (None: the default backend).
    pub isolation: Option<BackendKind>,
    /// `--kernel`: the guest kernel of a VM.
    pub kernel: Option<PathBuf>,
    /// `--stop-signal`.
    pub stop_signal: Option<String>,
    /// `--stop-timeout` in seconds.
    pub stop_timeout: Option<u64>,
}

/// How `run` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// A foreground container exited.
    Exited {
        /// Container id.
        id: String,
        /// Its exit code (128+signal when killed).
        code: i32,
        /// The kernel's OOM killer killed one of its processes.
        oom_killed: bool,
    },
    /// A detached container is running under its monitor.
    Detached {
        /// Container id.
        id: String,
    },
}

/// A container being set up: until disarmed, dropping it removes whatever was made (the
/// run-root state if create got that far, the root filesystem, the name, new anonymous
/// volumes).
pub(super) struct Setup<'a> {
    pub(super) engine: &'a Engine,
    pub(super) id: String,
    pub(super) name: String,
    pub(super) bundle: PathBuf,
    anonymous_volumes: Vec<String>,
    armed: bool,
}

impl Setup<'_> {
    /// The container now belongs to its waiter: keep it.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Setup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::debug!(id = %self.id, "run failed: removing what was made");
        if self.engine.run_root.container_dir(&self.id).exists() {
            if let Err(err) = self.engine.remove(&self.id, true, false) {
                tracing::warn!("cleaning up container {}: {err}", self.id);
            }
        } else if let Err(err) = self
            .engine
            .discard_leftovers(&self.id, &self.engine.store_root)
        {
            tracing::warn!("cleaning up container {}: {err}", self.id);
        }
        self.engine.names().release(&self.name, &self.id);
        if !self.anonymous_volumes.is_empty()
            && let Ok(volumes) = VolumeStore::open(&self.engine.store_root)
        {
            for volume in &self.anonymous_volumes {
                let _ = volumes.remove(volume);
            }
        }
    }
}

impl Engine {
    /// Runs `request`: in the foreground it returns when the container has exited (and was
    /// removed with `auto_remove`); detached once it runs under its monitor. On error nothing
    /// of the container remains.
    pub fn run(&self, request: RunRequest) -> Result<RunOutcome, EngineError> {
        if !request.detach {
            hold_signals();
        }
        let store = self.store()?;
        let image = store.resolve(&request.image)?;
        tracing::debug!(image = %image.id, "image resolved");
        self.collect_stale_names();
        let id = random_hex(32);
        let name = self.reserve_name(request.name.as_deref(), &id)?;
        let mut setup = Setup {
            engine: self,
            bundle: store.container_dir(&id),
            id,
            name,
            anonymous_volumes: Vec::new(),
            armed: true,
        };
        let spec = self.prepare(&store, &image, &request, &mut setup)?;
        tracing::debug!(id = %setup.id, "spec ready");
        if request.detach {
            monitor::launch(&mut setup, &request, spec)?;
            Ok(RunOutcome::Detached {
                id: setup.id.clone(),
            })
        } else {
            self.run_foreground(&mut setup, &request, spec)
        }
    }

    fn reserve_name(&self, name: Option<&str>, id: &str) -> Result<String, EngineError> {
        if let Some(name) = name {
            self.names().reserve(name, id)?;
            return Ok(name.to_string());
        }
        let mut attempt = 0;
        loop {
            let name = super::generate_name(attempt);
            match self.names().reserve(&name, id) {
                Err(EngineError::NameInUse { .. }) if attempt < 100 => attempt += 1,
                other => return other.map(|()| name),
            }
        }
    }

    /// Removes what a killed `run` left behind before its container existed: names whose
    /// reserver died without creating the container, with their root filesystems.
    pub(super) fn collect_stale_names(&self) {
        for (name, id) in self.names().stale() {
            tracing::info!("removing {name} ({id}), left behind by a killed twinbox run");
            match self.discard_leftovers(&id, &self.store_root) {
                Ok(()) => self.names().release(&name, &id),
                Err(err) => tracing::warn!("removing {name} ({id}): {err}"),
            }
        }
    }

    /// Builds the container's root filesystem, mounts and spec.
    fn prepare(
        &self,
        store: &ImageStore,
        image: &Image,
        request: &RunRequest,
        setup: &mut Setup<'_>,
    ) -> Result<Spec, EngineError> {
        let volume_store = VolumeStore::open(&self.store_root)?;
        let mut mounts = Vec::new();
        let mut named = Vec::new();
        for volume in &request.volumes {
            let source = match &volume.source {
                MountSource::Bind(path) => path.clone(),
                MountSource::Volume(name) => {
                    named.push(name.clone());
                    volume_store.create(Some(name), false)?.0.mountpoint
                }
                MountSource::Anonymous => {
                    let (created, _) = volume_store.create(None, true)?;
                    setup.anonymous_volumes.push(created.name.clone());
                    named.push(created.name.clone());
                    created.mountpoint
                }
            };
            let mut options = vec!["rbind".to_string(), volume.propagation.clone()];
            if volume.read_only {
                options.push("ro".into());
            }
            mounts.push(mount(&volume.destination, "bind", &source, options)?);
        }
        for (destination, options) in &request.tmpfs {
            mounts.push(mount(
                destination,
                "tmpfs",
                Path::new("tmpfs"),
                options.clone(),
            )?);
        }

        let rootfs = store.prepare_rootfs(&setup.id, image)?;
        tracing::debug!(id = %setup.id, overlay = rootfs.overlay, "root filesystem ready");
        let mut options = request.spec.clone();
        if request.network == NetworkMode::Host && options.hostname.is_none() {
            options.hostname = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok());
        }
        options
            .annotations
            .extend(self.annotations(image, request, setup, &named));
        let mut spec = from_image(&store.config(image)?, &rootfs.path, &options)?;
        if let Some(args) = spec.process().as_ref().and_then(|p| p.args().clone())
            && let Some(annotations) = spec.annotations_mut()
        {
            annotations.insert(
                annotations::COMMAND.into(),
                serde_json::to_string(&args).unwrap_or_default(),
            );
        }
        let cwd = spec.process().as_ref().map(|p| p.cwd().clone());
        if let Some(cwd) = cwd.filter(|c| c != Path::new("/")) {
            // docker creates a missing working directory (owned by root).
            let created = crate::image::fsutil::Root::open(&rootfs.path)
                .and_then(|root| root.mkdir_all(cwd.strip_prefix("/").unwrap_or(&cwd)));
            if let Err(err) = created {
                tracing::debug!("creating the working directory {}: {err}", cwd.display());
            }
        }
        let hostname = spec.hostname().clone().unwrap_or_default();
        let mut all_mounts = spec.mounts().clone().unwrap_or_default();
        all_mounts.extend(etc_files(
            &self.etc_dir(&setup.id),
            &hostname,
            request.network,
            request.spec.read_only,
        )?);
        all_mounts.extend(mounts);
        spec.set_mounts(Some(all_mounts));
        apply_resources(&mut spec, &request.resources)?;
        if request.network == NetworkMode::Host {
            remove_namespace(&mut spec, LinuxNamespaceType::Network);
        }
        Ok(spec)
    }

    fn annotations(
        &self,
        image: &Image,
        request: &RunRequest,
        setup: &Setup<'_>,
        named_volumes: &[String],
    ) -> HashMap<String, String> {
        let store_root = std::path::absolute(&self.store_root).unwrap_or(self.store_root.clone());
        let mut map = HashMap::from([
            (annotations::NAME.to_string(), setup.name.clone()),
            (annotations::IMAGE.to_string(), request.image.clone()),
            (annotations::IMAGE_ID.to_string(), image.id.to_string()),
            (
                annotations::STORE.to_string(),
                store_root.display().to_string(),
            ),
        ]);
        let mut set = |key: &str, value: String| {
            map.insert(key.to_string(), value);
        };
        if request.auto_remove {
            set(annotations::AUTO_REMOVE, "true".into());
        }
        if request.interactive {
            set(annotations::INTERACTIVE, "true".into());
        }
        if let Some(timeout) = request.stop_timeout {
            set(annotations::STOP_TIMEOUT, timeout.to_string());
        }
        if let Some(signal) = &request.stop_signal {
            set(annotations::STOP_SIGNAL, signal.clone());
        }
        if request.detach {
            set(
                annotations::LOG_PATH,
                self.log_path(&setup.id).display().to_string(),
            );
        }
        if let Some(kind) = request.isolation {
            set(ISOLATION_ANNOTATION, kind.to_string());
        }
        if let Some(kernel) = &request.kernel {
            set(KERNEL_ANNOTATION, kernel.display().to_string());
        }
        if !named_volumes.is_empty() {
            set(annotations::VOLUMES, named_volumes.join(","));
        }
        if !setup.anonymous_volumes.is_empty() {
            set(
                annotations::ANONYMOUS_VOLUMES,
                setup.anonymous_volumes.join(","),
            );
        }
        map
    }

    /// The builder of the container `setup` prepared, with its `spec`; with a terminal also
    /// the socket that receives its pty master (see [`receive_pty`]).
    pub(super) fn builder(
        &self,
        setup: &Setup<'_>,
        request: &RunRequest,
        spec: Spec,
    ) -> Result<(ContainerBuilder, Option<UnixStream>), EngineError> {
        let builder = ContainerBuilder::new(self.run_root.clone(), &setup.id, &setup.bundle)
            .spec(spec)
            .isolation(request.isolation)
            .start_on_create(true);
        if !request.spec.terminal {
            return Ok((builder, None));
        }
        let (ours, theirs) = tty::console_pair()
            .map_err(EngineError::io("creating", Path::new("console socket")))?;
        Ok((builder.console_socket_fd(theirs), Some(ours)))
    }

    fn run_foreground(
        &self,
        setup: &mut Setup<'_>,
        request: &RunRequest,
        spec: Spec,
    ) -> Result<RunOutcome, EngineError> {
        let (mut builder, console) = self.builder(setup, request, spec)?;
        if console.is_none() {
            builder = builder.stdio([stdin_for(request.interactive)?, dup_fd(1)?, dup_fd(2)?]);
        }
        let mut container = builder.create()?;
        let pid = container.pid();
        let master = receive_pty(console.as_ref())?;
        container.start()?;
        setup.disarm();
        forward_signals_to(pid);
        tracing::debug!(id = %setup.id, "container started");
        if let Some(master) = &master {
            let _ = tty::relay(master);
        }
        let code = wait_for_exit(pid)
            .map_err(EngineError::io("waiting for", Path::new("the container")))?;
        // The pid is free for reuse now: nothing more is forwarded to it.
        hold_signals();
        tracing::debug!(id = %setup.id, code, "container exited");
        let oom_killed = container.oom_killed();
        self.record_exit(
            &setup.id,
            &ExitRecord {
                exit_code: code,
                finished_at: rfc3339_now(),
                oom_killed,
            },
        )?;
        if request.auto_remove {
            self.remove(&setup.id, true, true)?;
            tracing::debug!(id = %setup.id, "container removed");
        }
        Ok(RunOutcome::Exited {
            id: setup.id.clone(),
            code,
            oom_killed,
        })
    }
}

/// The pty master a container with a terminal sent to `console`.
pub(super) fn receive_pty(console: Option<&UnixStream>) -> Result<Option<OwnedFd>, EngineError> {
    console
        .map(|socket| {
            tty::receive_pty_master(socket).map_err(EngineError::io(
                "receiving the pty from",
                Path::new("the container"),
            ))
        })
        .transpose()
}

/// The container's stdin: ours with `-i`, else /dev/null (as docker).
pub(super) fn stdin_for(interactive: bool) -> Result<OwnedFd, EngineError> {
    if interactive { dup_fd(0) } else { dev_null() }
}

/// /dev/null opened for reading and writing.
pub(super) fn dev_null() -> Result<OwnedFd, EngineError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(EngineError::io("opening", Path::new("/dev/null")))
}

/// A duplicate of one of our fds (close-on-exec).
pub(super) fn dup_fd(fd: i32) -> Result<OwnedFd, EngineError> {
    // SAFETY: fd is one of our standard streams, open for the life of the process.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map_err(EngineError::io(
        "duplicating",
        Path::new(&format!("fd {fd}")),
    ))
}

fn mount(
    destination: &str,
    typ: &str,
    source: &Path,
    options: Vec<String>,
) -> Result<oci_spec::runtime::Mount, EngineError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options)
        .build()
        .map_err(|e| SpecError::Build(e.to_string()).into())
}

/// The files docker gives every container, written into `dir` (in the run root, as podman
/// keeps them) and bind-mounted: /etc/hostname, /etc/hosts (localhost and the hostname on the
/// loopback interface; the host's file with the host's network) and, with the host's
/// network, its /etc/resolv.conf.
fn etc_files(
    dir: &Path,
    hostname: &str,
    network: NetworkMode,
    read_only: bool,
) -> Result<Vec<oci_spec::runtime::Mount>, EngineError> {
    let hosts = match network {
        NetworkMode::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        NetworkMode::None => format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             127.0.1.1\t{hostname}\n"
        ),
    };
    let mut files = vec![("hostname", format!("{hostname}\n")), ("hosts", hosts)];
    if network == NetworkMode::Host
        && let Ok(resolv) = std::fs::read_to_string("/etc/resolv.conf")
    {
        files.push(("resolv.conf", resolv));
    }
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if read_only {
        options.push("ro".into());
    }
    std::fs::create_dir_all(dir).map_err(EngineError::io("creating", dir))?;
    files
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(EngineError::io("writing", &path))?;
            mount(&format!("/etc/{name}"), "bind", &path, options.clone())
        })
        .collect()
}

/// Sets the memory, CPU and pids limits in the spec's resources.
fn apply_resources(spec: &mut Spec, limits: &Resources) -> Result<(), EngineError> {
    if *limits == Resources::default() {
        return Ok(());
    }
    let build = |e: oci_spec::OciSpecError| EngineError::from(SpecError::Build(e.to_string()));
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let resources = linux.resources_mut().get_or_insert_with(Default::default);
    if let Some(bytes) = limits.memory {
        resources.set_memory(Some(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .build()
                .map_err(build)?,
        ));
    }
    if let Some(quota) = limits.cpu_quota {
        resources.set_cpu(Some(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(build)?,
        ));
    }
    if let Some(pids) = limits.pids {
        let limit = if pids <= 0 { -1 } else { pids };
        resources.set_pids(Some(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(build)?,
        ));
    }
    Ok(())
}

fn remove_namespace(spec: &mut Spec, kind: LinuxNamespaceType) {
    if let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        namespaces.retain(|ns| ns.typ() != kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_land_in_the_spec() {
        let mut spec = Spec::default();
        apply_resources(
            &mut spec,
            &Resources {
                memory: Some(64 << 20),
                cpu_quota: Some(50_000),
                pids: Some(0),
            },
        )
        .unwrap();
        let resources = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
        let cpu = resources.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), -1);
    }

    #[test]
    fn host_network_drops_the_network_namespace() {
        let mut spec = Spec::default();
        let before = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .len();
        remove_namespace(&mut spec, LinuxNamespaceType::Network);
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(namespaces.len(), before - 1);
        assert!(
            namespaces
                .iter()
                .all(|ns| ns.typ() != LinuxNamespaceType::Network)
        );
    }
}
