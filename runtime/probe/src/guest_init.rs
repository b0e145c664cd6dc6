//! `twinbox-probe guest-init`: a minimal PID 1 for the guest of a peer VMM (the QEMU microvm
//! column of `twinbox compare`), so that VMM boots the same kernel and image disk as twinbox's
//! VM mode without twinbox's agent.
//!
//! It runs as `/init` of a small initramfs holding only itself and [`CONFIG_PATH`]: it mounts
//! /proc, /sys and /dev, mounts the image disk read-only under a tmpfs overlay (as the agent
//! assembles a VM's root), copies itself to the probe's in-sandbox path, runs the workload in
//! that root with the image's environment, working directory and user, and resets the machine
//! when the workload exits (with `reboot=t` and QEMU's `-no-reboot`, QEMU then exits). The
//! workload's stdout and stderr are the console. The init reports there when it started
//! ([`GUEST_INIT_PREFIX`], the guest's boot clock) and the workload's exit code
//! ([`GUEST_EXIT_PREFIX`]).

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Where the initramfs holds the configuration.
pub const CONFIG_PATH: &str = "/guest-init.json";

/// The console line that reports the workload's exit code (`TWINBOX-GUEST-EXIT 0`).
pub const GUEST_EXIT_PREFIX: &str = "TWINBOX-GUEST-EXIT ";

/// The console line the init prints first: the guest's `CLOCK_BOOTTIME` in ns when the kernel
/// started it (the end of the kernel's boot, as the agent's boot-timer write is for twinbox).
pub const GUEST_INIT_PREFIX: &str = "TWINBOX-GUEST-INIT ";

/// The kernel's boot time from the init's console line, in ns.
pub fn init_boottime_ns(console: &str) -> Option<u64> {
    console
        .lines()
        .find_map(|line| line.trim_end().strip_prefix(GUEST_INIT_PREFIX))
        .and_then(|ns| ns.parse().ok())
}

/// Where the workload's root is assembled.
const IMAGE_DIR: &str = "/image";
const WRITABLE_DIR: &str = "/writable";
const ROOT_DIR: &str = "/root";

/// What the guest init runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestInit {
    /// The image disk (`/dev/vda`).
    pub disk: String,
    /// Its filesystem (`erofs`).
    pub fstype: String,
    /// Where the probe copies itself in the workload's root.
    pub probe_path: String,
    /// The workload (an absolute program path first).
    pub argv: Vec<String>,
    /// Its environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Its working directory.
    pub cwd: String,
    /// Its user and group ids.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// The guest's host name.
    pub hostname: String,
}

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{text:?} contains a NUL byte"))
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    let (source_c, target_c, fstype_c) = (c_string(source)?, c_string(target)?, c_string(fstype)?);
    let data = match fstype {
        "overlay" => Some(c_string(&format!(
            "lowerdir={IMAGE_DIR},upperdir={WRITABLE_DIR}/upper,workdir={WRITABLE_DIR}/work"
        ))?),
        _ => None,
    };
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting {source} ({fstype}) on {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Mounts the kernel filesystems under `root` (`""` for the initramfs itself).
fn mount_api_filesystems(root: &str) -> Result<(), String> {
    let quiet = (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong;
    mount("proc", &format!("{root}/proc"), "proc", quiet)?;
    mount("sysfs", &format!("{root}/sys"), "sysfs", quiet)?;
    mount(
        "devtmpfs",
        &format!("{root}/dev"),
        "devtmpfs",
        libc::MS_NOSUID as _,
    )
}

/// Assembles the workload's root: the image disk read-only under a tmpfs overlay, with the
/// probe at its in-sandbox path.
fn assemble_root(config: &GuestInit) -> Result<(), String> {
    mount(
        &config.disk,
        IMAGE_DIR,
        &config.fstype,
        libc::MS_RDONLY as _,
    )?;
    mount("writable", WRITABLE_DIR, "tmpfs", 0)?;
    for dir in ["upper", "work"] {
        let path = format!("{WRITABLE_DIR}/{dir}");
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {path}: {e}"))?;
    }
    mount("overlay", ROOT_DIR, "overlay", 0)?;
    let probe = format!("{ROOT_DIR}{}", config.probe_path);
    if let Some(parent) = Path::new(&probe).parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {parent:?}: {e}"))?;
    }
    std::fs::copy("/init", &probe).map_err(|e| format!("copying the probe to {probe}: {e}"))?;
    mount_api_filesystems(ROOT_DIR)
}

/// Starts the workload in the assembled root.
fn spawn_workload(config: &GuestInit) -> Result<u32, String> {
    let (program, args) = config
        .argv
        .split_first()
        .ok_or("the workload has no command")?;
    let cwd = c_string(&config.cwd)?;
    let root = c_string(ROOT_DIR)?;
    let (uid, gid) = (config.uid, config.gid);
    let mut command = Command::new(program);
    command.args(args).env_clear();
    for pair in &config.env {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        command.env(key, value);
    }
    // SAFETY: the closure only makes async-signal-safe syscalls on memory it owns.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            // A missing working directory leaves the workload at the root, as runc would
            // have created it: this init keeps that simple.
            let _ = libc::chdir(cwd.as_ptr());
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))
        })
    };
    let child = command
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    Ok(child.id())
}

/// Reaps every child until `workload` exits; returns its exit code.
fn wait_for(workload: u32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            return 255;
        }
        if pid as u32 == workload {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
    }
}

fn setup_and_run() -> Result<i32, String> {
    println!(
        "{GUEST_INIT_PREFIX}{}",
        crate::marker::clock_ns(libc::CLOCK_BOOTTIME)
    );
    mount_api_filesystems("")?;
    let text = std::fs::read(CONFIG_PATH).map_err(|e| format!("reading {CONFIG_PATH}: {e}"))?;
    let config: GuestInit =
        serde_json::from_slice(&text).map_err(|e| format!("parsing {CONFIG_PATH}: {e}"))?;
    // SAFETY: a valid buffer and its length.
    unsafe { libc::sethostname(config.hostname.as_ptr().cast(), config.hostname.len()) };
    assemble_root(&config)?;
    let workload = spawn_workload(&config)?;
    Ok(wait_for(workload))
}

/// PID 1's whole life: set up, run the workload, reset the machine.
pub fn run() -> ! {
    match setup_and_run() {
        Ok(code) => println!("{GUEST_EXIT_PREFIX}{code}"),
        Err(error) => eprintln!("twinbox-probe guest-init: {error}"),
    }
    // SAFETY: sync and reboot take no pointers; as PID 1 reboot does not return on success.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_rejects_unknown_fields() {
        let config = GuestInit {
            disk: "/dev/vda".into(),
            fstype: "erofs".into(),
            probe_path: "/.twinbox/twinbox-probe".into(),
            argv: vec!["/.twinbox/twinbox-probe".into(), "idle".into()],
            env: vec!["PATH=/bin".into(), "GREETING=a=b".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            hostname: "qemu".into(),
        };
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<GuestInit>(&text).unwrap(), config);
        let mut extra: serde_json::Value = serde_json::from_str(&text).unwrap();
        extra["surprise"] = 1.into();
        assert!(serde_json::from_value::<GuestInit>(extra).is_err());
    }

    #[test]
    fn the_init_line_gives_the_kernel_boot_time() {
        let console = format!("[    0.1] booting\r\n{GUEST_INIT_PREFIX}812345678\r\nmore\r\n");
        assert_eq!(init_boottime_ns(&console), Some(812_345_678));
        assert_eq!(init_boottime_ns("nothing\n"), None);
        assert_eq!(
            init_boottime_ns(&format!("{GUEST_INIT_PREFIX}soon\n")),
            None
        );
    }
}
