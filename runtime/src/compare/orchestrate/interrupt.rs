//! Ctrl-C (and SIGTERM, SIGHUP) during a compare run: the handler only records the request;
//! the orchestration checks it between steps and unwinds, so every drop guard cleans up.
//! Tested end to end (`interrupted_density_run_stops_everything` in tests/tests/compare_run.rs):
//! signal dispositions are process-wide, so a unit test would race the other tests' handlers.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static REQUESTED: AtomicBool = AtomicBool::new(false);

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn record(_signal: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether an interrupt arrived since [`Handler::install`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The installed handlers; dropping restores the previous dispositions.
pub struct Handler {
    previous: Vec<(Signal, SigAction)>,
}

impl Handler {
    /// Records SIGINT, SIGTERM and SIGHUP instead of dying of them.
    pub fn install() -> Handler {
        REQUESTED.store(false, Ordering::SeqCst);
        // No SA_RESTART: blocking waits return EINTR and look at the flag.
        let action = SigAction::new(
            SigHandler::Handler(record),
            SaFlags::empty(),
            SigSet::empty(),
        );
        let previous = SIGNALS
            .iter()
            .filter_map(|signal| {
                // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
                unsafe { sigaction(*signal, &action) }
                    .ok()
                    .map(|old| (*signal, old))
            })
            .collect();
        Handler { previous }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: restores the disposition that was in place before `install`.
            let _ = unsafe { sigaction(*signal, old) };
        }
    }
}
