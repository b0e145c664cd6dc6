//! `twinbox vm boot`: builds a [`vmm::VmConfig`] from the command line and runs the VM.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SigSet, Signal};

use crate::cli::vm::VmBootArgs;

/// Parses `PATH[,ro]`.
fn parse_disk(spec: &str) -> Result<vmm::DiskConfig, String> {
    let (path, read_only) = match spec.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((path, "rw")) => (path, false),
        Some((_, option)) => {
            return Err(format!(
                "unknown disk option `{option}` in `{spec}`; use PATH or PATH,ro"
            ));
        }
        None => (spec, false),
    };
    if path.is_empty() {
        return Err(format!("`{spec}` names no disk image"));
    }
    Ok(vmm::DiskConfig {
        path: PathBuf::from(path),
        read_only,
    })
}

/// Builds the VM configuration from the parsed options.
pub fn vm_config(args: &VmBootArgs) -> Result<vmm::VmConfig, String> {
    let mut config = vmm::VmConfig::new(&args.kernel);
    config.initrd = args.initrd.clone();
    config.cmdline = args.cmdline.clone();
    config.mem_size = args.mem;
    config.vcpus = args.cpus;
    config.disks = args
        .disks
        .iter()
        .map(|spec| parse_disk(spec))
        .collect::<Result<_, _>>()?;
    config.vsock = args.vsock.as_ref().map(|path| vmm::VsockConfig {
        guest_cid: args.vsock_cid,
        uds_path: path.clone(),
    });
    if args.console {
        config.console = vmm::ConsoleConfig::Stdio;
    }
    config.seccomp = !args.no_seccomp;
    Ok(config)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread before the VM is built, so the
/// VMM threads inherit the mask and a signal never kills the process half way (which would
/// leave its sockets behind); [`stop_on_signals`] then turns them into a clean stop.
fn block_stop_signals() -> std::io::Result<SigSet> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block().map_err(std::io::Error::from)?;
    Ok(signals)
}

/// Waits for one of `signals` on a thread of its own and stops the VM; returns the slot
/// that receives the signal number.
fn stop_on_signals(signals: SigSet, handle: vmm::VmHandle) -> std::io::Result<Arc<AtomicI32>> {
    let received = Arc::new(AtomicI32::new(0));
    let slot = received.clone();
    std::thread::Builder::new()
        .name("vm-signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                slot.store(signal as i32, Ordering::SeqCst);
                handle.stop();
            }
        })?;
    Ok(received)
}

/// Runs `twinbox vm boot`; returns the exit code.
pub fn boot(args: &VmBootArgs, debug: bool) -> i32 {
    if debug {
        // A fixed level, not an env filter: compiling filter directives costs about a
        // millisecond, which shows in the VMM's start time.
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    }
    let config = match vm_config(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("twinbox: vm boot: {message}");
            return 2;
        }
    };
    let signals = match block_stop_signals() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("twinbox: vm boot: cannot set up signal handling: {error}");
            return 1;
        }
    };
    let vmm = match vmm::Vmm::build(config) {
        Ok(vmm) => vmm,
        Err(error) => {
            eprintln!("twinbox: vm boot: {error}");
            return 1;
        }
    };
    let signal = match stop_on_signals(signals, vmm.handle()) {
        Ok(slot) => slot,
        Err(error) => {
            eprintln!("twinbox: vm boot: cannot set up signal handling: {error}");
            return 1;
        }
    };
    match vmm.run() {
        Ok(exit) if exit.reason == vmm::ExitReason::Stopped => {
            let signal = signal.load(Ordering::SeqCst);
            eprintln!("twinbox: vm boot: stopped by signal {signal}");
            128 + signal
        }
        Ok(exit) => {
            if debug {
                let boot = match (exit.boot_time, exit.boot_clock) {
                    (Some(time), Some(clock)) => format!(
                        "{:.3} ms (CLOCK_MONOTONIC {} ns)",
                        time.as_secs_f64() * 1e3,
                        clock.as_nanos()
                    ),
                    _ => "not signalled".into(),
                };
                eprintln!(
                    "twinbox: vm boot: guest stopped ({:?}); boot timer: {boot}; ran {:.3} ms",
                    exit.reason,
                    exit.run_time.as_secs_f64() * 1e3
                );
            }
            0
        }
        Err(error) => {
            eprintln!("twinbox: vm boot: {error}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse() {
        assert_eq!(
            parse_disk("/a/b.img,ro").unwrap(),
            vmm::DiskConfig {
                path: "/a/b.img".into(),
                read_only: true
            }
        );
        assert!(!parse_disk("/a/b.img").unwrap().read_only);
        assert!(!parse_disk("/a,b.img,rw").unwrap().read_only);
        assert!(parse_disk("/a/b.img,wat").is_err());
        assert!(parse_disk(",ro").is_err());
    }
}
