//! Parsing the values of `run`'s options as docker does: `-v`, `--tmpfs`, `--memory`,
//! `--cpus`, `--env-file`, `--network`.

use std::path::{Path, PathBuf};

use super::EngineError;
use crate::backend::BackendKind;

fn invalid(option: &'static str, value: &str, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidOption {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Where a `-v` mount comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host path (bind mount).
    Bind(PathBuf),
    /// A named volume (created if missing).
    Volume(String),
    /// A new anonymous volume.
    Anonymous,
}

/// One `-v SRC:DST[:OPTS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// What is mounted.
    pub source: MountSource,
    /// Absolute path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Mount propagation (rprivate unless given).
    pub propagation: String,
}

/// Parses `-v`: `HOST:CTR[:OPTS]` (host paths are absolute and must exist), `NAME:CTR[:OPTS]`
/// for a named volume, or `CTR` for an anonymous volume. OPTS: `ro`, `rw`, a propagation
/// mode, and the SELinux relabel flags `z`/`Z` (accepted, without effect).
pub fn parse_volume(value: &str) -> Result<VolumeSpec, EngineError> {
    let bad = |reason: &str| invalid("--volume", value, reason);
    let parts: Vec<&str> = value.split(':').collect();
    let (source, destination, options) = match parts.as_slice() {
        [dst] => (None, *dst, None),
        [src, dst] => (Some(*src), *dst, None),
        [src, dst, opts] => (Some(*src), *dst, Some(*opts)),
        _ => {
            return Err(bad(
                "expected SRC:DST[:OPTS] (paths containing ':' are not supported)",
            ));
        }
    };
    if !destination.starts_with('/') {
        return Err(bad("the container path must be absolute"));
    }
    if destination == "/" {
        return Err(bad("cannot mount over the container's root"));
    }
    let source = match source {
        None => MountSource::Anonymous,
        Some(src) if src.starts_with('/') => {
            let path = Path::new(src).canonicalize().map_err(|e| {
                bad(&format!(
                    "the host path {src} cannot be used ({e}); create it first"
                ))
            })?;
            MountSource::Bind(path)
        }
        Some(src) => {
            super::validate_name("volume", src).map_err(|_| {
                bad("the source is neither an absolute host path nor a valid volume name")
            })?;
            MountSource::Volume(src.to_string())
        }
    };
    let mut read_only = false;
    let mut propagation = "rprivate".to_string();
    for option in options.into_iter().flat_map(|o| o.split(',')) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "z" | "Z" | "" => {}
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                propagation = option.to_string();
            }
            other => {
                return Err(bad(&format!(
                    "unknown option {other:?} (use ro, rw or a propagation mode such as rslave)"
                )));
            }
        }
    }
    Ok(VolumeSpec {
        source,
        destination: destination.to_string(),
        read_only,
        propagation,
    })
}

/// Parses `--tmpfs PATH[:OPTS]` into the destination and the mount options (docker's
/// defaults noexec, nosuid, nodev first, so the given options override them).
pub fn parse_tmpfs(value: &str) -> Result<(String, Vec<String>), EngineError> {
    let (path, options) = value.split_once(':').unwrap_or((value, ""));
    if !path.starts_with('/') || path == "/" {
        return Err(invalid(
            "--tmpfs",
            value,
            "expected an absolute container path other than /, then optional :OPTIONS",
        ));
    }
    let mut all: Vec<String> = ["noexec", "nosuid", "nodev"].map(String::from).to_vec();
    all.extend(
        options
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string),
    );
    Ok((path.to_string(), all))
}

/// Parses a size like docker's RAMInBytes: a number with an optional unit b, k, m, g, t or p
/// (binary multiples; "kb", "mib" etc. accepted), e.g. `512m`, `1.5g`, `1048576`.
pub fn parse_memory(value: &str) -> Result<i64, EngineError> {
    let bad = || {
        invalid(
            "--memory",
            value,
            "expected a size such as 512m, 1g or 1048576",
        )
    };
    let text = value.trim().to_ascii_lowercase();
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(bad());
    }
    let bytes = bytes as i64;
    // Docker's minimum: less cannot even start a process.
    const MINIMUM: i64 = 6 << 20;
    if bytes < MINIMUM {
        return Err(invalid("--memory", value, "the minimum memory limit is 6m"));
    }
    Ok(bytes)
}

/// The CFS period `--cpus` uses (docker's 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Parses `--cpus` into a CFS quota in microseconds per [`CPU_PERIOD_US`]; at most the CPUs
/// this host has.
pub fn parse_cpus(value: &str, isolation: Option<BackendKind>) -> Result<i64, EngineError> {
    let cpus: f64 = value
        .parse()
        .map_err(|_| invalid("--cpus", value, "expected a number of CPUs such as 1.5"))?;
    let (max, limit) = if isolation == Some(BackendKind::Vm) {
        // A VM gets vCPUs (the quota rounded up); they may outnumber the host's CPUs.
        let max = f64::from(crate::vm::plan::MAX_VCPUS);
        (max, format!("a VM has at most {max} vCPUs"))
    } else {
        let host = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        (host, format!("this host has {host} CPUs"))
    };
    if !(0.01..=max).contains(&cpus) {
        return Err(invalid(
            "--cpus",
            value,
            format!("the range is 0.01 to {max:.2}: {limit}"),
        ));
    }
    Ok((cpus * CPU_PERIOD_US as f64).round() as i64)
}

/// cgroup limits of `run`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CFS quota per [`CPU_PERIOD_US`].
    pub cpu_quota: Option<i64>,
    /// Process limit (-1: unlimited).
    pub pids: Option<i64>,
}

/// `--network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A network namespace of its own with only the loopback interface (up).
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

impl std::str::FromStr for NetworkMode {
    type Err = EngineError;
    fn from_str(value: &str) -> Result<Self, EngineError> {
        match value {
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            _ => Err(invalid(
                "--network",
                value,
                "twinbox supports none (loopback only, the default) and host",
            )),
        }
    }
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
        })
    }
}

/// Completes `-e KEY` (no `=`) from twinbox's own environment as docker does; a variable
/// that is not set is left out.
pub fn complete_env(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|entry| {
            if entry.contains('=') {
                Some(entry.clone())
            } else {
                std::env::var(entry)
                    .ok()
                    .map(|value| format!("{entry}={value}"))
            }
        })
        .collect()
}

/// Reads a docker env file: `KEY=VALUE` lines taken literally, `KEY` lines completed from
/// twinbox's environment, blank lines and `#` comments skipped.
pub fn parse_env_file(path: &Path) -> Result<Vec<String>, EngineError> {
    let text =
        std::fs::read_to_string(path).map_err(EngineError::io("reading the env file", path))?;
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap_or_default();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(invalid(
                "--env-file",
                &path.display().to_string(),
                format!("line {}: expected KEY=VALUE, got {line:?}", number + 1),
            ));
        }
        entries.push(line.to_string());
    }
    Ok(complete_env(&entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_binds_and_options() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display().to_string();
        let spec = parse_volume(&format!("{host}:/data:ro")).unwrap();
        assert_eq!(
            spec.source,
            MountSource::Bind(dir.path().canonicalize().unwrap())
        );
        assert_eq!(spec.destination, "/data");
        assert!(spec.read_only);
        let named = parse_volume("cache:/var/cache:rw,rslave").unwrap();
        assert_eq!(named.source, MountSource::Volume("cache".into()));
        assert!(!named.read_only);
        assert_eq!(named.propagation, "rslave");
        assert_eq!(
            parse_volume("/scratch").unwrap().source,
            MountSource::Anonymous
        );
        for bad in [
            "relative/path:/x",
            "cache:relative",
            "/nonexistent-twinbox-path:/x",
            "cache:/x:bogus",
            "a:b:c:d",
            "cache:/",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tmpfs_defaults_come_first() {
        let (path, options) = parse_tmpfs("/run:size=64m,exec").unwrap();
        assert_eq!(path, "/run");
        assert_eq!(options, ["noexec", "nosuid", "nodev", "size=64m", "exec"]);
        assert!(parse_tmpfs("run").is_err());
    }

    #[test]
    fn memory_sizes_like_docker() {
        assert_eq!(parse_memory("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5GB").unwrap(), 3 << 29);
        assert_eq!(parse_memory("10485760").unwrap(), 10 << 20);
        assert_eq!(parse_memory("8MiB").unwrap(), 8 << 20);
        for bad in ["", "m", "12x", "1m", "-5m"] {
            assert!(parse_memory(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cpus_become_a_quota() {
        assert_eq!(parse_cpus("0.5", None).unwrap(), 50_000);
        assert_eq!(parse_cpus("1", None).unwrap(), 100_000);
        assert!(parse_cpus("0", None).is_err());
        assert!(parse_cpus("100000", None).is_err());
        assert!(parse_cpus("two", None).is_err());
        // VMs get vCPUs, which may outnumber the host's CPUs.
        assert_eq!(parse_cpus("32", Some(BackendKind::Vm)).unwrap(), 3_200_000);
        assert!(parse_cpus("33", Some(BackendKind::Vm)).is_err());
    }

    #[test]
    fn env_files_skip_comments_and_complete_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        // PATH is set in every test environment.
        std::fs::write(
            &path,
            "# comment\nA=1\n\n  B=two words\nPATH\nTWINBOX_SURELY_UNSET_VARIABLE\nC=\n",
        )
        .unwrap();
        let entries = parse_env_file(&path).unwrap();
        assert_eq!(entries[..2], ["A=1".to_string(), "B=two words".to_string()]);
        assert_eq!(
            entries[2],
            format!("PATH={}", std::env::var("PATH").unwrap())
        );
        assert_eq!(entries[3], "C=");
        assert_eq!(entries.len(), 4);
        std::fs::write(&path, "=nokey\n").unwrap();
        assert!(parse_env_file(&path).is_err());
        assert!(parse_env_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn network_modes() {
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert_eq!("host".parse::<NetworkMode>().unwrap(), NetworkMode::Host);
        let err = "bridge".parse::<NetworkMode>().unwrap_err().to_string();
        assert!(err.contains("none") && err.contains("host"), "{err}");
    }
}
