//! `twinbox vm boot`: builds a [`vmm::VmConfig`] from the command line and runs the VM.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SigSet, Signal};

use crate::cli::GlobalOpts;
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
    // A restored VM's kernel is in the snapshot's memory.
    let mut config = vmm::VmConfig::new(args.kernel.clone().unwrap_or_default());
    config.initrd = args.initrd.clone();
    config.cmdline = args.cmdline.clone();
    config.mem_size = args.mem;
    config.memory_backing = args.mem_backing.into();
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
    config.snapshot_to = args.snapshot_to.clone();
    config.restore_from = args.restore.clone();
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

/// Tells the person at the terminal (plain text on stderr) and, with `--log FILE`, the log
/// (in `--log-format`) why `vm boot` did not end cleanly.
fn report(global: &GlobalOpts, message: &str) {
    if global.log.is_some() {
        tracing::error!("vm boot: {message}");
    }
    eprintln!("twinbox: vm boot: {message}");
}

/// The line that sums up a clean run: why the guest stopped, the boot-timer figure (VMM
/// start to the guest's boot-timer write, and that moment's CLOCK_MONOTONIC so other
/// processes can relate it to their clocks) and the whole run time.
fn summary(exit: &vmm::VmExit) -> String {
    let boot = match (exit.boot_time, exit.boot_clock) {
        (Some(time), Some(clock)) => format!(
            "{:.3} ms (CLOCK_MONOTONIC {} ns)",
            time.as_secs_f64() * 1e3,
            clock.as_nanos()
        ),
        _ => "not signalled".into(),
    };
    format!(
        "guest stopped ({:?}); boot timer: {boot}; ran {:.3} ms",
        exit.reason,
        exit.run_time.as_secs_f64() * 1e3
    )
}

/// Runs `twinbox vm boot`; returns the exit code. Logging follows the global options
/// (`--log`, `--log-format`, `--debug`, set up by the caller): the VMM's messages and the
/// run's summary go to the log (the summary at info level, so `--log FILE` records it and
/// `--debug` shows it on stderr); failures also go to stderr as plain text.
pub fn boot(global: &GlobalOpts, args: &VmBootArgs) -> i32 {
    let config = match vm_config(args) {
        Ok(config) => config,
        Err(message) => {
            report(global, &message);
            return 2;
        }
    };
    let signals = match block_stop_signals() {
        Ok(signals) => signals,
        Err(error) => {
            report(global, &format!("cannot set up signal handling: {error}"));
            return 1;
        }
    };
    let vmm = match vmm::Vmm::build(config) {
        Ok(vmm) => vmm,
        Err(error) => {
            report(global, &error.to_string());
            return 1;
        }
    };
    let signal = match stop_on_signals(signals, vmm.handle()) {
        Ok(slot) => slot,
        Err(error) => {
            report(global, &format!("cannot set up signal handling: {error}"));
            return 1;
        }
    };
    match vmm.run() {
        Ok(exit) if exit.reason == vmm::ExitReason::Stopped => {
            let signal = signal.load(Ordering::SeqCst);
            report(global, &format!("stopped by signal {signal}"));
            128 + signal
        }
        Ok(exit) => {
            tracing::info!("vm boot: {}", summary(&exit));
            0
        }
        Err(error) => {
            report(global, &error.to_string());
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
