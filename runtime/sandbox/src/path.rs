//! Resolving paths inside a container root without escaping it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed while resolving one path (as the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Joins `unsafe_path` to `root` as if `root` were `/`: `..` and absolute symlinks inside the
/// root resolve against the root, never above it. Components that do not exist yet are kept
/// literally, so the result can be created as a mount point.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut links = 0;
    // Work list of the components still to resolve, front first.
    let mut rest = VecDeque::new();
    push_components(&mut rest, unsafe_path, false);
    while let Some(part) = rest.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "too many symlinks while resolving {}",
                            unsafe_path.display()
                        ),
                    ));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_components(&mut rest, &target, true);
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Pushes the normal and `..` components of `path` onto `rest` (at the front when `front`).
fn push_components(rest: &mut VecDeque<OsString>, path: &Path, front: bool) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    if front {
        for part in parts.into_iter().rev() {
            rest.push_front(part);
        }
    } else {
        rest.extend(parts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn dotdot_and_absolute_symlinks_stay_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/../../etc", root.join("escape")).unwrap();
        symlink("../../../../tmp", root.join("etc/up")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/escape/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/etc/up/x")).unwrap(),
            root.join("tmp/x")
        );
        assert_eq!(
            secure_join(root, Path::new("../../proc")).unwrap(),
            root.join("proc")
        );
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let err = secure_join(dir.path(), Path::new("/a/x")).unwrap_err();
        assert!(err.to_string().contains("too many symlinks"));
    }
}
