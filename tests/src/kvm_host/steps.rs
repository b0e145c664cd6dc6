//! Batches of named steps in one L1 boot, with delimited, parseable results per step.
//!
//! Each step runs as `sh -c COMMAND` with stdin from /dev/null, its own timeout (SIGKILL) and
//! its stdout and stderr captured in order. The job output then holds, per step:
//!
//! ```text
//! @@TWINBOX-STEP-BEGIN <name>
//! <output>
//! @@TWINBOX-STEP-END <name> status=<exit status> limit=<timeout s> start=<L1 uptime> end=<L1 uptime>
//! ```
//!
//! (the harness prints a newline before the end marker and removes it again, so output that
//! does not end in a newline parses back unchanged). Times come from L1's /proc/uptime, which
//! has 10 ms resolution.

use super::{JobOutput, KvmHostError, tail};
use std::fmt::Write;
use std::time::Duration;

const BEGIN: &str = "@@TWINBOX-STEP-BEGIN ";
const END: &str = "@@TWINBOX-STEP-END ";
/// Exit status of a process killed by SIGKILL, as the shell reports it.
const KILLED_STATUS: i32 = 128 + 9;
/// Lines of step output kept in error messages.
const ERROR_TAIL_LINES: usize = 40;

/// The shell function that runs one step and prints its markers.
const STEP_FUNCTION: &str = r#"twinbox_step() {
	echo "@@TWINBOX-STEP-BEGIN $1"
	start=$(cut -d' ' -f1 /proc/uptime)
	timeout -s KILL "$2" sh -c "$3" </dev/null 2>&1
	status=$?
	end=$(cut -d' ' -f1 /proc/uptime)
	echo
	echo "@@TWINBOX-STEP-END $1 status=$status limit=$2 start=$start end=$end"
}
"#;

/// A job script made of named steps (and optional plain setup commands between them).
#[derive(Debug, Clone)]
pub struct StepScript {
    script: String,
}

impl Default for StepScript {
    fn default() -> Self {
        Self::new()
    }
}

impl StepScript {
    /// An empty script.
    pub fn new() -> Self {
        Self {
            script: STEP_FUNCTION.to_string(),
        }
    }

    /// Appends plain shell commands (not a step: no markers, no timeout of their own). They
    /// run in the script's shell: `export` what steps should see.
    pub fn setup(mut self, commands: &str) -> Self {
        self.script.push_str(commands);
        self.script.push('\n');
        self
    }

    /// Appends a step named `name` (letters, digits, `-`, `_`, `.`) that runs `command` with
    /// `sh -c` and is killed after `timeout`.
    ///
    /// # Panics
    /// If the name has other characters: step names are chosen by the test, not by input.
    pub fn step(mut self, name: &str, timeout: Duration, command: &str) -> Self {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "step name {name:?}: use letters, digits, '-', '_' and '.'"
        );
        let _ = writeln!(
            self.script,
            "twinbox_step {name} {} {}",
            timeout.as_secs_f64().ceil(),
            shell_quote(command)
        );
        self
    }

    /// The script text, for [`super::Job::new`].
    pub fn script(&self) -> &str {
        &self.script
    }
}

/// `text` as one single-quoted shell word.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The step's name.
    pub name: String,
    /// Its stdout and stderr, interleaved as written.
    pub output: String,
    /// Its exit status (137 when it was killed).
    pub exit_code: i32,
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
    /// How long it ran (L1 clock, 10 ms resolution; TCG speed: compare only as ratios).
    pub elapsed: Duration,
}

impl Step {
    /// `Ok(self)` when the step exited with status 0, else a [`KvmHostError::StepFailed`]
    /// that names the step, its status and the end of its output.
    pub fn check(self) -> Result<Self, KvmHostError> {
        if self.exit_code == 0 {
            return Ok(self);
        }
        let status = if self.timed_out {
            format!("timed out after {:?} and was killed", self.elapsed)
        } else {
            format!("exit status {}", self.exit_code)
        };
        Err(KvmHostError::StepFailed {
            name: self.name,
            status,
            output: tail(&self.output, ERROR_TAIL_LINES),
        })
    }
}

impl JobOutput {
    /// The result of the step `name` of a [`StepScript`] job, or
    /// [`KvmHostError::StepMissing`] when the output does not hold its end marker.
    pub fn step(&self, name: &str) -> Result<Step, KvmHostError> {
        self.find_step(name)
            .ok_or_else(|| KvmHostError::StepMissing {
                name: name.to_string(),
                output: tail(&self.output, ERROR_TAIL_LINES),
            })
    }

    /// The output of step `name`, for tests: panics with the reason unless the step exited
    /// with status 0 and printed each of `markers` on a line of its own (e.g. an L2 init's
    /// first and last lines, proving the guest ran its init to the end).
    pub fn completed_step(&self, name: &str, markers: &[&str]) -> String {
        let step = self
            .step(name)
            .and_then(Step::check)
            .unwrap_or_else(|e| panic!("{e}"));
        for marker in markers {
            assert!(
                step.output.lines().any(|line| line.trim() == *marker),
                "step '{name}' did not print {marker}:\n{}",
                step.output
            );
        }
        step.output
    }

    fn find_step(&self, name: &str) -> Option<Step> {
        let begin = format!("{BEGIN}{name}\n");
        let start = self.output.find(&begin)? + begin.len();
        let end = format!("\n{END}{name} ");
        let length = self.output[start..].find(&end)?;
        let output = self.output[start..start + length].to_string();
        let marker = self.output[start + length + end.len()..].lines().next()?;
        let field = |key: &str| {
            marker
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        };
        let exit_code = field("status")?.parse().ok()?;
        let seconds = |key| field(key)?.parse::<f64>().ok();
        let (start, end, limit) = (seconds("start")?, seconds("end")?, seconds("limit")?);
        let elapsed = Duration::from_secs_f64((end - start).max(0.0));
        Some(Step {
            name: name.to_string(),
            output,
            exit_code,
            // Killed by the step's `timeout` (uptime ticks every 10 ms).
            timed_out: exit_code == KILLED_STATUS && end - start >= limit - 0.02,
            elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_output(output: &str) -> JobOutput {
        JobOutput {
            output: output.to_string(),
            exit_code: 0,
            console: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn steps_parse_back_with_output_status_and_time() {
        let out = job_output(
            "noise\n@@TWINBOX-STEP-BEGIN boot\nline 1\nno newline\n\
             @@TWINBOX-STEP-END boot status=0 limit=5 start=2.50 end=3.75\n\
             @@TWINBOX-STEP-BEGIN bad\nerror: no kernel\n\n\
             @@TWINBOX-STEP-END bad status=1 limit=5 start=3.80 end=3.81\n",
        );
        let boot = out.step("boot").unwrap();
        assert_eq!(boot.output, "line 1\nno newline");
        assert_eq!(boot.exit_code, 0);
        assert_eq!(boot.elapsed, Duration::from_millis(1250));
        assert!(boot.clone().check().is_ok());

        let bad = out.step("bad").unwrap();
        assert_eq!(bad.output, "error: no kernel\n");
        let error = bad.check().unwrap_err().to_string();
        assert!(
            error.contains("step 'bad' failed: exit status 1"),
            "{error}"
        );
        assert!(error.contains("error: no kernel"), "{error}");

        let missing = out.step("never").unwrap_err();
        assert!(matches!(missing, KvmHostError::StepMissing { .. }));
    }

    #[test]
    fn a_step_name_does_not_match_a_longer_one() {
        let out = job_output(
            "@@TWINBOX-STEP-BEGIN boot-2\nx\n@@TWINBOX-STEP-END boot-2 status=0 limit=5 start=1 end=1\n",
        );
        assert!(out.step("boot").is_err());
        assert_eq!(out.step("boot-2").unwrap().output, "x");
    }

    #[test]
    fn the_script_runs_steps_with_quoting_and_timeouts_under_busybox() {
        let script = StepScript::new()
            .setup("export greeting=hello")
            .step(
                "echo",
                Duration::from_secs(5),
                "echo \"it's $greeting\"; echo err >&2",
            )
            .step("fails", Duration::from_secs(5), "exit 3")
            .step("hangs", Duration::from_secs(1), "sleep 30")
            .script()
            .to_string();
        // L1's environment: busybox applets only.
        let root = tempfile::tempdir().unwrap();
        crate::busybox_rootfs(root.path()).unwrap();
        let result = std::process::Command::new(crate::BUSYBOX)
            .args(["sh", "-c", &script])
            .env("PATH", root.path().join("bin"))
            .output()
            .unwrap();
        assert!(result.status.success());
        let out = job_output(&String::from_utf8_lossy(&result.stdout));
        let echo = out.step("echo").unwrap();
        assert_eq!(echo.output, "it's hello\nerr\n");
        assert_eq!(out.step("fails").unwrap().exit_code, 3);
        let hangs = out.step("hangs").unwrap();
        assert!(hangs.timed_out, "{hangs:?}");
        assert!(hangs.check().unwrap_err().to_string().contains("timed out"));
    }
}
