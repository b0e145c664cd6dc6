//! Finding, invoking and reading the probe.

use std::path::{Path, PathBuf};

use twinbox_probe::Observations;

use super::CompareError;

/// The probe's file name.
pub const PROBE_NAME: &str = "twinbox-probe";

/// Where the orchestration should place the probe inside a sandbox (bind-mounted read-only
/// or copied): a path no image uses.
pub const IN_SANDBOX_PATH: &str = "/.twinbox/twinbox-probe";

/// Environment variable naming the probe binary explicitly.
pub const PROBE_ENV: &str = "TWINBOX_PROBE";

/// Directory where packages install twinbox's helper binaries.
pub const LIBEXEC_DIR: &str = "/usr/libexec/twinbox";

/// Finds the probe binary: `$TWINBOX_PROBE`, else next to the running executable (and, for
/// test binaries in `deps/`, one level up), else [`LIBEXEC_DIR`].
pub fn probe_binary() -> Result<PathBuf, CompareError> {
    let mut candidates = Vec::new();
    if let Some(explicit) = std::env::var_os(PROBE_ENV) {
        candidates.push(PathBuf::from(explicit));
    } else {
        if let Ok(exe) = std::env::current_exe() {
            for dir in exe.ancestors().skip(1).take(2) {
                candidates.push(dir.join(PROBE_NAME));
            }
        }
        candidates.push(Path::new(LIBEXEC_DIR).join(PROBE_NAME));
    }
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| CompareError::ProbeMissing {
            looked_in: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Arguments for `twinbox-probe isolation`: `host_pid` is a process that exists only on the
/// host (the orchestrator's own pid will do); `allocation_test_mib`, when set, should exceed
/// the configured memory limit (e.g. limit + 25%) so that an enforced limit kills the
/// probe's allocating child.
pub fn isolation_args(host_pid: Option<u32>, allocation_test_mib: Option<u64>) -> Vec<String> {
    let mut args = vec!["isolation".to_string()];
    if let Some(pid) = host_pid {
        args.extend(["--host-pid".to_string(), pid.to_string()]);
    }
    if let Some(mib) = allocation_test_mib {
        args.extend(["--alloc-test-mib".to_string(), mib.to_string()]);
    }
    args
}

/// Arguments for `twinbox-probe start-marker` that then exec `command`.
pub fn start_marker_args(command: &[String]) -> Vec<String> {
    let mut args = vec!["start-marker".to_string()];
    if !command.is_empty() {
        args.push("--".to_string());
        args.extend(command.iter().cloned());
    }
    args
}

/// Parses the stdout of `twinbox-probe isolation`. Anything a runtime prints before the
/// document (a peer's banner, say) is skipped: the document is the last line that parses.
pub fn parse_observations(stdout: &str) -> Result<Observations, CompareError> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .ok_or_else(|| {
            let chars = stdout.chars().count();
            let tail: String = stdout.chars().skip(chars.saturating_sub(400)).collect();
            CompareError::ProbeOutput(format!(
                "no JSON document in the probe's output ({} bytes): did the probe run? It \
                 ended with: {tail:?}",
                stdout.len()
            ))
        })?;
    Observations::from_json(line).map_err(CompareError::ProbeOutput)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_arguments() {
        assert_eq!(
            isolation_args(Some(42), Some(96)),
            ["isolation", "--host-pid", "42", "--alloc-test-mib", "96"]
        );
        assert_eq!(isolation_args(None, None), ["isolation"]);
        assert_eq!(
            start_marker_args(&["/bin/true".into()]),
            ["start-marker", "--", "/bin/true"]
        );
    }

    #[test]
    fn parses_observations_from_collected_facts_and_rejects_garbage() {
        let observations = twinbox_probe::checks::collect(&Default::default());
        let stdout = format!(
            "banner\n{}\n",
            serde_json::to_string(&observations).unwrap()
        );
        assert_eq!(parse_observations(&stdout).unwrap(), observations);
        assert!(parse_observations("nothing").is_err());
        let unknown = stdout.replace("\"schema\":1", "\"schema\":1,\"extra\":true");
        let err = parse_observations(&unknown).unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
    }
}
