//! Building and running a microVM: [`Vmm::build`] turns a [`VmConfig`] into a ready VM
//! (memory, devices, kernel, vCPUs); [`Vmm::run`] runs it to the end on threads of its own.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
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
use crate::devices::bus::{Bus, BusError, SharedBusDevice};
use crate::devices::legacy::{
    BootTimer, BootTimes, I8042, I8042_CMDLINE, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE,
    SERIAL_PORT_LEN, SerialConsole, SerialInput,
};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::exit::{ExitReason, StopCause, StopSignal, VmExit};
use crate::loader::{self, LoadError};
use crate::seccomp::{self, Filters, SeccompError};
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

/// A built microVM, ready to run.
pub struct Vmm {
    start: Instant,
    vcpus: Vec<Vcpu>,
    event_manager: EventManager<Subscriber>,
    stop: Arc<StopSignal>,
    boot_times: Arc<BootTimes>,
    filters: Option<Filters>,
    // Dropped after the vCPUs: the VM fd, then the memory it maps.
    _vm: Vm,
    _mem: GuestMemory,
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
        let transport = MmioTransport::new(device.clone(), self.mem.clone());
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_DEVICE_SIZE)?;
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
    /// and sets up the vCPUs. Nothing runs until [`Vmm::run`].
    pub fn build(config: VmConfig) -> Result<Self, VmmError> {
        let start = Instant::now();
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(VmmError::Config(format!(
                "{} vCPUs requested; twinbox supports 1 to {MAX_VCPUS}",
                config.vcpus
            )));
        }
        loader::check_pvm_guest(&config.kernel, vm::host_is_pvm())?;
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
        let mem = create_guest_memory(config.mem_size, config.memory_backing)?;
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
        };
        setup.pio.insert(
            Arc::new(Mutex::new(I8042::new(stop.clone()))),
            I8042_PORT_BASE,
            I8042_PORT_LEN,
        )?;
        cmdline.insert_str(I8042_CMDLINE).map_err(LoadError::from)?;
        attach_console(&mut setup, &config.console, &mut cmdline)?;
        let timer: SharedBusDevice =
            Arc::new(Mutex::new(BootTimer::new(start, boot_times.clone())));
        setup
            .mmio
            .insert(timer, BOOT_TIMER_ADDRESS, MMIO_DEVICE_SIZE)?;
        for disk in &config.disks {
            let block = Block::new(&disk.path, disk.read_only)?;
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
        let kernel = loader::load_kernel(&mem, &config.kernel)?;
        let initrd = config
            .initrd
            .as_deref()
            .map(|path| loader::load_initrd(&mem, path, &kernel))
            .transpose()?;
        let cmdline_size = loader::load_command_line(&mem, &cmdline)?;
        configure_system(
            &mem,
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

        phases.mark("kernel");
        let pio = Arc::new(setup.pio);
        let mmio = Arc::new(setup.mmio);
        let boot = VcpuBoot {
            entry: kernel.entry,
            protocol: kernel.protocol,
            count: config.vcpus,
            resets_by_triple_fault: vcpu::resets_by_triple_fault(&config.cmdline),
        };
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let mut vcpu = Vcpu::new(&vm, index, pio.clone(), mmio.clone(), stop.clone())?;
            vcpu.configure(&vm, &mem, boot)?;
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
            _vm: vm,
            _mem: mem,
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
            _vm,
            _mem,
        } = self;
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
        join_vcpus(vcpu_threads);
        drop(devices);
        let run_time = start.elapsed();
        match stop.cause() {
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

/// Kicks every vCPU thread out of KVM_RUN until all have returned.
fn join_vcpus(threads: Vec<JoinHandle<Vcpu>>) {
    let signal = vcpu::kick_signal();
    while threads.iter().any(|t| !t.is_finished()) {
        for thread in threads.iter().filter(|t| !t.is_finished()) {
            let _ = thread.kill(signal);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for thread in threads {
        let _ = thread.join();
    }
}

/// Adds the serial console when asked for, and points the kernel at it (or tells the kernel
/// there is no UART, which saves probing time).
fn attach_console(
    setup: &mut DeviceSetup<'_>,
    console: &ConsoleConfig,
    cmdline: &mut Cmdline,
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
    let serial = Arc::new(Mutex::new(SerialConsole::new(interrupt, output)));
    setup
        .pio
        .insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
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
