//! `twinbox compare`: the same image in each isolation mode and under peer runtimes,
//! measured side by side.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// `twinbox compare IMAGE [-- CMD...]`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Image in the store (name, name:tag or id); load or pull it first.
    pub image: String,

    /// Workload to time (default /bin/true), after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,

    /// Timed starts per column.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub runs: u32,

    /// twinbox isolation modes to measure, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [CompareMode::Container, CompareMode::Vm])]
    pub modes: Vec<CompareMode>,

    /// Peer runtimes to measure in the same run, comma separated (default: those installed;
    /// `none` for none).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peers: Option<Vec<ComparePeer>>,

    /// Density run: start up to K idle sandboxes per column (steps 1, 10, 50, 100, 200,
    /// 500, ... up to K); 0 skips it.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub density: u32,

    /// Memory limit of every sandbox (container: cgroup limit; VM: guest RAM), e.g. 256m.
    #[arg(long, default_value = "256m", value_parser = parse_size)]
    pub memory: u64,

    /// Pids limit of every sandbox.
    #[arg(long, default_value_t = 512)]
    pub pids_limit: u64,

    /// Capability to add to every sandbox (repeatable), as `twinbox run --cap-add`.
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,

    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = CompareFormat::Table)]
    pub format: CompareFormat,

    /// Also write report.json, report.html and report.txt into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Directory for the sandboxes' bundles and runtime state (default: a new directory
    /// under /run); removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

/// twinbox isolation modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareMode {
    /// Namespaced containers (twinbox's container backend).
    Container,
    /// KVM microVMs (twinbox's VM backend).
    Vm,
}

/// Peer runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ComparePeer {
    /// runc, on the same bundle.
    Runc,
    /// gVisor's runsc, on the same bundle.
    Runsc,
    /// crun, on the same bundle.
    Crun,
    /// QEMU's microvm machine with twinbox's guest kernel.
    Qemu,
    /// No peers.
    None,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareFormat {
    /// Aligned text tables.
    Table,
    /// The report document (docs/compare-report.md).
    Json,
    /// A self-contained HTML page with SVG plots.
    Html,
}

/// Parses `256m`, `1g`, `512k` or a byte count (at least 6 MiB, what a sandbox needs).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bytes = vmm::parse_mem_size(text)?;
    if bytes < 6 << 20 {
        return Err(format!("`{text}` is below the 6 MiB a sandbox needs"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_a_minimum() {
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("1m").unwrap_err().contains("6 MiB"));
        assert!(parse_size("12x").unwrap_err().contains("is not a size"));
    }
}
