//! Template snapshots: a VM starts by restoring a snapshot of a guest that already booted
//! its kernel and agent, instead of booting them again (Firecracker's snapshot restore, Kata's
//! VM templating).
//!
//! A template is one boot of the guest kernel with the agent disk and an empty disk in the
//! place of each of the VM's other disks (the root filesystem image, volumes, a writable
//! disk), read-only or not as they are. The kernel command line carries [`TEMPLATE_ARG`]: the agent
//! mounts its API filesystems, listens for the host, and asks the VMM for a snapshot, which
//! the VMM writes and then stops. There is one template per kernel, agent, VMM binary, guest
//! RAM size, vCPU count, disk layout and command line, in the disk cache, built on first use by
//! `twinbox-vmm template CONFIG`; building one removes the templates of other kernels,
//! agents and VMM binaries. A template that fails to build is not tried again for ten
//! minutes: its VMs boot meanwhile. The template VM runs no workload and no input of a
//! container: only twinbox's kernel and agent, under the VMM's seccomp filters.
//!
//! A VM restored from a template gets its disks in the empty disks' places (the VMM tells the
//! guest their new sizes, and the agent waits for them before it mounts) and, in the create
//! request, fresh entropy for its random generator and the host's clock, since it inherits
//! the template's. VMs whose kernel a container names boot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::VmError;
use super::disk::DiskCache;
use super::init::{self, CONSOLE_LOG};
use super::plan::Plan;
use crate::config::{VmSettings, VmStart};

/// The annotation that picks how a container's VM starts: `snapshot` or `boot`.
pub const START_ANNOTATION: &str = "io.twinbox.vm.start";

/// The kernel argument of a template boot; the kernel hands it to the agent as an
/// environment variable.
pub const TEMPLATE_ARG: &str = "twinbox_template=1";

/// The template's configuration file in its work directory.
const CONFIG_FILE: &str = "template.json";

/// How the container's VM starts: its annotation, else the config file, else snapshot.
pub fn start_mode(
    settings: &VmSettings,
    annotations: &HashMap<String, String>,
) -> Result<VmStart, VmError> {
    match annotations.get(START_ANNOTATION) {
        Some(text) => text
            .parse()
            .map_err(|e| VmError::Settings(format!("annotation {START_ANNOTATION}: {e}"))),
        None => Ok(settings.start.unwrap_or(VmStart::Snapshot)),
    }
}

/// Whether a container's VM may be restored from a template: when its kernel is the host's
/// own. A template boots outside the jail, so never with a kernel that a container's
/// annotation names; such VMs boot in their jail.
pub fn allowed(annotations: &HashMap<String, String>) -> bool {
    !annotations.contains_key(super::assets::KERNEL_ANNOTATION)
}

/// What `twinbox-vmm template` boots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateConfig {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The agent disk.
    pub agent_disk: PathBuf,
    /// The kernel command line, with [`TEMPLATE_ARG`].
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The disks after the agent disk, by their read-only flags: the template has an empty
    /// disk in each one's place.
    pub empty_disks: Vec<bool>,
    /// Where the VMM writes the snapshot.
    pub snapshot_dir: PathBuf,
    /// How long the guest may take to ask for its snapshot.
    pub timeout_ms: u64,
}

impl DiskCache {
    /// The template that `plan`'s VM restores, built on first use (see the module docs).
    pub fn template(
        &self,
        kernel: &Path,
        agent_disk: &Path,
        plan: &Plan,
        timeout: Duration,
    ) -> Result<PathBuf, VmError> {
        let cmdline = format!("{} {TEMPLATE_ARG}", plan.cmdline);
        let vmm = super::assets::vmm_binary()?;
        // The software a template is made of, then the VM's shape.
        let mut software = sha2::Sha256::new();
        for file in [kernel, &vmm] {
            let key = super::assets::file_key(file).map_err(VmError::io("reading", file))?;
            software.update(key.as_bytes());
        }
        software.update(agent_disk.as_os_str().as_encoded_bytes());
        let empty_disks: Vec<bool> = plan.disks[1..].iter().map(|d| d.read_only).collect();
        let mut shape = sha2::Sha256::new();
        shape.update(plan.memory.to_le_bytes());
        shape.update([plan.vcpus]);
        shape.update(
            empty_disks
                .iter()
                .map(|&read_only| u8::from(read_only))
                .collect::<Vec<_>>(),
        );
        shape.update(cmdline.as_bytes());
        let generation = hex::encode(&software.finalize()[..8]);
        let key = format!("{generation}-{}", hex::encode(&shape.finalize()[..8]));
        let templates = self.root().join("templates");
        let path = templates.join(&key);
        if path.is_dir() {
            return Ok(path);
        }
        let failure = templates.join(format!("{key}.failed"));
        if let Some(reason) = recent_failure(&failure) {
            return Err(VmError::Boot(format!(
                "building this VM template failed less than {} minutes ago ({reason}); \
                 the next VM tries again after that, or remove {}",
                RETRY_AFTER.as_secs() / 60,
                failure.display()
            )));
        }
        remove_other_generations(&templates, &generation);
        let started = Instant::now();
        let config = TemplateConfig {
            kernel: kernel.to_path_buf(),
            agent_disk: agent_disk.to_path_buf(),
            cmdline,
            memory: plan.memory,
            vcpus: plan.vcpus,
            empty_disks,
            snapshot_dir: PathBuf::new(),
            timeout_ms: timeout.as_millis() as u64,
        };
        if let Err(error) = build(&config, &path, &vmm) {
            // Best effort: without the record, the next VM only tries again.
            let _ = std::fs::write(&failure, error.to_string());
            return Err(error);
        }
        let _ = std::fs::remove_file(&failure);
        tracing::info!(
            path = %path.display(),
            "VM template built in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(path)
    }
}

/// How long a failed template build keeps the VMs of that template from building it again
/// (they boot meanwhile): a template that cannot be built would otherwise cost every VM
/// start a boot, up to the boot timeout.
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// What the failure record `path` says, if it was written less than [`RETRY_AFTER`] ago.
fn recent_failure(path: &Path) -> Option<String> {
    let age = std::fs::metadata(path)
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()?;
    (age < RETRY_AFTER).then(|| std::fs::read_to_string(path).unwrap_or_default())
}

/// Removes the templates in `templates` made of other software than `generation` (an older
/// kernel, agent or VMM), which no VM restores any more. A VM that already restored one
/// holds its own copy of the memory.
fn remove_other_generations(templates: &Path, generation: &str) {
    let Ok(entries) = std::fs::read_dir(templates) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Staging directories (".KEY.tmp-...") belong to builds in progress.
        if name.starts_with('.') || name.starts_with(&format!("{generation}-")) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(error) = removed {
            tracing::warn!("removing the old VM template {name}: {error}");
        }
    }
}

/// Builds the template at `path` with `vmm` (`twinbox-vmm template`): into a staging
/// directory beside it, renamed in place when complete.
fn build(config: &TemplateConfig, path: &Path, vmm: &Path) -> Result<(), VmError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(VmError::io("creating", parent))?;
    let staging = parent.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        super::unique_suffix()
    ));
    // A short path for the template VM's vsock socket, its console and its empty disks.
    let work = tempfile::Builder::new()
        .prefix("twinbox-template-")
        .tempdir()
        .map_err(VmError::io("creating", &std::env::temp_dir()))?;
    let result = std::fs::create_dir(&staging)
        .map_err(VmError::io("creating", &staging))
        .and_then(|()| {
            let config = TemplateConfig {
                snapshot_dir: staging.clone(),
                ..config.clone()
            };
            run_template_vmm(&config, work.path(), vmm)
        })
        .and_then(|()| match std::fs::rename(&staging, path) {
            // Another VM built the same template meanwhile: use theirs.
            Err(_) if path.is_dir() => Ok(()),
            other => other.map_err(VmError::io("renaming", &staging)),
        });
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Runs `twinbox-vmm template` in `work` and waits for it (at most the boot timeout and a
/// margin); its error output explains a failure.
fn run_template_vmm(config: &TemplateConfig, work: &Path, vmm: &Path) -> Result<(), VmError> {
    let config_path = work.join(CONFIG_FILE);
    let text = serde_json::to_vec(config).map_err(|e| VmError::Settings(e.to_string()))?;
    std::fs::write(&config_path, text).map_err(VmError::io("writing", &config_path))?;
    let child = Command::new(vmm)
        .arg("template")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(VmError::io("starting", vmm))?;
    let timeout = Duration::from_millis(config.timeout_ms) + TIMEOUT_MARGIN;
    match crate::process::wait_output(child, timeout) {
        Ok((status, _, _)) if status.success() => Ok(()),
        Ok((status, _, stderr)) => Err(VmError::Boot(format!(
            "building the VM template snapshot failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        ))),
        Err(error) => Err(VmError::Boot(format!(
            "building the VM template snapshot: the template VM {error}; raise `[vm] \
             boot_timeout_secs`, or set `[vm] start = \"boot\"`"
        ))),
    }
}

/// What the template process may take beyond the boot timeout (its own start and the
/// snapshot's write).
const TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// `twinbox-vmm template CONFIG`: boots the template VM in the config's directory until it
/// has written its snapshot; returns the exit code (0 once the snapshot is complete).
pub fn main(config_path: &Path) -> i32 {
    match boot_template(config_path) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("{message}");
            1
        }
    }
}

fn boot_template(config_path: &Path) -> Result<(), String> {
    let text = std::fs::read(config_path)
        .map_err(|e| format!("reading {}: {e}", config_path.display()))?;
    let config: TemplateConfig = serde_json::from_slice(&text)
        .map_err(|e| format!("reading {}: {e}", config_path.display()))?;
    let work = config_path.parent().unwrap_or(Path::new("/"));
    let mut disks = vec![(config.agent_disk.clone(), true)];
    for (index, read_only) in config.empty_disks.iter().enumerate() {
        let empty = work.join(format!("empty-{index}.img"));
        std::fs::File::create(&empty).map_err(|e| format!("creating {}: {e}", empty.display()))?;
        disks.push((empty, *read_only));
    }
    let mut vm = init::vm_config(
        &config.kernel,
        &config.cmdline,
        config.memory,
        config.vcpus,
        &disks,
        work,
    );
    vm.snapshot_to = Some(config.snapshot_dir.clone());
    let vmm = vmm::Vmm::build(vm).map_err(|e| format!("cannot start the template VM: {e}"))?;
    let handle = vmm.handle();
    let timeout = Duration::from_millis(config.timeout_ms);
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        handle.stop();
    });
    let waiting = "the template VM's snapshot";
    let console = work.join(CONSOLE_LOG);
    let ending = match vmm.run() {
        Ok(exit) if exit.reason == vmm::ExitReason::Snapshotted => return Ok(()),
        Ok(exit) if exit.reason == vmm::ExitReason::Stopped => {
            return Err(format!(
                "after {timeout:?}: {}",
                super::diagnose::explain(waiting, &super::diagnose::Ending::Running, &console)
            ));
        }
        Ok(_) => super::diagnose::Ending::Stopped,
        Err(error) => super::diagnose::Ending::Failed(error.to_string()),
    };
    Err(super::diagnose::explain(waiting, &ending, &console))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vms_with_the_hosts_kernel_restore_a_template() {
        assert!(allowed(&HashMap::new()));
        let kernel = HashMap::from([(
            crate::vm::assets::KERNEL_ANNOTATION.to_string(),
            "/home/me/vmlinux".to_string(),
        )]);
        assert!(!allowed(&kernel), "a container's kernel");
    }

    #[test]
    fn templates_of_older_software_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["aaaa-1111", "aaaa-2222", "bbbb-1111", ".bbbb-3333.tmp-1"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        for name in ["aaaa-3333.failed", "bbbb-2222.failed"] {
            std::fs::write(dir.path().join(name), "it failed").unwrap();
        }
        remove_other_generations(dir.path(), "aaaa");
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".bbbb-3333.tmp-1",
                "aaaa-1111",
                "aaaa-2222",
                "aaaa-3333.failed"
            ]
        );
    }

    #[test]
    fn a_failed_build_is_not_retried_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("k.failed");
        assert_eq!(recent_failure(&record), None);
        std::fs::write(&record, "the guest hung").unwrap();
        assert_eq!(recent_failure(&record).as_deref(), Some("the guest hung"));
        let old = std::time::SystemTime::now() - RETRY_AFTER - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&record)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(recent_failure(&record), None);
    }

    #[test]
    fn the_annotation_overrides_the_config_file() {
        let boot = VmSettings {
            start: Some(VmStart::Boot),
            ..VmSettings::default()
        };
        let none = HashMap::new();
        assert_eq!(
            start_mode(&VmSettings::default(), &none).unwrap(),
            VmStart::Snapshot
        );
        assert_eq!(start_mode(&boot, &none).unwrap(), VmStart::Boot);
        let snapshot = HashMap::from([(START_ANNOTATION.to_string(), "snapshot".to_string())]);
        assert_eq!(start_mode(&boot, &snapshot).unwrap(), VmStart::Snapshot);
        let bad = HashMap::from([(START_ANNOTATION.to_string(), "warm".to_string())]);
        let error = start_mode(&boot, &bad).unwrap_err().to_string();
        assert!(
            error.contains(START_ANNOTATION) && error.contains("snapshot or boot"),
            "{error}"
        );
    }
}
