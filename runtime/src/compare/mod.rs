//! The parts of `twinbox compare` that do not start sandboxes: the host side of the probe
//! (verdicts), the report model and its renderers, and the measuring helpers the
//! orchestration uses (percentiles, PSS/USS of host processes, on-disk usage, start times).
//!
//! How an orchestration uses it, per column (twinbox mode or peer runtime):
//! 1. [`probe::probe_binary`] finds `twinbox-probe`; bind-mount or copy it into the sandbox
//!    (read-only, e.g. at [`probe::IN_SANDBOX_PATH`]).
//! 2. Timing runs: run `twinbox-probe start-marker -- CMD...` as the workload, take a
//!    [`timing::LaunchClock`] just before starting, timestamp the marker line when it is
//!    read, and turn both into a duration with [`timing::workload_start`].
//! 3. Isolation: run `twinbox-probe isolation` with [`probe::isolation_args`], parse stdout
//!    with [`probe::parse_observations`], judge with [`verdict::assess`] against
//!    [`verdict::HostFacts::collect`] and the sandbox's [`verdict::Expectation`].
//! 4. Weight and density: [`memory::process_tree`] + [`memory::memory_usage`] on the
//!    sandbox's host processes, [`disk::DiskCounter`] on its image and writable layer.
//! 5. Fill a [`report::Report`] and render it with [`render`].

pub mod disk;
pub mod memory;
pub mod orchestrate;
pub mod probe;
pub mod render;
pub mod report;
#[cfg(test)]
mod sample;
pub mod stats;
pub mod timing;
pub mod verdict;

use std::path::PathBuf;

/// Errors of the compare tooling.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The probe binary is not installed where twinbox looks for it.
    #[error(
        "the twinbox-probe binary was not found (looked in: {looked_in}); install it next to \
         the twinbox binary or set TWINBOX_PROBE to its path"
    )]
    ProbeMissing {
        /// The places searched.
        looked_in: String,
    },
    /// The probe's output could not be used.
    #[error("unusable probe output: {0}")]
    ProbeOutput(String),
    /// A host fact needed for the verdicts could not be read.
    #[error("cannot learn this host's {what}: {message}")]
    HostFacts {
        /// Which fact.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A report document is not valid.
    #[error("invalid compare report: {0}")]
    Report(String),
    /// A plot could not be drawn.
    #[error("cannot draw the {plot} plot: {message}")]
    Plot {
        /// Which plot.
        plot: &'static str,
        /// Why.
        message: String,
    },
}
