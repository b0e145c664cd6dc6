//! What every VM boots: the guest kernel and the guest agent, found
//! from the container's annotations, the config file, the build tree or the install paths;
//! and the host checks that tell a user plainly why VMs cannot run here.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::VmError;
use crate::config::VmSettings;

/// Annotation naming the guest kernel for one container (`--kernel` sets it).
pub const KERNEL_ANNOTATION: &str = "io.twinbox.vm.kernel";

/// Where an installed twinbox keeps its guest kernel, agent and VMM binary.
const INSTALL_DIRS: [&str; 2] = ["/usr/local/lib/twinbox", "/usr/lib/twinbox"];
/// The guest kernel's file name in the build tree and the install directories.
const KERNEL_FILE: &str = "vmlinux";
/// The guest agent's file name.
const AGENT_FILE: &str = "twinbox-agent";
/// The VMM process's binary.
const VMM_FILE: &str = "twinbox-vmm";

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The guest kernel in the build tree of the running binary: `target/guest-kernel/current`,
/// two levels above `target/<triple>/<profile>/twinbox`.
fn build_tree_kernel() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|dir| dir.join("guest-kernel/current").join(KERNEL_FILE))
        .find(|path| path.is_file())
}

fn first_existing(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

fn describe(candidates: &[PathBuf]) -> String {
    candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The guest kernel: the container's `io.twinbox.vm.kernel` annotation, the config file's
/// `[vm] kernel`, the build tree's `target/guest-kernel/current/vmlinux`, or an installed
/// one.
pub fn kernel(
    settings: &VmSettings,
    annotations: &HashMap<String, String>,
) -> Result<PathBuf, VmError> {
    let chosen = annotations
        .get(KERNEL_ANNOTATION)
        .map(PathBuf::from)
        .or_else(|| settings.kernel.clone());
    if let Some(path) = chosen {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(VmError::Kernel(format!(
                "the guest kernel {} does not exist; give an existing vmlinux or bzImage \
                 (--kernel, the {KERNEL_ANNOTATION} annotation or `[vm] kernel` in {})",
                path.display(),
                crate::config::Config::path().display()
            )))
        };
    }
    let mut candidates: Vec<PathBuf> = build_tree_kernel().into_iter().collect();
    candidates.extend(INSTALL_DIRS.iter().map(|d| Path::new(d).join(KERNEL_FILE)));
    first_existing(&candidates).ok_or_else(|| {
        VmError::Kernel(format!(
            "no guest kernel found (looked for {}); build twinbox's with `make kernel`, \
             install one, or give one with --kernel or `[vm] kernel` in {}",
            describe(&candidates),
            crate::config::Config::path().display()
        ))
    })
}

/// The guest agent: the config file's `[vm] agent`, next to the running binary, or
/// installed.
pub fn agent(settings: &VmSettings) -> Result<PathBuf, VmError> {
    if let Some(path) = &settings.agent {
        return if path.is_file() {
            Ok(path.clone())
        } else {
            Err(VmError::Agent(format!(
                "the guest agent {} given in {} does not exist",
                path.display(),
                crate::config::Config::path().display()
            )))
        };
    }
    find_companion(AGENT_FILE, "the guest agent").map_err(VmError::Agent)
}

/// A binary built and installed with twinbox (`what`, in errors): next to the running
/// binary, else in the install directories; the error says where it looked.
fn find_companion(file: &str, what: &str) -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(file));
    }
    candidates.extend(INSTALL_DIRS.iter().map(|d| Path::new(d).join(file)));
    first_existing(&candidates).ok_or_else(|| {
        format!(
            "{what} ({file}) was not found (looked for {}); it is built with twinbox (`cargo \
             build --workspace`) and installed next to it",
            describe(&candidates)
        )
    })
}

/// The `twinbox-vmm` binary that runs jailed as each VM's VMM process.
pub fn vmm_binary() -> Result<PathBuf, VmError> {
    find_companion(VMM_FILE, "the VMM binary").map_err(VmError::Host)
}

/// A cheap key for a file's identity and version: path, device, inode, size, mtime and ctime.
pub fn file_key(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let mut hash = sha2::Sha256::new();
    hash.update(path.as_os_str().as_encoded_bytes());
    hash.update(meta.dev().to_le_bytes());
    hash_file_version(&mut hash, &meta);
    Ok(hex::encode(&hash.finalize()[..12]))
}

/// Feeds what changes whenever a file's content may have changed (inode, size, device
/// number, mtime and ctime to the nanosecond) into `hash`: the cheap version stamp that
/// [`file_key`] and the content key of rootfs directories share.
pub(crate) fn hash_file_version(hash: &mut sha2::Sha256, meta: &std::fs::Metadata) {
    for value in [
        meta.ino(),
        meta.size(),
        meta.rdev(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ] {
        hash.update(value.to_le_bytes());
    }
}

/// Writes `path` atomically: built in a temporary file next to it, then renamed, so that
/// concurrent builders of the same content never expose a partial file.
pub fn write_atomic_with(
    path: &Path,
    build: impl FnOnce(&Path) -> Result<(), VmError>,
) -> Result<(), VmError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(VmError::io("creating", dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        super::unique_suffix()
    ));
    let result = build(&tmp)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(VmError::io("renaming", &tmp)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Checks that this host can run the guest kernel: a usable /dev/kvm, and on PVM hosts a
/// kernel with PVM guest support.
pub fn check_host(kernel: &Path) -> Result<(), VmError> {
    vmm::vstate::vm::open_kvm(Path::new(KVM_DEVICE)).map_err(|e| VmError::Host(e.to_string()))?;
    vmm::loader::check_pvm_guest(kernel, vmm::vstate::vm::host_is_pvm())
        .map_err(|e| VmError::Host(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_kernel_must_exist_and_wins() {
        let dir = tempfile::tempdir().unwrap();
        let kernel_file = dir.path().join("vmlinux");
        std::fs::write(&kernel_file, b"k").unwrap();
        let settings = VmSettings {
            kernel: Some(dir.path().join("configured")),
            ..VmSettings::default()
        };
        let annotations = HashMap::from([(
            KERNEL_ANNOTATION.to_string(),
            kernel_file.display().to_string(),
        )]);
        assert_eq!(kernel(&settings, &annotations).unwrap(), kernel_file);
        let error = kernel(&settings, &HashMap::new()).unwrap_err().to_string();
        assert!(
            error.contains("configured") && error.contains("does not exist"),
            "{error}"
        );
    }
}
