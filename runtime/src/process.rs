//! Waiting for child processes with a deadline, killing them (and their process group) when
//! they hang.

use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

/// Waits for `child` up to `timeout`; kills its process group when it hangs.
pub fn wait_status(
    child: &mut Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child);
                return Err(format!("did not finish within {}s", timeout.as_secs()));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("waiting: {e}")),
        }
    }
}

/// Waits for `child` up to `timeout` (see [`wait_status`]) while draining its piped stdout
/// and stderr: (status, stdout, stderr). A pipe that is not piped reads as empty.
pub fn wait_output(
    mut child: Child,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), String> {
    // Both pipes are drained on threads so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_status(&mut child, timeout)?;
    // A grandchild may have inherited the pipes; do not wait for it to close them.
    let collect = |handle: std::thread::JoinHandle<Vec<u8>>| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if handle.is_finished() {
            handle.join().unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    Ok((status, collect(stdout), collect(stderr)))
}

/// Kills `child` and, when it leads one, its process group; then reaps it.
pub fn kill_group(child: &mut Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.kill();
    let _ = child.wait();
}
