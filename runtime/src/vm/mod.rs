//! The VM backend: every container is a KVM microVM with its own kernel, booted by twinbox's
//! own VMM, with the guest agent as PID 1 (docs/DESIGN.md; docs/protocol.md for the agent).
//!
//! - `create` finds the guest kernel and agent ([`assets`]), gets the root filesystem image
//!   ([`disk`]: one erofs per image, or per bundle content), plans the VM from the spec
//!   ([`plan`]: RAM and vCPUs from the limits, volume disks, small files), and starts the
//!   VM's init — the VMM — in a jail built from the container backend's own isolation
//!   ([`jail`]). The init ([`init`]) boots the guest, has the agent create the workload,
//!   reports back ([`notify`]), and blocks on the exec fifo like a container's init.
//! - `start` releases it through the fifo; the init relays stdio and signals and exits with
//!   the workload's exit code. `kill` signals the init, which forwards the signal.
//! - `exec` starts a relay in the jail ([`exec`]) that runs the process through the agent.
//! - `delete`, `ps`, `pause`/`resume` act on the jail's cgroup like the container backend.

pub mod assets;
pub mod cpio;
pub mod diagnose;
pub mod disk;
pub mod exec;
mod hostio;
pub mod init;
pub mod jail;
pub mod notify;
pub mod phases;
pub mod plan;
pub mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oci_spec::runtime::{Process, ProcessBuilder, Spec, UserBuilder};
use twinbox_protocol::{AGENT_PORT, Connection, Message, REPLY_TIMEOUT};
use twinbox_sandbox::launch::{ExecSetup, InitOptions, ProcessSetup, SetupObserver, spawn_exec};

use crate::backend::{Backend, BackendError, BackendKind, CreateRequest, ExecOptions};
use crate::config::VmStart;
use crate::container::{self, ContainerBackend};
use crate::state::{ContainerRecord, ProcessIdentity};
use notify::{Notice, NoticeListener};

/// The annotations `twinbox run` sets that name the image store holding the container's image
/// and the image's id: a VM's root filesystem disk is built from them.
pub use crate::engine::annotations::{IMAGE_ID as IMAGE_ID_ANNOTATION, STORE as STORE_ANNOTATION};

/// Default seconds the guest agent may take to connect.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the VM backend. Each names the problem and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No usable guest kernel.
    #[error("{0}")]
    Kernel(String),
    /// No usable guest agent.
    #[error("{0}")]
    Agent(String),
    /// This host cannot run the VM (no /dev/kvm, no permission, PVM without a PVM kernel).
    #[error("{0}")]
    Host(String),
    /// A filesystem tool is missing or failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool.
        tool: String,
        /// What happened.
        detail: String,
    },
    /// The container asks for something a VM cannot give it (yet).
    #[error("{0}")]
    Unsupported(String),
    /// A setting in the config file or an annotation is invalid.
    #[error("{0}")]
    Settings(String),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The VM did not come up (with what the guest showed).
    #[error("{0}")]
    Boot(String),
    /// The guest refused or failed the workload (exit code 127/126 for a missing or
    /// non-executable program).
    #[error("{message}")]
    Workload {
        /// The exit code to use.
        code: i32,
        /// What the guest said.
        message: String,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl VmError {
    /// An `Io` error constructor for `map_err`.
    pub fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.to_path_buf();
        move |source| VmError::Io {
            action,
            path,
            source,
        }
    }

    /// For `map_err` on image store calls.
    pub fn image(error: crate::image::ImageError) -> VmError {
        VmError::Image(error)
    }

    /// The exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmError::Workload { code, .. } => *code,
            _ => 1,
        }
    }

    fn from_notice(notice: Notice) -> Result<(), VmError> {
        match notice {
            Notice::Ready => Ok(()),
            Notice::Failed { code, message } if code == 126 || code == 127 => {
                Err(VmError::Workload { code, message })
            }
            Notice::Failed { message, .. } => Err(VmError::Boot(message)),
        }
    }
}

impl From<VmError> for BackendError {
    fn from(error: VmError) -> Self {
        BackendError::Vm(Box::new(error))
    }
}

/// Stack size of the VMM process's threads.
const VMM_THREAD_STACK: usize = 1 << 20;

/// Runs one of the VM backend's own processes (the `twinbox-vmm` binary) from its
/// arguments, `init|exec-relay CONFIG [--debug]`; returns its exit code. It logs into the VM
/// directory.
pub fn vmm_process_main(args: &[std::ffi::OsString]) -> i32 {
    // 1 MiB thread stacks instead of Rust's 2 MiB: a 2 MiB stack that the kernel happens to
    // place on a 2 MiB boundary (right below guest RAM, which is aligned so) is backed by one
    // transparent huge page on its first touch, i.e. 2 MiB of host memory per idle VM for a
    // few KiB of stack (seen in the emulated KVM host's smaps). A smaller stack never holds
    // a huge page; the VMM's threads (vCPUs, devices, relays) use a few KiB of it.
    // SAFETY: no other thread exists yet that could read the environment concurrently.
    unsafe { std::env::set_var("RUST_MIN_STACK", VMM_THREAD_STACK.to_string()) };
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let (action, config, rest) = match args.as_slice() {
        [action, config, rest @ ..] => (*action, Path::new(config), rest),
        _ => {
            eprintln!(
                "twinbox-vmm runs the VM backend's own processes in the VMM's jail; \
                 `twinbox create` and `twinbox exec` start it, not people"
            );
            return 2;
        }
    };
    // A template VM runs outside a jail: its messages go to its caller.
    let log = (action != "template").then_some(Path::new(jail::paths::LOG));
    crate::logging::init_with(log, rest == ["--debug"], false);
    match action {
        "init" => init::main(config),
        "exec-relay" => exec::main(config),
        "template" => template::main(config),
        other => {
            eprintln!("twinbox-vmm: unknown VM process {other:?} (init, exec-relay or template)");
            2
        }
    }
}

/// A suffix that is unique within this host for a while (pid, time and a counter).
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The default image store root (`$TWINBOX_ROOT` or /var/lib/twinbox).
fn default_store_root() -> PathBuf {
    std::env::var_os(crate::commands::ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::image::store::DEFAULT_ROOT))
}

/// The file in the VM directory that names the VM's scratch directory (its own disks).
const SCRATCH_FILE: &str = "scratch";

/// Creates `path` (and its parents) readable by root only.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(VmError::io("creating", path))
}

/// Containers as KVM microVMs.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmBackend;

/// Everything `create` prepared before it starts the VM's init.
struct Prepared {
    jail: Spec,
    boot_timeout: Duration,
}

impl VmBackend {
    /// Finds the assets, builds the disks and writes the init's configuration.
    fn prepare(request: &CreateRequest<'_>) -> Result<Prepared, VmError> {
        let config = crate::config::Config::load().map_err(|e| VmError::Settings(e.to_string()))?;
        let settings = &config.vm;
        let annotations: HashMap<String, String> =
            request.spec.annotations().clone().unwrap_or_default();
        let kernel = assets::kernel(settings, &annotations)?;
        assets::check_host(&kernel)?;
        let agent = assets::agent(settings)?;
        let store_root = annotations
            .get(STORE_ANNOTATION)
            .map(PathBuf::from)
            .unwrap_or_else(default_store_root);
        let cache = disk::DiskCache::new(store_root.join("vm"));
        create_private_dir(cache.root())?;
        let agent_disk = cache.agent_disk(&agent)?;
        let rootfs_image = match annotations.get(IMAGE_ID_ANNOTATION) {
            Some(id) => {
                let store = crate::image::ImageStore::open(&store_root)?;
                let image = store.resolve(id)?;
                cache.image_rootfs(&store, &image)?
            }
            None => cache.dir_rootfs(request.rootfs)?,
        };
        let vm_dir = jail::vm_dir(request.state_dir);
        create_private_dir(&vm_dir)?;
        create_private_dir(&jail::root_dir(request.state_dir))?;
        let scratch = cache
            .root()
            .join("sandboxes")
            .join(assets_key(request.state_dir));
        std::fs::write(
            vm_dir.join(SCRATCH_FILE),
            scratch.as_os_str().as_encoded_bytes(),
        )
        .map_err(VmError::io("writing", &vm_dir))?;
        let plan = plan::build(
            request.spec,
            plan::PlanInputs {
                settings,
                agent_disk: agent_disk.clone(),
                rootfs_image,
                scratch: &scratch,
            },
        )?;
        let boot_timeout = settings
            .boot_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_BOOT_TIMEOUT);
        let template = match template::start_mode(settings, &annotations)? {
            VmStart::Snapshot if template::allowed(&annotations) => {
                match cache.template(&kernel, &agent_disk, &plan, boot_timeout) {
                    Ok(template) => Some(template),
                    Err(error) => {
                        tracing::warn!("{error}; booting the VM instead");
                        None
                    }
                }
            }
            _ => None,
        };
        let init = init::InitConfig {
            kernel: jail::paths::KERNEL.into(),
            cmdline: plan.cmdline.clone(),
            memory: plan.memory,
            vcpus: plan.vcpus,
            disks: plan
                .disks
                .iter()
                .enumerate()
                .map(|(index, disk)| (PathBuf::from(jail::paths::disk(index)), disk.read_only))
                .collect(),
            sync_dirs: plan
                .sync_dirs
                .iter()
                .map(|(index, _)| (*index, PathBuf::from(jail::paths::volume(*index))))
                .collect(),
            request: twinbox_protocol::CreateRequest {
                start: request.options.start_on_create,
                ..plan.request.clone()
            },
            boot_timeout_ms: boot_timeout.as_millis() as u64,
            restore_from: template.as_ref().map(|_| jail::paths::TEMPLATE.into()),
        };
        let text = serde_json::to_vec(&init).map_err(|e| VmError::Settings(e.to_string()))?;
        let config_path = vm_dir.join(init::CONFIG_FILE);
        std::fs::write(&config_path, text).map_err(VmError::io("writing", &config_path))?;
        tracing::debug!(
            memory = plan.memory,
            vcpus = plan.vcpus,
            disks = plan.disks.len(),
            kernel = %kernel.display(),
            "VM planned"
        );
        let jail = jail::spec(&jail::JailInputs {
            plan: &plan,
            vmm: &assets::vmm_binary()?,
            kernel: &kernel,
            template: template.as_deref(),
            state_dir: request.state_dir,
            spec: request.spec,
            debug: tracing::enabled!(tracing::Level::DEBUG),
        })?;
        Ok(Prepared { jail, boot_timeout })
    }

    /// Removes the VM's own disks.
    fn remove_scratch(state_dir: &Path) {
        let marker = jail::vm_dir(state_dir).join(SCRATCH_FILE);
        if let Ok(bytes) = std::fs::read(&marker) {
            let scratch = PathBuf::from(std::ffi::OsString::from(
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
            if let Err(error) = std::fs::remove_dir_all(&scratch)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("removing the VM's disks in {}: {error}", scratch.display());
            }
        }
    }
}

/// What the host side calls itself in its hello.
fn host_software() -> String {
    format!("twinbox {}", env!("CARGO_PKG_VERSION"))
}

/// Opens a request session with the agent of the VM whose directory is `vm_dir` and sends it
/// `request`: `exec`'s relay (in the jail) and signals to every workload process (on the
/// host) both come this way.
fn request_session(
    vm_dir: &Path,
    request: &Message,
) -> Result<Connection<std::os::unix::net::UnixStream>, String> {
    let socket = vm_dir.join(init::VSOCK_SOCKET);
    let stream = twinbox_protocol::transport::hybrid_connect(&socket, AGENT_PORT, REPLY_TIMEOUT)
        .map_err(|e| format!("the VM's agent cannot be reached: {e}"))?;
    let mut conn = Connection::new(stream);
    conn.open(&host_software(), request, REPLY_TIMEOUT)
        .map_err(|e| format!("the VM's agent: {e}"))?;
    Ok(conn)
}

/// A short key for a state directory, naming its scratch directory.
fn assets_key(state_dir: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes())[..12])
}

/// The relay process that runs `exec` in the jail.
fn relay_process(config: &Path, terminal: bool) -> Result<Process, VmError> {
    let debug = tracing::enabled!(tracing::Level::DEBUG);
    let build = |e: oci_spec::OciSpecError| VmError::Settings(format!("the exec relay: {e}"));
    ProcessBuilder::default()
        .terminal(terminal)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(build)?,
        )
        .args(jail::vmm_command(
            debug,
            &["exec-relay", &config.display().to_string()],
        ))
        .env(vec!["PATH=/".to_string()])
        .cwd("/")
        .no_new_privileges(true)
        .capabilities(
            oci_spec::runtime::LinuxCapabilitiesBuilder::default()
                .bounding(oci_spec::runtime::Capabilities::new())
                .effective(oci_spec::runtime::Capabilities::new())
                .permitted(oci_spec::runtime::Capabilities::new())
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()
                .map_err(build)?,
        )
        .build()
        .map_err(build)
}

/// How long `create` waits for the init beyond the boot timeout (creating the workload,
/// the host side's own setup).
const CREATE_MARGIN: Duration = Duration::from_secs(15);

impl Backend for VmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vm
    }

    fn create(
        &self,
        request: CreateRequest<'_>,
        observer: &mut dyn SetupObserver,
    ) -> Result<i32, BackendError> {
        let state_dir = request.state_dir.to_path_buf();
        let prepared = match Self::prepare(&request) {
            Ok(prepared) => prepared,
            Err(error) => {
                Self::remove_scratch(&state_dir);
                return Err(error.into());
            }
        };
        let listener = NoticeListener::bind(&jail::vm_dir(&state_dir).join(init::NOTIFY_SOCKET))?;
        let options = request.options;
        if options.preserve_fds > 0 {
            tracing::warn!(
                "--preserve-fds {}: descriptors cannot be passed into a VM; they are closed",
                options.preserve_fds
            );
        }
        let jail_root = jail::root_dir(&state_dir);
        let pid = container::create_init(
            &prepared.jail,
            &jail_root,
            request.cgroup_path,
            InitOptions {
                no_pivot: options.no_pivot,
                session_keyring: (!options.no_new_keyring).then(|| format!("_ses.{}", request.id)),
                exec_fifo: None,
                console_socket: options.console_socket,
                preserve_fds: 0,
                stdio: options.stdio,
            },
            observer,
        )?;
        let identity = ProcessIdentity::of(pid).unwrap_or(ProcessIdentity { pid, start_time: 0 });
        let notice = listener.wait(
            &identity,
            "the VM's init",
            prepared.boot_timeout + 2 * REPLY_TIMEOUT + CREATE_MARGIN,
        );
        notice
            .and_then(VmError::from_notice)
            .map(|()| pid)
            .map_err(BackendError::from)
    }

    fn signal(&self, record: &ContainerRecord, signal: i32, all: bool) -> Result<(), BackendError> {
        if all && signal != libc::SIGKILL {
            // Every process of the workload: the agent signals its cgroup in the guest.
            let request = Message::Signal { signal, all: true };
            let sent = request_session(&jail::vm_dir(&record.state_dir), &request)
                .map_err(VmError::Boot)
                .and_then(|mut conn| {
                    conn.recv_message(Some(REPLY_TIMEOUT))
                        .map_err(|e| VmError::Boot(format!("signalling the VM's workload: {e}")))
                });
            return match sent {
                Ok(Message::Done) => Ok(()),
                Ok(Message::Error(error)) => Err(VmError::Boot(error.message).into()),
                Ok(other) => {
                    Err(VmError::Boot(format!("the agent answered {}", other.name())).into())
                }
                Err(error) => Err(error.into()),
            };
        }
        // The init forwards signals to the workload; SIGKILL (all or not) ends the VM.
        ContainerBackend.signal(record, signal, all)
    }

    fn destroy(&self, record: &ContainerRecord) -> Result<(), BackendError> {
        let result = ContainerBackend.destroy(record);
        Self::remove_scratch(&record.state_dir);
        result
    }

    fn exec(
        &self,
        record: &ContainerRecord,
        _spec: &Spec,
        process: &Process,
        options: ExecOptions,
    ) -> Result<i32, BackendError> {
        let vm_dir = jail::vm_dir(&record.state_dir);
        let name = format!("exec-{}", unique_suffix());
        let config_path = vm_dir.join(format!("{name}.json"));
        let notify_name = format!("{name}.sock");
        let listener = NoticeListener::bind(&vm_dir.join(&notify_name))?;
        let config = exec::ExecConfig {
            process: process.clone(),
            notify: Path::new(jail::paths::VM_DIR).join(&notify_name),
        };
        let text = serde_json::to_vec(&config).map_err(|e| VmError::Settings(e.to_string()))?;
        std::fs::write(&config_path, text).map_err(VmError::io("writing", &config_path))?;
        let spawned = (|| {
            let relay = relay_process(
                &Path::new(jail::paths::VM_DIR).join(format!("{name}.json")),
                process.terminal().unwrap_or(false),
            )?;
            let seccomp = crate::spec::seccomp::default_profile(&[])
                .map_err(|e| VmError::Settings(e.to_string()))?;
            let mut setup = ProcessSetup::new(&relay, Some(&seccomp), options.console_socket)?;
            if let Some(stdio) = options.stdio {
                setup = setup.stdio(stdio);
            }
            let setup = ExecSetup::new(record.init.pid, setup)?;
            let cgroup = container::cgroup_of(record)?;
            Ok::<i32, BackendError>(spawn_exec(setup, cgroup.as_ref())?)
        })();
        let pid = match spawned {
            Ok(pid) => pid,
            Err(error) => {
                let _ = std::fs::remove_file(&config_path);
                return Err(error);
            }
        };
        let identity = ProcessIdentity::of(pid).unwrap_or(ProcessIdentity { pid, start_time: 0 });
        listener
            .wait(
                &identity,
                "the exec relay",
                2 * REPLY_TIMEOUT + CREATE_MARGIN,
            )
            .and_then(VmError::from_notice)
            .map(|()| pid)
            .map_err(BackendError::from)
    }

    fn processes(&self, record: &ContainerRecord) -> Result<Vec<i32>, BackendError> {
        ContainerBackend.processes(record)
    }

    fn pause(&self, record: &ContainerRecord) -> Result<(), BackendError> {
        ContainerBackend.pause(record)
    }

    fn resume(&self, record: &ContainerRecord) -> Result<(), BackendError> {
        ContainerBackend.resume(record)
    }

    fn is_paused(&self, record: &ContainerRecord) -> bool {
        ContainerBackend.is_paused(record)
    }

    fn oom_killed(&self, record: &ContainerRecord) -> bool {
        ContainerBackend.oom_killed(record)
    }
}
