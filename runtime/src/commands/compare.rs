//! `twinbox compare`: options -> [`crate::compare::orchestrate::compare`] -> rendered report.

use crate::cli::GlobalOpts;
use crate::cli::compare::{CompareArgs, CompareFormat, CompareMode, ComparePeer};
use crate::compare::orchestrate::{self, CompareOptions, Mode, OrchestrateError, Peer};
use crate::compare::render::{self, Format};

/// Runs `twinbox compare`; returns the exit code (130 when interrupted).
pub fn run(global: &GlobalOpts, args: CompareArgs) -> i32 {
    match execute(global, args) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("twinbox compare: {error}");
            match error {
                OrchestrateError::Interrupted => 130,
                _ => 1,
            }
        }
    }
}

/// The library options of a command line.
pub fn options(
    global: &GlobalOpts,
    args: &CompareArgs,
) -> Result<CompareOptions, OrchestrateError> {
    let twinbox = std::env::current_exe()
        .map_err(|e| OrchestrateError::Usage(format!("cannot find the twinbox binary: {e}")))?;
    let peers = args.peers.as_ref().map(|peers| {
        peers
            .iter()
            .filter_map(|peer| match peer {
                ComparePeer::Runc => Some(Peer::Runc),
                ComparePeer::Runsc => Some(Peer::Runsc),
                ComparePeer::Crun => Some(Peer::Crun),
                ComparePeer::Qemu => Some(Peer::Qemu),
                ComparePeer::None => None,
            })
            .collect::<Vec<_>>()
    });
    let mut modes: Vec<Mode> = Vec::new();
    for mode in &args.modes {
        let mode = match mode {
            CompareMode::Container => Mode::Container,
            CompareMode::Vm => Mode::Vm,
        };
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    Ok(CompareOptions {
        store_root: super::image::store_root(global),
        image: args.image.clone(),
        command: args.command.clone(),
        runs: args.runs,
        modes,
        peers,
        density: args.density,
        memory_limit_bytes: args.memory,
        pids_limit: args.pids_limit,
        cap_add: args.cap_add.clone(),
        work_parent: args.work_dir.clone(),
        twinbox,
        progress: !args.quiet,
    })
}

fn execute(global: &GlobalOpts, args: CompareArgs) -> Result<(), OrchestrateError> {
    let options = options(global, &args)?;
    if options.modes.contains(&Mode::Vm)
        && let Some(reason) = orchestrate::vm_unavailable(orchestrate::kvm_kind())
    {
        eprintln!("twinbox compare: the VM column cannot run here: {reason}");
    }
    let report = orchestrate::compare(options)?;
    if let Some(dir) = &args.out {
        orchestrate::write_out(&report, dir)?;
    }
    let format = match args.format {
        CompareFormat::Table => Format::Table,
        CompareFormat::Json => Format::Json,
        CompareFormat::Html => Format::Html,
    };
    print!("{}", render::render(&report, format)?);
    Ok(())
}
