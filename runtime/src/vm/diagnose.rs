//! Saying what happened to a guest that stopped answering: from how the VM ended and the
//! end of the guest's console (the kernel prints panics even with `quiet`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How the VM stands when the host gives up on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Still running (a wait timed out).
    Running,
    /// The guest reset or powered off.
    Stopped,
    /// The VMM failed.
    Failed(String),
}

/// Bytes of the console's end that are read (a panic's stack trace follows its message).
const CONSOLE_TAIL_BYTES: u64 = 64 << 10;
/// Lines of it quoted in messages.
const CONSOLE_QUOTED_LINES: usize = 12;

/// The lines of the console log's end (empty when there is none).
fn console_tail(path: &Path) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(CONSOLE_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Explains why the guest did not do what `waiting_for` names (e.g. "the guest agent to
/// connect"), from `ending` and the console log at `console`.
pub fn explain(waiting_for: &str, ending: &Ending, console: &Path) -> String {
    let tail = console_tail(console);
    let panic = tail.iter().find_map(|l| {
        l.split_once("Kernel panic - not syncing: ")
            .map(|(_, why)| why.to_string())
    });
    let agent: Vec<&String> = tail
        .iter()
        .filter(|l| l.contains("twinbox-agent:"))
        .collect();
    let mut message = match (&panic, ending) {
        (_, Ending::Failed(error)) => {
            format!("the VMM failed while waiting for {waiting_for}: {error}")
        }
        (Some(why), _) if why.contains("Attempted to kill init") => format!(
            "the guest agent (the VM's init) crashed or exited while the host waited for \
             {waiting_for}; the guest kernel panicked: {why}"
        ),
        (Some(why), _)
            if why.contains("No working init") || why.contains("VFS: Unable to mount root") =>
        {
            format!(
                "the guest kernel could not start the agent from its disk (the kernel needs \
                 virtio-blk and erofs built in, as twinbox's `make kernel` has them): {why}"
            )
        }
        (Some(why), _) => {
            format!("the guest kernel panicked while the host waited for {waiting_for}: {why}")
        }
        (None, Ending::Stopped) if !agent.is_empty() => format!(
            "the VM stopped before {waiting_for}; the guest agent said: {}",
            agent
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        (None, Ending::Stopped) => format!("the VM stopped before {waiting_for}"),
        (None, Ending::Running) if tail.is_empty() => format!(
            "the guest did not answer (no {waiting_for}) and its kernel printed nothing: the \
             kernel may not boot on this host (it must be an x86_64 vmlinux with the PVH note or \
             a bzImage; on PVM hosts it needs PVM guest support) or it hung early"
        ),
        (None, Ending::Running) => format!("the guest did not answer (no {waiting_for})"),
    };
    if !tail.is_empty() {
        message.push_str("\nguest console (end):\n  ");
        message.push_str(&tail[tail.len().saturating_sub(CONSOLE_QUOTED_LINES)..].join("\n  "));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn panics_are_named_with_their_reason() {
        let log = console(
            "[    1.0] sysrq: Trigger a crash\n\
             [    1.0] Kernel panic - not syncing: sysrq triggered crash\n\
             [    1.0] CPU: 0 PID: 80 Comm: sh\n",
        );
        let text = explain("the workload to exit", &Ending::Stopped, log.path());
        assert!(text.starts_with("the guest kernel panicked while the host waited for the workload to exit: sysrq triggered crash"), "{text}");
        // The message is found above a long stack trace too, and only the end is quoted.
        let trace: String = (0..200)
            .map(|i| format!(" frame_{i}+0x10/0x20\n"))
            .collect();
        let long = console(&format!(
            "Kernel panic - not syncing: sysrq triggered crash\n{trace}"
        ));
        let long = explain("x", &Ending::Stopped, long.path());
        assert!(
            long.contains("panicked") && long.contains("frame_199"),
            "{long}"
        );
        assert!(!long.contains("frame_150"), "{long}");
        assert!(
            text.contains("Comm: sh"),
            "the console tail is quoted: {text}"
        );
    }

    #[test]
    fn a_dead_agent_is_told_apart_from_a_panic() {
        let log = console(
            "twinbox-agent: cannot reach the host on vsock port 1024: No such device; powering off\n\
             Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n",
        );
        let text = explain("the guest agent to connect", &Ending::Stopped, log.path());
        assert!(text.contains("crashed or exited"), "{text}");
        assert!(text.contains("vsock port 1024"), "{text}");
        let log = console("twinbox-agent: early boot failed: mounting proc: EPERM; powering off\n");
        let text = explain("the guest agent to connect", &Ending::Stopped, log.path());
        assert!(
            text.contains("the guest agent said: twinbox-agent: early boot failed"),
            "{text}"
        );
    }

    #[test]
    fn silence_and_vmm_failures_say_what_to_check() {
        let missing = Path::new("/nonexistent/console.log");
        let text = explain("the guest agent to connect", &Ending::Running, missing);
        assert!(
            text.contains("printed nothing") && text.contains("PVM"),
            "{text}"
        );
        let text = explain("x", &Ending::Failed("cannot load kernel".into()), missing);
        assert!(
            text.contains("the VMM failed while waiting for x: cannot load kernel"),
            "{text}"
        );
    }
}
