//! Ctrl-C (and SIGTERM, SIGHUP) during a compare run: the handler only records the request;
//! the orchestration checks it between steps and unwinds, so every drop guard cleans up.

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The disposition of SIGHUP now (set and restored to read it).
    fn sighup_handler() -> SigHandler {
        let probe = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        // SAFETY: installs SIG_IGN and at once puts the previous disposition back.
        unsafe {
            let old = sigaction(Signal::SIGHUP, &probe).unwrap();
            sigaction(Signal::SIGHUP, &old).unwrap();
            old.handler()
        }
    }

    // Raising a signal here would set the process-wide flag under the other tests' feet; the
    // end-to-end test `interrupted_density_run_stops_everything` presses Ctrl-C for real.
    #[test]
    fn installs_the_recorder_and_restores_the_old_disposition() {
        // Default, or ignored under nohup: whichever it is comes back.
        let before = sighup_handler();
        assert!(!matches!(before, SigHandler::Handler(_)));
        {
            let _handler = Handler::install();
            assert!(matches!(sighup_handler(), SigHandler::Handler(_)));
            assert!(!requested());
        }
        assert_eq!(
            std::mem::discriminant(&sighup_handler()),
            std::mem::discriminant(&before)
        );
    }
}
