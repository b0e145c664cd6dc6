//! A job: files placed into L1, a shell script L1 runs, a timeout; and running it.

use super::{KvmHost, KvmHostError, io_error, tail};
use crate::cpio::CpioWriter;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// L1's init script (see the file for the markers it prints).
const L1_INIT: &str = include_str!("l1-init.sh");
/// Where L1's init finds the KVM (and vhost) modules.
const L1_MODULE_DIR: &str = "/lib/twinbox-l1";
/// The QEMU that runs L1 (from `$PATH`).
const L1_QEMU: &str = "qemu-system-x86_64";
/// L1's CPU: an EPYC with SVM, which TCG emulates well enough for kvm-amd.
const L1_CPU_MODEL: &str = "EPYC,+svm";
/// L1's memory besides the job's files (which L1 holds in RAM twice while unpacking them):
/// room for L1 itself and a few hundred MiB of L2 guest.
const L1_BASE_MEMORY_MIB: u64 = 1024;
/// Time L1 gets to boot and power off, on top of the job's timeout.
const L1_BOOT_ALLOWANCE: Duration = Duration::from_secs(60);
/// How long L1's console may stay silent once its init runs (the init writes a heartbeat
/// every 5 s) before the harness takes L1 for frozen. Emulated SVM under TCG very rarely
/// freezes L1 whole, which would otherwise hold a test until the job's timeout.
const L1_FREEZE_LIMIT: Duration = Duration::from_secs(120);
/// The heartbeat line of L1's init.
const HEARTBEAT: &str = "TWINBOX-L1-ALIVE";
/// Default job timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The host QEMU binary and firmware that `Job::qemu` places into L1, so that L1 can run
/// QEMU microvm guests as a peer VMM.
const QEMU_BINARY: &str = "/usr/bin/qemu-system-x86_64";
const QEMU_FIRMWARE: [&str; 4] = [
    "/usr/share/qemu/qboot.rom",
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/pvh.bin",
];
/// Paths in L1 that the harness itself provides; job files may not replace them.
const RESERVED_L1_PATHS: [&str; 4] = ["/init", "/job/run.sh", "/job/params", "/bin/busybox"];
/// Lines of console or output kept in error messages.
const ERROR_TAIL_LINES: usize = 40;

/// Where a job file's content comes from.
#[derive(Debug, Clone)]
enum Source {
    /// A host file, copied as is.
    Host(PathBuf),
    /// A dynamically linked host program: copied with the shared libraries `ldd` lists, each
    /// at its host path.
    HostWithLibraries(PathBuf),
    /// Bytes made by the caller, with permission bits.
    Data(Vec<u8>, u32),
}

/// Work for one L1 boot. Built with chained calls; nothing is read until [`KvmHost::run`].
#[derive(Debug, Clone)]
pub struct Job {
    script: String,
    files: Vec<(String, Source)>,
    disks: Vec<(PathBuf, bool)>,
    timeout: Duration,
    memory_mib: Option<u64>,
    cpu_model: String,
}

impl Job {
    /// A job running `script` with `/bin/sh` (busybox) in L1, as root, in `/job`, with
    /// `/dev/kvm` present. Its stdout and stderr become [`JobOutput::output`].
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            script: script.into(),
            files: Vec::new(),
            disks: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            memory_mib: None,
            cpu_model: L1_CPU_MODEL.to_string(),
        }
    }

    /// Places the host file `host` at `l1_path` (absolute) in L1, with its permissions.
    /// Everything twinbox builds is static, so this is all its binaries need.
    pub fn file(mut self, host: impl AsRef<Path>, l1_path: &str) -> Self {
        self.files.push((
            l1_path.to_string(),
            Source::Host(host.as_ref().to_path_buf()),
        ));
        self
    }

    /// Places `data` at `l1_path` in L1 with permission bits `mode` (e.g. an L2 initramfs).
    pub fn data(mut self, l1_path: &str, data: Vec<u8>, mode: u32) -> Self {
        self.files
            .push((l1_path.to_string(), Source::Data(data, mode)));
        self
    }

    /// Places a dynamically linked host program at `l1_path`, and its shared libraries (from
    /// `ldd`) at their host paths.
    pub fn program(mut self, host: impl AsRef<Path>, l1_path: &str) -> Self {
        self.files.push((
            l1_path.to_string(),
            Source::HostWithLibraries(host.as_ref().to_path_buf()),
        ));
        self
    }

    /// Places the host's `qemu-system-x86_64` (with libraries) and the firmware QEMU microvm
    /// needs, so the script can boot L2 guests with QEMU (see [`super::QemuMicrovm`]).
    pub fn qemu(self) -> Self {
        QEMU_FIRMWARE
            .iter()
            .fold(self.program(QEMU_BINARY, QEMU_BINARY), |job, firmware| {
                job.file(firmware, firmware)
            })
    }

    /// Attaches the host file `image` to L1 as a virtio-blk disk: the first is `/dev/vda` in
    /// L1, the next `/dev/vdb`, ... For images too large to copy into L1's RAM, and for L2
    /// writes that the test reads back from `image` after the run (`read_only` false).
    pub fn disk(mut self, image: impl AsRef<Path>, read_only: bool) -> Self {
        self.disks.push((image.as_ref().to_path_buf(), read_only));
        self
    }

    /// Kills the script after `timeout` (default 120 s); the run then fails with
    /// [`KvmHostError::ScriptTimeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// L1's memory. Default: 1 GiB plus twice the size of the job's files.
    pub fn memory_mib(mut self, memory_mib: u64) -> Self {
        self.memory_mib = Some(memory_mib);
        self
    }

    /// L1's QEMU CPU model (default `EPYC,+svm`). Without `svm`, L1 has no KVM.
    pub fn cpu_model(mut self, model: &str) -> Self {
        self.cpu_model = model.to_string();
        self
    }
}

/// What a job produced.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// The script's stdout and stderr, interleaved as written (text: carriage returns and
    /// terminal control sequences removed).
    pub output: String,
    /// The script's exit status.
    pub exit_code: i32,
    /// L1's console: its kernel messages and the harness markers.
    pub console: String,
    /// Wall time of the whole L1 run, boot included.
    pub elapsed: Duration,
}

/// The files of one L1 run, in its temporary directory.
struct RunPaths {
    initrd: PathBuf,
    console: PathBuf,
    output: PathBuf,
    qemu_log: PathBuf,
}

impl RunPaths {
    fn in_dir(dir: &Path) -> Self {
        Self {
            initrd: dir.join("l1.cpio"),
            console: dir.join("console"),
            output: dir.join("output"),
            qemu_log: dir.join("qemu.log"),
        }
    }
}

/// Kills and reaps L1's QEMU if the harness returns early (error, panic, timeout).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KvmHost {
    /// Boots L1 with the job's files, runs its script and powers L1 off. A script that exits
    /// non-zero is not an error here (see [`JobOutput::exit_code`]); everything that keeps the
    /// script from running to its end is.
    pub fn run(&self, job: &Job) -> Result<JobOutput, KvmHostError> {
        self.run_watching(job, |_| {})
    }

    /// [`KvmHost::run`], calling `on_line` with each line of the script's output (as
    /// [`JobOutput::output`] will hold it) while the job runs: for progress reports on long
    /// jobs such as benchmarks.
    /// A frozen L1 (see [`KvmHostError::L1Froze`]) is a fault of the emulation, not of the
    /// job: the job then runs once more, and a second freeze is the error.
    pub fn run_watching(
        &self,
        job: &Job,
        mut on_line: impl FnMut(&str),
    ) -> Result<JobOutput, KvmHostError> {
        match self.run_once(job, &mut on_line) {
            Err(error @ KvmHostError::L1Froze { .. }) => {
                eprintln!(
                    "kvm-host: {error}
kvm-host: running the job once more"
                );
                self.run_once(job, &mut on_line)
            }
            other => other,
        }
    }

    fn run_once(
        &self,
        job: &Job,
        on_line: &mut impl FnMut(&str),
    ) -> Result<JobOutput, KvmHostError> {
        let work = tempfile::Builder::new()
            .prefix("twinbox-l1-")
            .tempdir()
            .map_err(io_error("creating a temporary directory".into()))?;
        let paths = RunPaths::in_dir(work.path());
        let files_bytes = self.write_initramfs(job, &paths.initrd)?;
        let memory_mib = job
            .memory_mib
            .unwrap_or(L1_BASE_MEMORY_MIB + 2 * files_bytes.div_ceil(1 << 20));
        let qemu_log = File::create(&paths.qemu_log)
            .map_err(io_error(format!("creating {}", paths.qemu_log.display())))?;
        let qemu_stderr = qemu_log
            .try_clone()
            .map_err(io_error("duplicating QEMU's log file".into()))?;

        let started = Instant::now();
        let child = self
            .l1_command(job, &paths, memory_mib)
            .stdin(Stdio::null())
            .stdout(qemu_log)
            .stderr(qemu_stderr)
            .spawn()
            .map_err(|source| KvmHostError::QemuSpawn {
                qemu: L1_QEMU.to_string(),
                source,
            })?;
        let mut qemu = KillOnDrop(child);
        let limit = job.timeout + L1_BOOT_ALLOWANCE;
        let mut follower = LineFollower::default();
        // Armed once L1's init runs (its heartbeat starts then): booting a large initramfs
        // under TCG may take longer than the freeze limit, in silence.
        let mut console_watch = SilenceWatch::new(started);
        let mut armed = false;
        let mut froze = false;
        let status = loop {
            follower.poll(&paths.output, &mut *on_line);
            match qemu.0.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() >= limit => break None,
                Ok(None) => {
                    let console_len = std::fs::metadata(&paths.console).map_or(0, |m| m.len());
                    let silent = console_watch.silent_for(console_len, Instant::now());
                    if armed && silent >= L1_FREEZE_LIMIT {
                        froze = true;
                        break None;
                    }
                    // The console is read only when it grew, until the init's marker is in.
                    armed = armed
                        || (silent.is_zero()
                            && std::fs::read_to_string(&paths.console)
                                .is_ok_and(|text| text.contains("TWINBOX-L1-UP")));
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(io_error("waiting for L1's QEMU".into())(error)),
            }
        };
        drop(qemu);
        follower.poll(&paths.output, &mut *on_line);

        let read = |path: &Path| {
            std::fs::read(path)
                .map(|bytes| printable(&String::from_utf8_lossy(&bytes)))
                .unwrap_or_default()
        };
        classify(Outcome {
            status: status.map(|s| s.to_string()),
            console: read(&paths.console)
                .lines()
                .filter(|line| *line != HEARTBEAT)
                .map(|line| format!("{line}\n"))
                .collect(),
            output: read(&paths.output),
            froze,
            qemu_log: read(&paths.qemu_log)
                .lines()
                .filter(|line| !line.contains("TCG doesn't support requested feature"))
                .collect::<Vec<_>>()
                .join("\n"),
            limit,
            script_limit: job.timeout,
            elapsed: started.elapsed(),
        })
    }

    /// The QEMU command line of L1: TCG with emulated SVM, one vCPU, the console on the first
    /// serial port and the job's output on the second, the job's disks on virtio.
    fn l1_command(&self, job: &Job, paths: &RunPaths, memory_mib: u64) -> Command {
        let mut command = Command::new(L1_QEMU);
        command
            .args(["-M", "q35", "-accel", "tcg", "-smp", "1"])
            .args(["-cpu", &job.cpu_model, "-m", &memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-serial")
            .arg(format!("file:{}", paths.console.display()))
            .arg("-serial")
            .arg(format!("file:{}", paths.output.display()));
        for (image, read_only) in &job.disks {
            command.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,readonly={}",
                // QEMU's option syntax doubles commas inside values.
                image.display().to_string().replace(',', ",,"),
                if *read_only { "on" } else { "off" }
            ));
        }
        command
            .arg("-kernel")
            .arg(&self.assets().kernel)
            .arg("-initrd")
            .arg(&paths.initrd)
            .args(["-append", "console=ttyS0 quiet reboot=t panic=-1"]);
        command
    }

    /// Writes L1's initramfs (busybox, init, modules, the job) to `path`; returns the size of
    /// the job's files.
    fn write_initramfs(&self, job: &Job, path: &Path) -> Result<u64, KvmHostError> {
        let file = File::create(path).map_err(io_error(format!("creating {}", path.display())))?;
        let mut cpio = CpioWriter::new(BufWriter::new(file));
        cpio.char_device("/dev/console", 0o600, 5, 1)?;
        for dir in ["/proc", "/sys", "/tmp", "/run"] {
            cpio.dir(dir, 0o755)?;
        }
        cpio.host_file("/bin/busybox", Path::new(crate::BUSYBOX))?;
        for applet in
            crate::busybox_applets().map_err(io_error("listing busybox applets".into()))?
        {
            cpio.symlink(&format!("/bin/{applet}"), "busybox")?;
        }
        cpio.file("/init", 0o755, L1_INIT.as_bytes())?;
        for module in &self.assets().modules {
            let name = module.file_name().unwrap_or_default().to_string_lossy();
            cpio.host_file(&format!("{L1_MODULE_DIR}/{name}"), module)?;
        }
        cpio.file(
            "/job/params",
            0o644,
            format!(
                "TWINBOX_TIMEOUT_SECS={}\n",
                job.timeout.as_secs_f64().ceil()
            )
            .as_bytes(),
        )?;
        cpio.file("/job/run.sh", 0o755, job.script.as_bytes())?;

        let mut total = 0;
        let mut placed = std::collections::BTreeSet::new();
        for (l1_path, source) in &job.files {
            if RESERVED_L1_PATHS.contains(&l1_path.trim_end_matches('/'))
                || l1_path.starts_with(L1_MODULE_DIR)
            {
                return Err(KvmHostError::ReservedPath(l1_path.clone()));
            }
            let mut add = |l1_path: &str, host: &Path| -> Result<(), KvmHostError> {
                if placed.insert(l1_path.to_string()) {
                    total += std::fs::metadata(host).map(|m| m.len()).unwrap_or(0);
                    cpio.host_file(l1_path, host)?;
                }
                Ok(())
            };
            match source {
                Source::Host(host) => add(l1_path, host)?,
                Source::HostWithLibraries(host) => {
                    add(l1_path, host)?;
                    for library in shared_libraries(host)? {
                        add(&library.to_string_lossy(), &library)?;
                    }
                }
                Source::Data(data, mode) => {
                    total += data.len() as u64;
                    cpio.file(l1_path, *mode, data)?;
                }
            }
        }
        cpio.finish()?;
        Ok(total)
    }
}

/// A copy of `binary` in `dir` without its debug info (`objcopy --strip-debug`, symbols
/// kept for backtraces), to keep L1's and L2's initramfs small: a debug build of twinbox
/// shrinks from about 60 to 25 MB.
pub fn without_debug_info(binary: &Path, dir: &Path) -> Result<PathBuf, KvmHostError> {
    let name = binary.file_name().unwrap_or_default();
    let copy = dir.join(name);
    let output = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&copy)
        .output()
        .map_err(io_error(format!(
            "running objcopy on {} (install binutils)",
            binary.display()
        )))?;
    if !output.status.success() {
        return Err(io_error(format!("stripping {}", binary.display()))(
            std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_string()),
        ));
    }
    Ok(copy)
}

/// The shared libraries (and loader) a dynamically linked program needs, from `ldd`; none for
/// a static program.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, KvmHostError> {
    let failed = |source| KvmHostError::Io {
        context: format!(
            "listing the shared libraries of {} (ldd)",
            program.display()
        ),
        source,
    };
    let output = Command::new("ldd").arg(program).output().map_err(failed)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(failed(std::io::Error::other(stderr.trim().to_string())));
    }
    parse_ldd(&stdout).map_err(|missing| {
        failed(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("library {missing} not found on the host"),
        ))
    })
}

/// Library paths from `ldd` output; `Err(name)` for a library it could not find.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, target)) if target.trim() == "not found" => {
                return Err(name.trim().to_string());
            }
            Some((_, target)) => target.trim(),
            None => line,
        };
        // "/lib/x86_64-linux-gnu/libz.so.1 (0x...)"; the vDSO has no path.
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// `text` without carriage returns and terminal control sequences (SeaBIOS clears the screen).
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Reads the lines a growing file gains, for [`KvmHost::run_watching`].
#[derive(Default)]
struct LineFollower {
    file: Option<File>,
    partial: Vec<u8>,
}

impl LineFollower {
    /// Passes each complete line added to `path` since the last call to `on_line`.
    fn poll(&mut self, path: &Path, on_line: &mut impl FnMut(&str)) {
        use std::io::Read;
        if self.file.is_none() {
            self.file = File::open(path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if file.read_to_end(&mut self.partial).is_err() {
            return;
        }
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            on_line(&printable(&String::from_utf8_lossy(&line[..end])));
        }
    }
}

/// Everything known about a finished (or killed) L1 run.
/// How long a growing file (L1's console) has not grown.
struct SilenceWatch {
    len: u64,
    since: Instant,
}

impl SilenceWatch {
    fn new(now: Instant) -> Self {
        SilenceWatch { len: 0, since: now }
    }

    /// How long the file has been silent at `now`, given its length `len` then.
    fn silent_for(&mut self, len: u64, now: Instant) -> Duration {
        if len != self.len {
            self.len = len;
            self.since = now;
        }
        now.saturating_duration_since(self.since)
    }
}

struct Outcome {
    /// QEMU's exit status; `None` when the harness killed it (at `limit`, or frozen).
    status: Option<String>,
    /// The harness killed QEMU because L1's console fell silent (no heartbeat).
    froze: bool,
    console: String,
    output: String,
    qemu_log: String,
    limit: Duration,
    script_limit: Duration,
    elapsed: Duration,
}

/// Turns an L1 run into the job's result or the error that explains it.
fn classify(run: Outcome) -> Result<JobOutput, KvmHostError> {
    let has = |marker: &str| run.console.lines().any(|line| line.starts_with(marker));
    let console = tail(&run.console, ERROR_TAIL_LINES);
    let output = tail(&run.output, ERROR_TAIL_LINES);
    if run.froze {
        return Err(KvmHostError::L1Froze {
            after: run.elapsed,
            console,
            output,
        });
    }
    if has("TWINBOX-L1-TIMEOUT") {
        return Err(KvmHostError::ScriptTimeout {
            limit: run.script_limit,
            output,
        });
    }
    let exit_code = run
        .console
        .lines()
        .find_map(|line| line.strip_prefix("TWINBOX-L1-EXIT "))
        .and_then(|code| code.trim().parse::<i32>().ok());
    if let Some(exit_code) = exit_code {
        return Ok(JobOutput {
            output: run.output,
            exit_code,
            console: run.console,
            elapsed: run.elapsed,
        });
    }
    if has("TWINBOX-L1-NO-KVM") {
        return Err(KvmHostError::NoKvmInL1 { console });
    }
    match run.status {
        None => Err(KvmHostError::L1Timeout {
            limit: run.limit,
            console,
            output,
        }),
        Some(status) if !has("TWINBOX-L1-UP") => Err(KvmHostError::L1DidNotBoot {
            status,
            qemu_log: tail(&run.qemu_log, ERROR_TAIL_LINES),
            console,
        }),
        Some(status) => Err(KvmHostError::L1Stopped {
            status,
            console,
            output,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<&str>, console: &str) -> Outcome {
        Outcome {
            froze: false,
            status: status.map(str::to_string),
            console: console.to_string(),
            output: "script output\n".to_string(),
            qemu_log: "qemu: could not load kernel".to_string(),
            limit: Duration::from_secs(70),
            script_limit: Duration::from_secs(10),
            elapsed: Duration::from_secs(3),
        }
    }

    #[test]
    fn exit_marker_gives_the_scripts_status_and_output() {
        let run = classify(outcome(
            Some("exit status: 0"),
            "TWINBOX-L1-UP uptime=1.2\nTWINBOX-L1-EXIT 3\n",
        ))
        .unwrap();
        assert_eq!(run.exit_code, 3);
        assert_eq!(run.output, "script output\n");
    }

    #[test]
    fn each_failure_gets_its_own_error() {
        type IsExpected = fn(&KvmHostError) -> bool;
        let up = "TWINBOX-L1-UP uptime=1\n";
        let cases: [(Option<&str>, String, IsExpected, &str); 5] = [
            (
                Some("exit status: 1"),
                "SeaBIOS\n".into(),
                |e| matches!(e, KvmHostError::L1DidNotBoot { .. }),
                "could not load kernel",
            ),
            (
                Some("exit status: 0"),
                format!("{up}TWINBOX-L1-NO-KVM\n"),
                |e| matches!(e, KvmHostError::NoKvmInL1 { .. }),
                "no /dev/kvm",
            ),
            (
                Some("exit status: 0"),
                format!("{up}TWINBOX-L1-TIMEOUT\nTWINBOX-L1-EXIT 137\n"),
                |e| matches!(e, KvmHostError::ScriptTimeout { .. }),
                "script output",
            ),
            (
                None,
                up.into(),
                |e| matches!(e, KvmHostError::L1Timeout { .. }),
                "did not finish within 70s",
            ),
            (
                Some("exit status: 0"),
                format!("{up}Kernel panic - not syncing\n"),
                |e| matches!(e, KvmHostError::L1Stopped { .. }),
                "Kernel panic",
            ),
        ];
        for (status, console, is_expected, text) in cases {
            let error = classify(outcome(status, &console)).unwrap_err();
            assert!(
                is_expected(&error) && error.to_string().contains(text),
                "{console:?}: {error}"
            );
        }
    }

    #[test]
    fn a_silent_console_is_a_frozen_l1() {
        let frozen = Outcome {
            froze: true,
            ..outcome(None, "TWINBOX-L1-UP uptime=1\n")
        };
        let error = classify(frozen).unwrap_err();
        assert!(matches!(error, KvmHostError::L1Froze { .. }), "{error}");
        assert!(error.to_string().contains("froze"), "{error}");

        let start = Instant::now();
        let mut watch = SilenceWatch::new(start);
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(watch.silent_for(0, at(30)), Duration::from_secs(30));
        assert_eq!(
            watch.silent_for(10, at(40)),
            Duration::ZERO,
            "growth resets"
        );
        assert_eq!(watch.silent_for(10, at(100)), Duration::from_secs(60));
    }

    #[test]
    fn job_files_may_not_replace_the_harness_files() {
        let host = KvmHost {
            assets: crate::kvm_host::L1Assets {
                kernel: PathBuf::from("/nonexistent/vmlinuz"),
                modules: Vec::new(),
                package: "test".into(),
            },
        };
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("l1.cpio");
        for reserved in ["/init", "/job/run.sh", "/lib/twinbox-l1/00-kvm.ko"] {
            let job = Job::new("true").data(reserved, b"x".to_vec(), 0o755);
            let error = host.write_initramfs(&job, &archive).unwrap_err();
            assert!(
                matches!(&error, KvmHostError::ReservedPath(path) if path == reserved),
                "{error}"
            );
        }
        let job = Job::new("true").data("/job/input", vec![0; 3000], 0o644);
        assert_eq!(host.write_initramfs(&job, &archive).unwrap(), 3000);
    }

    #[test]
    fn ldd_output_lists_libraries_and_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert_eq!(
            parse_ldd("\tlibgone.so.2 => not found\n").unwrap_err(),
            "libgone.so.2"
        );
    }

    #[test]
    fn qemu_libraries_resolve_on_this_host() {
        let libraries = shared_libraries(Path::new(QEMU_BINARY)).unwrap();
        assert!(
            libraries
                .iter()
                .any(|l| l.to_string_lossy().contains("libc.so"))
        );
        assert!(libraries.iter().all(|l| l.is_file()));
        assert!(
            shared_libraries(Path::new(crate::BUSYBOX))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_follower_passes_complete_lines_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output");
        let mut follower = LineFollower::default();
        let mut lines = Vec::new();
        follower.poll(&path, &mut |line| lines.push(line.to_string()));
        std::fs::write(&path, "one\r\ntw").unwrap();
        follower.poll(&path, &mut |line| lines.push(line.to_string()));
        assert_eq!(lines, ["one"]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"o\nthree\n").unwrap();
        follower.poll(&path, &mut |line| lines.push(line.to_string()));
        assert_eq!(lines, ["one", "two", "three"]);
    }

    #[test]
    fn printable_drops_terminal_escapes_and_carriage_returns() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\nok\n"),
            "SeaBIOS\nok\n"
        );
    }
}
