//! File copy in and out of the workload's root filesystem (tar archives).

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use twinbox_protocol::{AgentError, ErrorKind};

use crate::session::failed;

/// Checks that `path` is absolute and normal (no `..`).
fn checked(path: &str) -> Result<PathBuf, AgentError> {
    let path = Path::new(path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(AgentError::new(
            ErrorKind::Invalid,
            format!("{path:?} must be an absolute path without '..'"),
        ));
    }
    Ok(path.to_path_buf())
}

/// Enters the mount namespace of the workload's init, whose root becomes ours: paths (and
/// symlinks in them) then resolve inside the workload's root filesystem and cannot leave
/// it. Only for a process that serves one request and exits.
pub fn enter_workload_root(pid: i32) -> Result<(), AgentError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(failed("opening the workload's mount namespace"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(failed("entering the workload's mount namespace"))
}

/// Unpacks the archive that follows into the directory `path` (created if missing).
pub fn copy_in(archive: impl Read, path: &str) -> Result<(), AgentError> {
    let target = checked(path)?;
    std::fs::create_dir_all(&target).map_err(failed(&format!("creating {}", target.display())))?;
    let mut archive = tar::Archive::new(archive);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    archive
        .unpack(&target)
        .map_err(failed(&format!("unpacking into {}", target.display())))
}

/// Packs `path` (a file, or a directory with its contents) as a tar archive whose entries
/// start with its base name.
pub fn copy_out(out: impl Write, path: &str) -> Result<(), AgentError> {
    let source = checked(path)?;
    let meta =
        std::fs::symlink_metadata(&source).map_err(failed(&format!("{}", source.display())))?;
    let name = source
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let packed = if meta.is_dir() {
        builder.append_dir_all(&name, &source)
    } else {
        builder.append_path_with_name(&source, &name)
    };
    packed
        .and_then(|()| builder.into_inner().and_then(|mut out| out.flush()))
        .map_err(failed(&format!("packing {}", source.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::write(source.join("sub/file"), "content").unwrap();
        std::os::unix::fs::symlink("sub/file", source.join("link")).unwrap();
        let mut archive = Vec::new();
        copy_out(&mut archive, source.to_str().unwrap()).unwrap();
        let target = dir.path().join("dst");
        copy_in(archive.as_slice(), target.to_str().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("src/sub/file")).unwrap(),
            "content"
        );
        assert_eq!(
            std::fs::read_link(target.join("src/link")).unwrap(),
            Path::new("sub/file")
        );

        let mut single = Vec::new();
        copy_out(&mut single, source.join("sub/file").to_str().unwrap()).unwrap();
        copy_in(single.as_slice(), target.to_str().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("file")).unwrap(),
            "content"
        );
    }

    #[test]
    fn relative_and_climbing_paths_are_refused() {
        for bad in ["relative", "/a/../../etc"] {
            let error = copy_out(Vec::new(), bad).unwrap_err();
            assert_eq!(error.kind, ErrorKind::Invalid, "{bad}");
            assert!(copy_in(std::io::empty(), bad).is_err());
        }
    }
}
