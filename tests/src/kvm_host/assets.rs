//! L1's kernel and KVM modules, from Debian's cloud kernel package, fetched with
//! `apt-get download` once and cached under `target/kvm-host/<package>/`.

use super::{KvmHostError, io_error};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The meta package whose current dependency is L1's kernel.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules L1 loads (after their dependencies): KVM on emulated AMD SVM; vhost-vsock, so that
/// L2 VMMs such as QEMU can give their guests a vsock device; virtio-blk over PCI for the job's
/// disks; overlayfs, so that containers get overlay roots there as on any real host (without
/// it the engine copies the whole image for every container, which skews timings).
const WANTED_MODULES: [&str; 5] = [
    "kvm_amd",
    "vhost_vsock",
    "virtio_pci",
    "virtio_blk",
    "overlay",
];
/// Lists `WANTED_MODULES` in a cache directory: a cache made for another list is stale.
const WANTED_FILE: &str = "modules.wanted";

/// The cached L1 kernel and its modules.
#[derive(Debug, Clone)]
pub struct L1Assets {
    /// The kernel image (bzImage).
    pub kernel: PathBuf,
    /// Decompressed modules in load order.
    pub modules: Vec<PathBuf>,
    /// The kernel package these came from.
    pub package: String,
}

impl L1Assets {
    /// Returns the cached assets in `cache`, downloading and unpacking the current cloud
    /// kernel package first when they are missing. Safe to call from parallel processes.
    pub fn prepare(cache: &Path) -> Result<Self, KvmHostError> {
        let package = current_kernel_package()?;
        let dir = cache.join(&package);
        if let Some(assets) = Self::load(&dir, &package) {
            return Ok(assets);
        }
        fs::create_dir_all(cache).map_err(io_error(format!("creating {}", cache.display())))?;
        let lock_path = cache.join(".lock");
        let lock_file = fs::File::create(&lock_path)
            .map_err(io_error(format!("creating {}", lock_path.display())))?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| {
                io_error(format!("locking {}", lock_path.display()))(errno.into())
            })?;
        // Another process may have finished the download while we waited for the lock.
        if let Some(assets) = Self::load(&dir, &package) {
            return Ok(assets);
        }
        eprintln!(
            "kvm-host: fetching L1 kernel {package} (once, cached in {})",
            dir.display()
        );
        let staging = cache.join(format!("{package}.tmp"));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging)
            .map_err(io_error(format!("creating {}", staging.display())))?;
        let result = unpack(&package, &staging).and_then(|()| {
            // A stale cache (made for other modules) gives way.
            let _ = fs::remove_dir_all(&dir);
            fs::rename(&staging, &dir).map_err(io_error(format!(
                "renaming {} to {}",
                staging.display(),
                dir.display()
            )))
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result?;
        Self::load(&dir, &package).ok_or_else(|| KvmHostError::Assets {
            what: format!("L1 kernel in {}", dir.display()),
            detail: "the unpacked files vanished; delete the directory and retry".into(),
        })
    }

    /// The assets in `dir` if it holds a complete unpack (written by [`unpack`]).
    fn load(dir: &Path, package: &str) -> Option<Self> {
        let wanted = fs::read_to_string(dir.join(WANTED_FILE)).ok()?;
        if wanted != WANTED_MODULES.join("\n") {
            return None;
        }
        let order = fs::read_to_string(dir.join("modules.order")).ok()?;
        let modules = order.lines().map(|name| dir.join(name)).collect::<Vec<_>>();
        let kernel = dir.join("vmlinuz");
        (kernel.is_file() && modules.iter().all(|m| m.is_file())).then(|| Self {
            kernel,
            modules,
            package: package.to_string(),
        })
    }
}

/// Runs a host tool and returns its stdout, or an `Assets` error naming `what` failed.
fn run_tool(command: &mut Command, what: &str) -> Result<Vec<u8>, KvmHostError> {
    let output = command.output().map_err(|error| KvmHostError::Assets {
        what: what.to_string(),
        detail: format!("cannot run {:?}: {error}", command.get_program()),
    })?;
    if !output.status.success() {
        return Err(KvmHostError::Assets {
            what: what.to_string(),
            detail: format!(
                "{:?} failed ({}): {}",
                command.get_program(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(output.stdout)
}

/// [`run_tool`] for tools that print text.
fn run_tool_text(command: &mut Command, what: &str) -> Result<String, KvmHostError> {
    run_tool(command, what).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// The versioned kernel package that the cloud meta package currently depends on, e.g.
/// `linux-image-6.1.0-56-cloud-amd64`.
fn current_kernel_package() -> Result<String, KvmHostError> {
    let what = format!("finding the kernel package of {KERNEL_META_PACKAGE}");
    let depends = run_tool_text(
        Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]),
        &what,
    )?;
    depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|dep| dep.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| KvmHostError::Assets {
            what,
            detail: "apt-cache lists no linux-image dependency; run `apt-get update`".into(),
        })
}

/// Downloads `package` into `dir`, keeps its kernel and the wanted modules (decompressed, in
/// load order, listed in `modules.order`) and deletes the rest.
fn unpack(package: &str, dir: &Path) -> Result<(), KvmHostError> {
    let what = format!("unpacking {package}");
    run_tool(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(dir),
        &format!("downloading {package} (apt-get download; is the Debian mirror reachable?)"),
    )?;
    let deb =
        find_file(dir, |name| name.ends_with(".deb")).ok_or_else(|| KvmHostError::Assets {
            what: what.clone(),
            detail: format!("apt-get download left no .deb in {}", dir.display()),
        })?;
    let tree = dir.join("tree");
    run_tool(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        &what,
    )?;
    let vmlinuz =
        find_file(&tree.join("boot"), |name| name.starts_with("vmlinuz-")).ok_or_else(|| {
            KvmHostError::Assets {
                what: what.clone(),
                detail: "the package has no boot/vmlinuz-*".into(),
            }
        })?;
    fs::rename(&vmlinuz, dir.join("vmlinuz")).map_err(io_error("moving vmlinuz".into()))?;

    let mut available = HashMap::new();
    index_modules(&tree.join("lib/modules"), &mut available)?;
    let mut order = Vec::new();
    for module in WANTED_MODULES {
        resolve_module(module, &available, &mut order, &what)?;
    }
    let mut names = Vec::new();
    for (index, module) in order.iter().enumerate() {
        let name = format!("{index:02}-{module}.ko");
        let source = &available[module];
        let bytes = decompress_module(source, &what)?;
        fs::write(dir.join(&name), bytes).map_err(io_error(format!("writing {name}")))?;
        names.push(name);
    }
    fs::write(dir.join("modules.order"), names.join("\n"))
        .map_err(io_error("writing modules.order".into()))?;
    fs::write(dir.join(WANTED_FILE), WANTED_MODULES.join("\n"))
        .map_err(io_error(format!("writing {WANTED_FILE}")))?;
    fs::remove_dir_all(&tree).map_err(io_error(format!("removing {}", tree.display())))?;
    fs::remove_file(&deb).map_err(io_error(format!("removing {}", deb.display())))?;
    Ok(())
}

fn find_file(dir: &Path, matches: impl Fn(&str) -> bool) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| matches(&entry.file_name().to_string_lossy()))
        .map(|entry| entry.path())
}

/// Module name (with `_`, as the kernel spells it) of a module file name such as
/// `kvm-amd.ko.xz`.
fn module_name(file_name: &str) -> Option<String> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))
        .map(|stem| stem.replace('-', "_"))
}

fn index_modules(dir: &Path, found: &mut HashMap<String, PathBuf>) -> Result<(), KvmHostError> {
    for entry in fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, found)?;
        } else if let Some(name) = module_name(&entry.file_name().to_string_lossy()) {
            found.insert(name, path);
        }
    }
    Ok(())
}

/// Appends `module` to `order` after its dependencies (from `modinfo -F depends`).
fn resolve_module(
    module: &str,
    available: &HashMap<String, PathBuf>,
    order: &mut Vec<String>,
    what: &str,
) -> Result<(), KvmHostError> {
    if order.iter().any(|m| m == module) {
        return Ok(());
    }
    let path = available.get(module).ok_or_else(|| KvmHostError::Assets {
        what: what.to_string(),
        detail: format!("the package has no module {module}"),
    })?;
    let depends = run_tool_text(
        Command::new("modinfo").args(["-F", "depends"]).arg(path),
        &format!("{what}: reading the dependencies of {module} (modinfo, package kmod)"),
    )?;
    for dependency in depends.trim().split(',').filter(|d| !d.is_empty()) {
        resolve_module(&dependency.replace('-', "_"), available, order, what)?;
    }
    order.push(module.to_string());
    Ok(())
}

fn decompress_module(path: &Path, what: &str) -> Result<Vec<u8>, KvmHostError> {
    let name = path.to_string_lossy();
    let tool = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")]
        .into_iter()
        .find_map(|(suffix, tool)| name.ends_with(suffix).then_some(tool));
    match tool {
        Some(tool) => run_tool(
            Command::new(tool).arg("-dc").arg(path),
            &format!("{what}: decompressing {name}"),
        ),
        None => fs::read(path).map_err(io_error(format!("reading {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::module_name;

    #[test]
    fn module_names_use_underscores_and_drop_compression_suffixes() {
        assert_eq!(module_name("kvm-amd.ko").as_deref(), Some("kvm_amd"));
        assert_eq!(
            module_name("vhost_vsock.ko.xz").as_deref(),
            Some("vhost_vsock")
        );
        assert_eq!(module_name("kvm.ko.zst").as_deref(), Some("kvm"));
        assert_eq!(module_name("modules.order"), None);
    }
}
