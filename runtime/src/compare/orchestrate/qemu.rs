//! The QEMU microvm peer column: QEMU boots the same guest kernel as twinbox's VM mode, with
//! the same image disk (the erofs image the VM backend caches per image, read-only), the same
//! guest RAM and vCPUs and the same workload, so the column differs from `vm` only in the VMM
//! and in what runs as the guest's init.
//!
//! The guest's init is the probe itself ([`twinbox_probe::guest_init`]): a per-sandbox
//! initramfs holds the probe as `/init` and its configuration (the workload's argv and the
//! image's environment, working directory and user). The console is QEMU's stdout, so the
//! start marker and the isolation observations arrive there like a container's stdout; the
//! init prints the workload's exit code as [`GUEST_EXIT_PREFIX`] before it resets the machine
//! (`reboot=t`, `-no-reboot`: QEMU exits). Without a boot timer, the column's VMM start and
//! kernel boot phases are estimated from the guest's boot clock ([`guest_phases`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use twinbox_probe::StartMarker;
use twinbox_probe::guest_init::{self, GUEST_EXIT_PREFIX, GuestInit};

use super::runtime::Running;
use super::{Context, OrchestrateError};
use crate::compare::probe::IN_SANDBOX_PATH;
use crate::compare::report::Phase;
use crate::compare::timing::LaunchClock;
use crate::vm::cpio::CpioWriter;

/// The guest kernel's command line: twinbox's VM command line, with the serial console and a
/// reset by triple fault (QEMU microvm has no keyboard-controller reset without ACPI).
const KERNEL_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 pci=off nomodule quiet";

/// How the QEMU column boots its guests.
#[derive(Debug, Clone)]
pub struct QemuMicrovm {
    program: PathBuf,
    kernel: PathBuf,
    image_disk: PathBuf,
    memory_bytes: u64,
    vcpus: u8,
    probe: PathBuf,
    template: GuestInit,
}

impl QemuMicrovm {
    /// Plans the column: the VM mode's guest kernel, the image's erofs disk (built if not
    /// cached), and the guest RAM, vCPUs and process settings of the VM column's spec.
    pub fn plan(ctx: &Context, program: PathBuf) -> Result<Self, OrchestrateError> {
        let vm_error = |e: crate::vm::VmError| OrchestrateError::Spec(e.to_string());
        let config =
            crate::config::Config::load().map_err(|e| OrchestrateError::Spec(e.to_string()))?;
        let kernel = crate::vm::assets::kernel(&config.vm, &HashMap::new()).map_err(vm_error)?;
        let cache = crate::vm::disk::DiskCache::new(ctx.store.root().join("vm"));
        crate::vm::create_private_dir(cache.root()).map_err(vm_error)?;
        let image_disk = cache
            .image_rootfs(&ctx.store, &ctx.image)
            .map_err(vm_error)?;
        // The VM column's spec, for its limits and the image's process settings.
        let spec = super::sandbox::spec_with_rootfs(ctx, "qemu-microvm-plan")?;
        let memory_bytes = crate::vm::plan::memory(&spec, &config.vm).map_err(vm_error)?;
        let vcpus = crate::vm::plan::vcpus(&spec, &config.vm);
        let process = spec.process().clone().unwrap_or_default();
        let template = GuestInit {
            disk: "/dev/vda".into(),
            fstype: crate::vm::disk::ROOTFS_FSTYPE.into(),
            probe_path: IN_SANDBOX_PATH.into(),
            argv: Vec::new(),
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().display().to_string(),
            uid: process.user().uid(),
            gid: process.user().gid(),
            hostname: String::new(),
        };
        Ok(QemuMicrovm {
            program,
            kernel,
            image_disk,
            memory_bytes,
            vcpus,
            probe: ctx
                .probe_dir
                .join(Path::new(IN_SANDBOX_PATH).file_name().unwrap_or_default()),
            template,
        })
    }

    /// What every sandbox of the column shares on disk: the image disk.
    pub fn shared_disk(&self) -> Vec<PathBuf> {
        vec![self.image_disk.clone()]
    }

    /// Writes the initramfs of one sandbox into `dir`: the probe as `/init` and the
    /// configuration to run `argv` on a guest named `hostname`.
    pub fn prepare(
        &self,
        dir: &Path,
        argv: Vec<String>,
        hostname: &str,
    ) -> Result<(), OrchestrateError> {
        let config = GuestInit {
            argv,
            hostname: hostname.to_string(),
            ..self.template.clone()
        };
        let path = initramfs_path(dir);
        let io = |e: std::io::Error| OrchestrateError::io(&path, e);
        let file = File::create(&path).map_err(io)?;
        let mut cpio = CpioWriter::new(std::io::BufWriter::new(file));
        let json = serde_json::to_vec(&config).map_err(|e| io(std::io::Error::other(e)))?;
        let built = (|| {
            cpio.char_device("/dev/console", 0o600, 5, 1)?;
            cpio.host_file("/init", &self.probe)?;
            cpio.file(guest_init::CONFIG_PATH, 0o644, &json)?;
            cpio.finish()?.flush()?;
            Ok::<(), crate::vm::cpio::CpioError>(())
        })();
        built.map_err(|e| io(std::io::Error::other(e.to_string())))
    }

    /// The QEMU command line booting the sandbox prepared in `dir`.
    pub fn command(&self, dir: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args([
                "-M",
                "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=off",
            ])
            .args(["-enable-kvm", "-cpu", "host"])
            .args(["-smp", &self.vcpus.to_string()])
            .args(["-m", &format!("{}M", self.memory_bytes.div_ceil(1 << 20))])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(initramfs_path(dir))
            .arg("-drive")
            .arg(format!(
                "id=image,file={},format=raw,if=none,readonly=on",
                self.image_disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=image"])
            .args(["-append", KERNEL_CMDLINE]);
        command
    }

    /// Boots the sandbox prepared in `dir`; QEMU's messages go to `log`, the guest console is
    /// the returned process's output. It leads its own process group, as runtimes do here.
    pub fn spawn(&self, dir: &Path, log: &Path) -> Result<Running, OrchestrateError> {
        let log_file = File::create(log).map_err(|e| OrchestrateError::io(log, e))?;
        let mut command = self.command(dir);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .process_group(0);
        let child = command.spawn().map_err(|e| OrchestrateError::Runtime {
            runtime: "qemu-microvm".into(),
            action: "run",
            message: format!("{}: {e}", self.program.display()),
        })?;
        Ok(Running::new(child))
    }
}

/// Launch to the end of the VM phases a QEMU guest lets the host estimate: the guest's boot
/// clock at the start marker (`marker.boottime_ns`) counted back from when the host read the
/// marker gives the first guest entry (VMM start), plus the boot clock at the init's start
/// (the init's console line) gives the kernel's boot. Estimates: the read time includes the
/// console's latency, and the guest's clock starts a little after its first instruction.
pub fn guest_phases(
    launch: &LaunchClock,
    read_at: Instant,
    marker: &StartMarker,
    console: &str,
) -> Vec<(Phase, Duration)> {
    let to_marker = read_at.saturating_duration_since(launch.instant);
    let Some(entered) = to_marker.checked_sub(Duration::from_nanos(marker.boottime_ns)) else {
        return Vec::new();
    };
    let mut phases = vec![(Phase::VmmStart, entered)];
    if let Some(init) = guest_init::init_boottime_ns(console) {
        phases.push((Phase::KernelBoot, entered + Duration::from_nanos(init)));
    }
    phases
}

fn initramfs_path(dir: &Path) -> PathBuf {
    dir.join("initramfs.cpio")
}

/// The workload's exit status as the guest init reported it on the console; QEMU's own
/// status when the guest reported none (it failed before, or QEMU did).
pub fn workload_status(console: &str, qemu: ExitStatus) -> ExitStatus {
    console
        .lines()
        .rev()
        .find_map(|line| line.trim_end().strip_prefix(GUEST_EXIT_PREFIX))
        .and_then(|code| code.trim().parse::<i32>().ok())
        .map_or(qemu, |code| ExitStatus::from_raw((code & 0xff) << 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn microvm(dir: &Path) -> QemuMicrovm {
        let probe = dir.join("probe");
        std::fs::write(&probe, b"\x7fELF probe").unwrap();
        QemuMicrovm {
            program: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinux".into(),
            image_disk: "/cache/images/abc.erofs".into(),
            memory_bytes: (256 << 20) - 1,
            vcpus: 2,
            probe,
            template: GuestInit {
                disk: "/dev/vda".into(),
                fstype: "erofs".into(),
                probe_path: IN_SANDBOX_PATH.into(),
                argv: Vec::new(),
                env: vec!["PATH=/bin".into()],
                cwd: "/srv".into(),
                uid: 65534,
                gid: 65534,
                hostname: String::new(),
            },
        }
    }

    #[test]
    fn command_boots_the_vm_kernel_and_image_disk_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let command = microvm(dir.path()).command(dir.path());
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let after = |flag: &str| {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1].clone()
        };
        assert!(after("-M").starts_with("microvm,"), "{args:?}");
        assert_eq!(after("-smp"), "2");
        assert_eq!(after("-m"), "256M");
        assert_eq!(after("-kernel"), "/k/vmlinux");
        assert_eq!(
            after("-initrd"),
            initramfs_path(dir.path()).display().to_string()
        );
        assert_eq!(
            after("-drive"),
            "id=image,file=/cache/images/abc.erofs,format=raw,if=none,readonly=on"
        );
        assert!(after("-append").contains("reboot=t"));
        assert!(args.iter().any(|a| a == "-no-reboot"));
    }

    #[test]
    fn prepare_writes_an_initramfs_with_the_probe_as_init_and_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = microvm(dir.path());
        let argv = vec![IN_SANDBOX_PATH.to_string(), "idle".to_string()];
        qemu.prepare(dir.path(), argv.clone(), "tbc1-qemu-1")
            .unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let status = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(initramfs_path(dir.path()))
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(out.join("init")).unwrap(), b"\x7fELF probe");
        let config: GuestInit = serde_json::from_slice(
            &std::fs::read(out.join(guest_init::CONFIG_PATH.trim_start_matches('/'))).unwrap(),
        )
        .unwrap();
        assert_eq!(config.argv, argv);
        assert_eq!(config.hostname, "tbc1-qemu-1");
        assert_eq!((config.cwd.as_str(), config.uid), ("/srv", 65534));
    }

    #[test]
    fn guest_phases_count_back_from_the_marker_on_the_guest_clock() {
        let launch = LaunchClock::now();
        let read_at = launch.instant + Duration::from_millis(900);
        let marker = StartMarker {
            boottime_ns: 600_000_000,
            ..StartMarker::now()
        };
        let console = format!("{}450000000\r\n", guest_init::GUEST_INIT_PREFIX);
        assert_eq!(
            guest_phases(&launch, read_at, &marker, &console),
            [
                (Phase::VmmStart, Duration::from_millis(300)),
                (Phase::KernelBoot, Duration::from_millis(750)),
            ]
        );
        assert_eq!(
            guest_phases(&launch, read_at, &marker, "no init line"),
            [(Phase::VmmStart, Duration::from_millis(300))]
        );
        // A guest clock ahead of the host's view gives nothing rather than nonsense.
        let late = StartMarker {
            boottime_ns: 2_000_000_000,
            ..marker
        };
        assert_eq!(guest_phases(&launch, read_at, &late, &console), []);
    }

    #[test]
    fn the_guest_exit_line_gives_the_workload_status() {
        let qemu = ExitStatus::from_raw(0);
        let console = format!("booting\r\nTWINBOX-PROBE-START {{}}\r\n{GUEST_EXIT_PREFIX}3\r\n");
        assert_eq!(workload_status(&console, qemu).code(), Some(3));
        assert_eq!(workload_status("no line\n", qemu).code(), Some(0));
        let failed = ExitStatus::from_raw(1 << 8);
        assert_eq!(
            workload_status(&format!("{GUEST_EXIT_PREFIX}oops\n"), failed).code(),
            Some(1)
        );
    }
}
