//! `linux.cgroupsPath` as engines pass it: a cgroupfs path ("/default/web") or systemd's
//! "slice:prefix:name" form.

use std::path::{Path, PathBuf};

use super::CgroupError;

/// A resolved container cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupsPath {
    /// The path inside every hierarchy, absolute ("/system.slice/docker-abc.scope").
    pub path: PathBuf,
    /// The config used systemd's "slice:prefix:name" form.
    pub systemd_style: bool,
}

/// Resolves `linux.cgroupsPath` for container `id`.
///
/// `systemd` is the runtime's `--systemd-cgroup` flag. twinbox manages systemd-style paths
/// through cgroupfs directly at the path systemd would use (slices expanded as systemd does),
/// which is what is possible without systemd and what keeps hosts without it working.
pub fn resolve_cgroups_path(
    configured: Option<&Path>,
    id: &str,
    systemd: bool,
) -> Result<CgroupsPath, CgroupError> {
    let text = configured
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let looks_systemd = !text.starts_with('/') && text.split(':').count() == 3;
    if systemd || looks_systemd {
        if text.is_empty() {
            return Ok(CgroupsPath {
                path: expand_slice("system.slice")?.join(format!("twinbox-{id}.scope")),
                systemd_style: true,
            });
        }
        let parts: Vec<&str> = text.split(':').collect();
        let [slice, prefix, name] = parts.as_slice() else {
            return Err(CgroupError::Unsupported(format!(
                "cgroupsPath {text:?} is not of the form slice:prefix:name that \
                 --systemd-cgroup expects"
            )));
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let name = if name.is_empty() { id } else { name };
        let unit = if name.ends_with(".slice") {
            // A slice given as the name is used as the container's own cgroup.
            return Ok(CgroupsPath {
                path: expand_slice(name)?,
                systemd_style: true,
            });
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        return Ok(CgroupsPath {
            path: expand_slice(slice)?.join(unit),
            systemd_style: true,
        });
    }
    let path = if text.is_empty() {
        PathBuf::from("/twinbox").join(id)
    } else {
        Path::new("/").join(&text)
    };
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(CgroupError::Unsupported(format!(
            "cgroupsPath {text:?} must not contain \"..\""
        )));
    }
    Ok(CgroupsPath {
        path,
        systemd_style: false,
    })
}

/// "a-b-c.slice" -> "/a.slice/a-b.slice/a-b-c.slice" (systemd's slice nesting);
/// "-.slice" is the root.
fn expand_slice(slice: &str) -> Result<PathBuf, CgroupError> {
    let invalid = || CgroupError::Unsupported(format!("invalid systemd slice name {slice:?}"));
    let stem = slice.strip_suffix(".slice").ok_or_else(invalid)?;
    if stem == "-" {
        return Ok(PathBuf::from("/"));
    }
    if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') {
        return Err(invalid());
    }
    let mut path = PathBuf::from("/");
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err(invalid());
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths() {
        let p = resolve_cgroups_path(None, "web", false).unwrap();
        assert_eq!(p.path, PathBuf::from("/twinbox/web"));
        let p = resolve_cgroups_path(Some(Path::new("/default/web")), "web", false).unwrap();
        assert_eq!(p.path, PathBuf::from("/default/web"));
        assert!(!p.systemd_style);
        let p = resolve_cgroups_path(Some(Path::new("libpod_parent/x")), "x", false).unwrap();
        assert_eq!(p.path, PathBuf::from("/libpod_parent/x"));
        assert!(resolve_cgroups_path(Some(Path::new("/a/../../b")), "x", false).is_err());
    }

    #[test]
    fn systemd_paths_expand_slices() {
        let p = resolve_cgroups_path(
            Some(Path::new("machine-libpod_pod_1.slice:libpod:abc")),
            "abc",
            true,
        )
        .unwrap();
        assert_eq!(
            p.path,
            PathBuf::from("/machine.slice/machine-libpod_pod_1.slice/libpod-abc.scope")
        );
        assert!(p.systemd_style);
        // Detected without the flag too, as containerd's SystemdCgroup passes it.
        let p =
            resolve_cgroups_path(Some(Path::new("system.slice:cri:xyz")), "xyz", false).unwrap();
        assert_eq!(p.path, PathBuf::from("/system.slice/cri-xyz.scope"));
        let p = resolve_cgroups_path(Some(Path::new(":twinbox:")), "id1", true).unwrap();
        assert_eq!(p.path, PathBuf::from("/system.slice/twinbox-id1.scope"));
        let p = resolve_cgroups_path(Some(Path::new("-.slice:p:n")), "n", true).unwrap();
        assert_eq!(p.path, PathBuf::from("/p-n.scope"));
        let err = resolve_cgroups_path(Some(Path::new("bad:x")), "n", true).unwrap_err();
        assert!(err.to_string().contains("slice:prefix:name"));
        assert!(resolve_cgroups_path(Some(Path::new("a--b.slice:p:n")), "n", true).is_err());
    }
}
