//! Building and running a microVM: [`Vmm::build`] turns a [`VmConfig`] into a ready VM
//! (memory, devices, kernel, vCPUs); [`Vmm::run`] runs it to the end on threads of its own.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::IoEventAddress;
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::layout::*;
use crate::arch::x86_64::{BootInfo, ConfigureError, configure_system};
use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::bus::{Bus, BusError, SharedBusDevice, lock};
use crate::devices::legacy::{
    BootTimer, BootTimes, I8042, I8042_CMDLINE, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE,
    SERIAL_PORT_LEN, SerialConsole, SerialInput, SerialSnapshot,
};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::exit::{ExitReason, StopCause, StopSignal, VmExit};
use crate::loader::{self, LoadError};
use crate::seccomp::{self, Filters, SeccompError};
use crate::snapshot::{self, Layout, SnapshotState};
use crate::vstate::memory::{GuestMemory, MemoryError, create_guest_memory};
use crate::vstate::vcpu::{self, Vcpu, VcpuBoot, VcpuError};
use crate::vstate::vm::{self, Vm, VmError};

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is unusable.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// KVM or VM setup failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initrd or command line loading failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Boot structures could not be written.
    #[error(transparent)]
    Configure(#[from] ConfigureError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A disk could not be attached.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// Device windows collide (a bug).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The seccomp filters could not be set up.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Registering an irqfd or ioeventfd failed.
    #[error("cannot wire {what} into KVM: {source}")]
    Wiring {
        /// What was being wired.
        what: String,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An OS resource (eventfd, epoll, thread, console file) could not be created.
    #[error("cannot create {what}: {source}")]
    Resource {
        /// The resource.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The guest or a device failed while running.
    #[error("the VM stopped with an error: {0}")]
    Runtime(String),
    /// A snapshot could not be taken or restored.
    #[error("VM snapshot {path}: {message}")]
    Snapshot {
        /// The snapshot directory or file.
        path: PathBuf,
        /// What went wrong, and what to do.
        message: String,
    },
}

fn resource(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Resource { what, source }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the event loop when the VM is asked to stop.
struct StopWatcher(Arc<StopSignal>);

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(error) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            tracing::error!("vmm: cannot watch the stop event: {error}");
        }
    }
}

/// A handle to stop a running VM from another thread.
#[derive(Debug, Clone)]
pub struct VmHandle(Arc<StopSignal>);

impl VmHandle {
    /// Asks the VM to stop; [`Vmm::run`] then returns [`ExitReason::Stopped`].
    pub fn stop(&self) {
        self.0.stop(StopCause::Exit(ExitReason::Stopped));
    }
}

/// What the VMM needs to snapshot a VM and to finish restoring one.
struct SnapshotSupport {
    /// Where to write a snapshot the guest asks for.
    to: Option<PathBuf>,
    layout: Layout,
    disk_sectors: Vec<u64>,
    resets_by_triple_fault: bool,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    serial: Option<Arc<Mutex<SerialConsole>>>,
    /// Restored devices whose configuration changed (a disk of another size): they get a
    /// config-change interrupt once the vCPUs run.
    config_changed: Vec<Arc<Mutex<MmioTransport>>>,
}

impl SnapshotSupport {
    /// Writes the snapshot of a VM whose vCPUs and devices have stopped.
    fn write(
        &self,
        dir: &Path,
        vm: &Vm,
        mem: &GuestMemory,
        vcpus: &[Vcpu],
    ) -> Result<(), VmmError> {
        let fail = |message: String| VmmError::Snapshot {
            path: dir.to_path_buf(),
            message: format!("cannot snapshot the VM: {message}"),
        };
        let transports = self
            .transports
            .iter()
            .map(|transport| lock(transport).snapshot())
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        if vcpus.len() != usize::from(self.layout.vcpus) {
            return Err(fail(format!(
                "only {} of {} vCPUs stopped cleanly",
                vcpus.len(),
                self.layout.vcpus
            )));
        }
        let vcpus = vcpus
            .iter()
            .map(|vcpu| vcpu.save_state(vm.msr_indices()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        let state = SnapshotState {
            version: snapshot::FORMAT_VERSION,
            layout: self.layout.clone(),
            disk_sectors: self.disk_sectors.clone(),
            resets_by_triple_fault: self.resets_by_triple_fault,
            vm: vm.save_state().map_err(|e| fail(e.to_string()))?,
            vcpus,
            transports,
            serial: self.serial.as_ref().map(|serial| lock(serial).snapshot()),
        };
        snapshot::write(dir, &state, mem)?;
        tracing::info!("vmm: snapshot written to {}", dir.display());
        Ok(())
    }
}

/// A built microVM, ready to run.
pub struct Vmm {
    start: Instant,
    vcpus: Vec<Vcpu>,
    event_manager: EventManager<Subscriber>,
    stop: Arc<StopSignal>,
    boot_times: Arc<BootTimes>,
    filters: Option<Filters>,
    snapshot: SnapshotSupport,
    // Dropped after the vCPUs: the VM fd, then the memory it maps.
    vm: Vm,
    mem: GuestMemory,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// The devices being assembled for a VM.
struct DeviceSetup<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemory,
    pio: Bus,
    mmio: Bus,
    cmdline: Cmdline,
    subscribers: Vec<Subscriber>,
    virtio_count: u64,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    serial: Option<Arc<Mutex<SerialConsole>>>,
}

impl DeviceSetup<'_> {
    fn add_virtio<D>(&mut self, device: Arc<Mutex<D>>, name: &str) -> Result<(), VmmError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let slot = self.virtio_count;
        let irq = VIRTIO_IRQ_BASE + slot as u32;
        if irq > IRQ_MAX {
            return Err(VmmError::Config(format!(
                "too many virtio devices: at most {} fit",
                IRQ_MAX - VIRTIO_IRQ_BASE + 1
            )));
        }
        let base = VIRTIO_MMIO_START + slot * MMIO_DEVICE_SIZE;
        let wiring = |what: String| move |source| VmmError::Wiring { what, source };
        {
            let locked = crate::devices::bus::lock(&device);
            self.vm
                .fd()
                .register_irqfd(locked.interrupt().event(), irq)
                .map_err(wiring(format!("the {name} interrupt (IRQ {irq})")))?;
            for (queue, event) in locked.queue_events().iter().enumerate() {
                self.vm
                    .fd()
                    .register_ioevent(event, &IoEventAddress::Mmio(base + 0x50), queue as u32)
                    .map_err(wiring(format!("the {name} queue {queue} notification")))?;
            }
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device.clone(),
            self.mem.clone(),
        )));
        self.mmio
            .insert(transport.clone(), base, MMIO_DEVICE_SIZE)?;
        self.transports.push(transport);
        self.cmdline
            .add_virtio_mmio_device(MMIO_DEVICE_SIZE, GuestAddress(base), irq, None)
            .map_err(LoadError::from)?;
        self.subscribers.push(device);
        self.virtio_count += 1;
        Ok(())
    }
}

impl Vmm {
    /// Builds a VM from `config`: opens KVM, creates memory and devices, loads the kernel
    /// (or restores [`VmConfig::restore_from`]) and sets up the vCPUs. Nothing runs until
    /// [`Vmm::run`].
    pub fn build(config: VmConfig) -> Result<Self, VmmError> {
        let start = Instant::now();
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(VmmError::Config(format!(
                "{} vCPUs requested; twinbox supports 1 to {MAX_VCPUS}",
                config.vcpus
            )));
        }
        let layout = Layout::of(&config);
        let restore = match &config.restore_from {
            Some(dir) => Some((dir.as_path(), snapshot::read(dir, &layout)?)),
            None => {
                loader::check_pvm_guest(&config.kernel, vm::host_is_pvm())?;
                None
            }
        };
        let kvm = vm::open_kvm(&config.kvm_device)?;
        let vm = Vm::new(&kvm)?;
        if usize::from(config.vcpus) > vm.max_vcpus() {
            return Err(VmmError::Config(format!(
                "{} vCPUs requested; this host's KVM allows {}",
                config.vcpus,
                vm.max_vcpus()
            )));
        }
        let mut phases = Phases::new(start);
        phases.mark("kvm");
        let mem = match &restore {
            Some((dir, _)) => snapshot::map_memory(dir, config.mem_size)?,
            None => create_guest_memory(config.mem_size, config.memory_backing)?,
        };
        vm.register_memory(&mem)?;
        vm.setup_irqchip()?;

        phases.mark("memory");
        let stop = Arc::new(StopSignal::new().map_err(resource("the stop eventfd"))?);
        let boot_times = Arc::new(BootTimes::default());
        let mut cmdline = loader::parse_command_line(&config.cmdline)?;
        let mut setup = DeviceSetup {
            vm: &vm,
            mem: &mem,
            pio: Bus::new(),
            mmio: Bus::new(),
            cmdline: Cmdline::new(CMDLINE_MAX_SIZE).map_err(LoadError::from)?,
            subscribers: vec![Arc::new(Mutex::new(StopWatcher(stop.clone())))],
            virtio_count: 0,
            transports: Vec::new(),
            serial: None,
        };
        setup.pio.insert(
            Arc::new(Mutex::new(I8042::new(stop.clone()))),
            I8042_PORT_BASE,
            I8042_PORT_LEN,
        )?;
        cmdline.insert_str(I8042_CMDLINE).map_err(LoadError::from)?;
        let saved_serial = restore
            .as_ref()
            .and_then(|(_, state)| state.serial.as_ref());
        attach_console(&mut setup, &config.console, &mut cmdline, saved_serial)?;
        let snapshot_requests = config.snapshot_to.as_ref().map(|_| stop.clone());
        let timer: SharedBusDevice = Arc::new(Mutex::new(BootTimer::new(
            start,
            boot_times.clone(),
            snapshot_requests,
        )));
        setup
            .mmio
            .insert(timer, BOOT_TIMER_ADDRESS, MMIO_DEVICE_SIZE)?;
        let mut disk_sectors = Vec::with_capacity(config.disks.len());
        for disk in &config.disks {
            let block = Block::new(&disk.path, disk.read_only)?;
            disk_sectors.push(block.sectors());
            setup.add_virtio(Arc::new(Mutex::new(block)), "virtio-blk")?;
        }
        if let Some(vsock) = &config.vsock {
            let device = Vsock::new(vsock.guest_cid, &vsock.uds_path)?;
            setup.add_virtio(Arc::new(Mutex::new(device)), "virtio-vsock")?;
        }
        // The user's command line first, then the device entries.
        let device_args = setup.cmdline.as_cstring().map_err(LoadError::from)?;
        let device_args = device_args.to_string_lossy();
        if !device_args.is_empty() {
            cmdline.insert_str(&*device_args).map_err(LoadError::from)?;
        }

        phases.mark("devices");
        let resets_by_triple_fault = match &restore {
            Some((_, state)) => state.resets_by_triple_fault,
            None => vcpu::resets_by_triple_fault(&config.cmdline),
        };
        let mut config_changed = Vec::new();
        let guest_start = match &restore {
            Some((dir, state)) => {
                config_changed = restore_devices(dir, state, &setup, &disk_sectors)?;
                vm.restore_state(&state.vm)?;
                phases.mark("snapshot");
                GuestStart::Restore(state)
            }
            None => {
                let boot = load_guest(&config, &mem, &cmdline, resets_by_triple_fault)?;
                phases.mark("kernel");
                GuestStart::Boot(boot)
            }
        };
        let pio = Arc::new(setup.pio);
        let mmio = Arc::new(setup.mmio);
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let mut vcpu = Vcpu::new(&vm, index, pio.clone(), mmio.clone(), stop.clone())?;
            match &guest_start {
                GuestStart::Boot(boot) => vcpu.configure(&vm, &mem, *boot)?,
                GuestStart::Restore(state) => vcpu.restore_state(
                    &vm,
                    &state.vcpus[usize::from(index)],
                    config.vcpus,
                    resets_by_triple_fault,
                )?,
            }
            vcpus.push(vcpu);
        }

        phases.mark("vcpus");
        let mut event_manager = EventManager::new().map_err(|e| VmmError::Resource {
            what: "the event loop",
            source: std::io::Error::other(e.to_string()),
        })?;
        for subscriber in setup.subscribers {
            event_manager.add_subscriber(subscriber);
        }
        let filters = if config.seccomp {
            seccomp::prepare_process()?;
            Some(seccomp::filters()?)
        } else {
            None
        };
        phases.mark("event loop and seccomp");
        phases.log();
        vcpu::install_kick_handler()?;
        Ok(Self {
            start,
            vcpus,
            event_manager,
            stop,
            boot_times,
            filters,
            snapshot: SnapshotSupport {
                to: config.snapshot_to,
                layout,
                disk_sectors,
                resets_by_triple_fault,
                transports: setup.transports,
                serial: setup.serial,
                config_changed,
            },
            vm,
            mem,
        })
    }

    /// A handle that can stop the VM from any thread.
    pub fn handle(&self) -> VmHandle {
        VmHandle(self.stop.clone())
    }

    /// The VM's boot times (first guest entry, boot-timer marks), readable while it runs.
    pub fn boot_times(&self) -> Arc<BootTimes> {
        self.boot_times.clone()
    }

    /// Runs the VM until the guest reboots, powers off or halts, the owner stops it, or
    /// something fails. The vCPUs and the device event loop run on threads of their own
    /// (each with its seccomp filter); the calling thread only waits, so it may belong to a
    /// process that does other work.
    pub fn run(self) -> Result<VmExit, VmmError> {
        let Vmm {
            start,
            vcpus,
            mut event_manager,
            stop,
            boot_times,
            filters,
            snapshot,
            vm,
            mem,
        } = self;
        for transport in &snapshot.config_changed {
            lock(transport).signal_config_change();
        }
        let spawn_error = resource("a VMM thread");
        let mut vcpu_threads: Vec<JoinHandle<Vcpu>> = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let filter = filters.as_ref().map(|f| f.vcpu.clone());
            let vcpu_stop = stop.clone();
            let first_entry = (vcpu.index() == 0).then(|| boot_times.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index()))
                .spawn(move || {
                    if let Some(filter) = filter
                        && let Err(error) = seccomp::apply(&filter)
                    {
                        vcpu_stop.stop(StopCause::Error(error.to_string()));
                        return vcpu;
                    }
                    if let Some(times) = first_entry {
                        times.mark_entered();
                    }
                    // The vCPU comes back so its fds are closed outside the filtered thread.
                    vcpu.run()
                });
            match thread {
                Ok(handle) => vcpu_threads.push(handle),
                Err(error) => {
                    stop.stop(StopCause::Error(format!(
                        "cannot start a vCPU thread: {error}"
                    )));
                    join_vcpus(vcpu_threads);
                    return Err(spawn_error(error));
                }
            }
        }
        let loop_filter = filters.as_ref().map(|f| f.vmm.clone());
        let loop_stop = stop.clone();
        let event_loop = std::thread::Builder::new()
            .name("vmm".to_string())
            .spawn(move || {
                if let Some(filter) = loop_filter
                    && let Err(error) = seccomp::apply(&filter)
                {
                    loop_stop.stop(StopCause::Error(error.to_string()));
                    return event_manager;
                }
                while !loop_stop.is_stopped() {
                    if let Err(error) = event_manager.run() {
                        if let event_manager::Error::Epoll(ref e) = error
                            && e.errno() == libc::EINTR
                        {
                            continue;
                        }
                        loop_stop.stop(StopCause::Error(format!("event loop failed: {error}")));
                    }
                }
                // Devices and host sockets are dropped by the caller, outside the filter.
                event_manager
            });
        let event_loop = match event_loop {
            Ok(handle) => handle,
            Err(error) => {
                stop.stop(StopCause::Error(format!(
                    "cannot start the event loop: {error}"
                )));
                join_vcpus(vcpu_threads);
                return Err(spawn_error(error));
            }
        };
        let devices = event_loop.join();
        if devices.is_err() {
            stop.stop(StopCause::Error("the device event loop panicked".into()));
        }
        let vcpus = join_vcpus(vcpu_threads);
        drop(devices);
        let cause = stop.cause();
        if cause == Some(StopCause::Exit(ExitReason::Snapshotted)) {
            let Some(dir) = snapshot.to.as_deref() else {
                return Err(VmmError::Runtime(
                    "a snapshot was requested but no snapshot directory is configured".into(),
                ));
            };
            snapshot.write(dir, &vm, &mem, &vcpus)?;
        }
        let run_time = start.elapsed();
        match cause {
            Some(StopCause::Exit(reason)) => Ok(VmExit {
                reason,
                boot_time: boot_times.first().map(|mark| mark.since_start),
                boot_clock: boot_times.first().map(|mark| mark.monotonic),
                run_time,
            }),
            Some(StopCause::Error(message)) => Err(VmmError::Runtime(message)),
            None => Err(VmmError::Runtime(
                "the event loop ended without a stop".into(),
            )),
        }
    }
}

/// How the vCPUs of a new VM start.
enum GuestStart<'a> {
    /// At the kernel's entry point.
    Boot(VcpuBoot),
    /// Where the snapshot left them.
    Restore(&'a SnapshotState),
}

/// Times the steps of [`Vmm::build`] for the debug log.
struct Phases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new(start: Instant) -> Self {
        Self {
            last: start,
            done: Vec::new(),
        }
    }

    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    fn log(&self) {
        let steps: Vec<String> = self
            .done
            .iter()
            .map(|(name, time)| format!("{name} {:.3} ms", time.as_secs_f64() * 1e3))
            .collect();
        tracing::debug!("vmm: built: {}", steps.join(", "));
    }
}

/// Kicks every vCPU thread out of KVM_RUN until all have returned; returns the vCPUs whose
/// threads ended cleanly.
fn join_vcpus(threads: Vec<JoinHandle<Vcpu>>) -> Vec<Vcpu> {
    let signal = vcpu::kick_signal();
    while threads.iter().any(|t| !t.is_finished()) {
        for thread in threads.iter().filter(|t| !t.is_finished()) {
            let _ = thread.kill(signal);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    threads
        .into_iter()
        .filter_map(|thread| thread.join().ok())
        .collect()
}

/// Loads the kernel, initrd and command line and writes the boot structures; returns how
/// the vCPUs start.
fn load_guest(
    config: &VmConfig,
    mem: &GuestMemory,
    cmdline: &Cmdline,
    resets_by_triple_fault: bool,
) -> Result<VcpuBoot, VmmError> {
    let kernel = loader::load_kernel(mem, &config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| loader::load_initrd(mem, path, &kernel))
        .transpose()?;
    let cmdline_size = loader::load_command_line(mem, cmdline)?;
    configure_system(
        mem,
        &BootInfo {
            protocol: kernel.protocol,
            setup_header: kernel.setup_header,
            cmdline_address: CMDLINE_START,
            cmdline_size,
            initrd,
            cpus: config.vcpus,
        },
    )?;
    tracing::debug!(
        "vmm: kernel entry {:#x} ({:?}), command line: {}",
        kernel.entry,
        kernel.protocol,
        cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    Ok(VcpuBoot {
        entry: kernel.entry,
        protocol: kernel.protocol,
        count: config.vcpus,
        resets_by_triple_fault,
    })
}

/// Puts the freshly built virtio devices in their saved state; returns the transports
/// whose disk changed size since the snapshot and whose driver must hear about it.
fn restore_devices(
    dir: &Path,
    state: &SnapshotState,
    setup: &DeviceSetup<'_>,
    disk_sectors: &[u64],
) -> Result<Vec<Arc<Mutex<MmioTransport>>>, VmmError> {
    let fail = |message: String| VmmError::Snapshot {
        path: dir.to_path_buf(),
        message: format!("{message}; {}", snapshot::REBUILD),
    };
    if state.transports.len() != setup.transports.len()
        || state.disk_sectors.len() != disk_sectors.len()
    {
        return Err(fail(format!(
            "it holds {} virtio devices and {} disks, this VM has {} and {}",
            state.transports.len(),
            state.disk_sectors.len(),
            setup.transports.len(),
            disk_sectors.len()
        )));
    }
    for (transport, saved) in setup.transports.iter().zip(&state.transports) {
        lock(transport).restore(saved).map_err(fail)?;
    }
    // Disks come first among the virtio devices.
    let resized = disk_sectors
        .iter()
        .zip(&state.disk_sectors)
        .zip(&setup.transports)
        .filter(|((now, then), transport)| now != then && lock(transport).driver_ok())
        .map(|(_, transport)| transport.clone())
        .collect();
    Ok(resized)
}

/// Adds the serial console when asked for, and points the kernel at it (or tells the kernel
/// there is no UART, which saves probing time).
fn attach_console(
    setup: &mut DeviceSetup<'_>,
    console: &ConsoleConfig,
    cmdline: &mut Cmdline,
    saved: Option<&SerialSnapshot>,
) -> Result<(), VmmError> {
    let has_console_arg = cmdline
        .as_cstring()
        .map(|c| {
            c.to_string_lossy()
                .split(' ')
                .any(|arg| arg.starts_with("console="))
        })
        .unwrap_or(false);
    let output: Box<dyn Write + Send> = match console {
        ConsoleConfig::Off => {
            cmdline
                .insert_str("8250.nr_uarts=0")
                .map_err(LoadError::from)?;
            return Ok(());
        }
        ConsoleConfig::Stdio => Box::new(std::io::stdout()),
        ConsoleConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(resource("the console output file"))?,
        ),
    };
    if !has_console_arg {
        cmdline
            .insert_str("console=ttyS0")
            .map_err(LoadError::from)?;
    }
    let interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(resource("the serial interrupt"))?;
    setup
        .vm
        .fd()
        .register_irqfd(&interrupt, SERIAL_IRQ)
        .map_err(|source| VmmError::Wiring {
            what: "the serial interrupt".into(),
            source,
        })?;
    let serial = match saved {
        Some(state) => {
            SerialConsole::from_snapshot(interrupt, output, state).map_err(|message| {
                VmmError::Config(format!("cannot restore the console: {message}"))
            })?
        }
        None => SerialConsole::new(interrupt, output),
    };
    let serial = Arc::new(Mutex::new(serial));
    setup
        .pio
        .insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
    setup.serial = Some(serial.clone());
    if *console == ConsoleConfig::Stdio {
        let input: OwnedFd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(resource("a handle on stdin"))?;
        setup
            .subscribers
            .push(Arc::new(Mutex::new(SerialInput::new(serial, input))));
    }
    Ok(())
}
