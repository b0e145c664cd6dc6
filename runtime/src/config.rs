//! The twinbox config file: `/etc/twinbox/config.toml`, or the file `$TWINBOX_CONFIG` names.
//!
//! ```toml
//! # Registries spoken to over plain HTTP (host or host:port).
//! insecure_registries = ["127.0.0.1:5000"]
//!
//! # The VM backend (all optional; see `twinbox::vm`).
//! [vm]
//! kernel = "/usr/local/lib/twinbox/vmlinux"   # guest kernel (vmlinux or bzImage)
//! agent = "/usr/local/lib/twinbox/twinbox-agent"
//! memory = "256M"          # guest RAM when the container has no memory limit
//! cpus = 1                 # vCPUs when the container has no CPU limit
//! kernel_args = ""         # appended to the guest kernel's command line
//! boot_timeout_secs = 10   # how long the guest agent may take to come up
//! writable_disk = "4G"     # a per-VM disk for root filesystem writes (default: guest RAM)
//! start = "snapshot"       # or "boot": how VMs start (see `twinbox::vm::template`)
//! ```
//!
//! A missing file means defaults. Unknown keys are errors, so a typo does not silently
//! change nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/twinbox/config.toml";

/// Environment variable naming another config file.
pub const CONFIG_ENV: &str = "TWINBOX_CONFIG";

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        message: String,
    },
}

/// twinbox's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Registries (`host` or `host:port`) reached over plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// VM backend settings.
    #[serde(default)]
    pub vm: VmSettings,
}

/// The `[vm]` section: defaults of the VM backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    /// The guest kernel.
    pub kernel: Option<PathBuf>,
    /// The guest agent binary.
    pub agent: Option<PathBuf>,
    /// Guest RAM for containers without a memory limit, e.g. "256M".
    pub memory: Option<String>,
    /// vCPUs for containers without a CPU limit.
    pub cpus: Option<u8>,
    /// Extra guest kernel command line arguments.
    pub kernel_args: Option<String>,
    /// Seconds the guest agent may take to connect after the VM starts.
    pub boot_timeout_secs: Option<u64>,
    /// Size of a per-VM disk that takes the root filesystem's writes (None: guest RAM).
    pub writable_disk: Option<String>,
    /// How VMs start (None: [`VmStart::Snapshot`]).
    pub start: Option<VmStart>,
}

/// How a VM starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStart {
    /// Restore a snapshot of a VM booted up to its agent (one template per kernel, agent,
    /// RAM size and vCPU count), when the VM's disks allow it; boot otherwise.
    Snapshot,
    /// Boot the guest kernel for every VM.
    Boot,
}

impl std::str::FromStr for VmStart {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "snapshot" => Ok(VmStart::Snapshot),
            "boot" => Ok(VmStart::Boot),
            other => Err(format!(
                "`{other}` is not a VM start mode; use snapshot or boot"
            )),
        }
    }
}

impl Config {
    /// The path in force: `$TWINBOX_CONFIG` if set, else the default.
    pub fn path() -> PathBuf {
        std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    /// Loads the config file in force ([`Config::path`]).
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(&Config::path())
    }

    /// Loads `path`; a missing file gives the defaults.
    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_keys_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(Config::load_from(&path).unwrap(), Config::default());
        std::fs::write(&path, "insecure_registries = [\"127.0.0.1:5000\"]\n").unwrap();
        assert_eq!(
            Config::load_from(&path).unwrap().insecure_registries,
            ["127.0.0.1:5000"]
        );
        std::fs::write(&path, "[vm]\nkernel = \"/k\"\ncpus = 2\n").unwrap();
        let vm = Config::load_from(&path).unwrap().vm;
        assert_eq!(vm.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!(vm.cpus, Some(2));
        std::fs::write(&path, "[vm]\nkernal = \"/k\"\n").unwrap();
        assert!(
            Config::load_from(&path)
                .unwrap_err()
                .to_string()
                .contains("kernal")
        );
        std::fs::write(&path, "insecure_registry = [\"x\"]\n").unwrap();
        let err = Config::load_from(&path).unwrap_err().to_string();
        assert!(err.contains("insecure_registry"), "{err}");
    }
}
