//! Per-layer progress bars on a terminal (nothing is drawn when stderr is not a terminal).

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of progress bars, one per blob or layer.
#[derive(Clone)]
pub struct Progress {
    bars: MultiProgress,
    enabled: bool,
}

impl Progress {
    /// Bars on stderr when it is a terminal and `enabled`; otherwise hidden.
    pub fn new(enabled: bool) -> Progress {
        let enabled = enabled && std::io::stderr().is_terminal();
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            bars: MultiProgress::with_draw_target(target),
            enabled,
        }
    }

    /// A byte-count bar labelled `label` (e.g. `Copying blob 3f2a1b`).
    pub fn bytes(&self, label: String, total: Option<u64>) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(total.unwrap_or(0)));
        let template = if total.is_some() {
            "{msg:28} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>11}"
        } else {
            "{msg:28} {spinner} {bytes:>10} {bytes_per_sec:>11}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(label);
        bar
    }

    /// A spinner for a step without a byte count (e.g. `Unpacking 3f2a1b`).
    pub fn step(&self, label: String) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{msg:28} {spinner} {elapsed}").expect("valid template"),
        );
        bar.set_message(label);
        if self.enabled {
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        bar
    }
}
