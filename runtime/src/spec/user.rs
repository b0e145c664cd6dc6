//! Resolving an image's `User` (`name`, `uid`, `name:group`, `uid:gid`) through the image's
//! own /etc/passwd and /etc/group, read inside the root filesystem (never the host's).

use std::io::Read;
use std::path::Path;

use crate::image::fsutil::Root;

use super::SpecError;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership).
    pub additional_gids: Vec<u32>,
    /// Home directory, if the user is in /etc/passwd.
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// At most this much of /etc/passwd or /etc/group is read (a hostile image could make
/// them huge).
const MAX_DB_SIZE: u64 = 16 << 20;

fn read_db(root: &Root, path: &str) -> Result<Option<String>, SpecError> {
    let mut file = match root.open_file(Path::new(path)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SpecError::User(format!(
                "cannot open the image's {path}: {e}"
            )));
        }
    };
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_DB_SIZE)
        .read_to_end(&mut bytes)
        .map_err(|e| SpecError::User(format!("cannot read the image's {path}: {e}")))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || line.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || line.starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `user` (empty means root) in the root filesystem at `rootfs`.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser, SpecError> {
    let user = if user.is_empty() { "0" } else { user };
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let root = Root::open(rootfs).map_err(|e| {
        SpecError::User(format!(
            "cannot open root filesystem {}: {e}",
            rootfs.display()
        ))
    })?;
    let passwd = read_db(&root, "etc/passwd")?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_db(&root, "etc/group")?
        .map(|t| parse_group(&t))
        .unwrap_or_default();

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid),
        Err(_) => Some(passwd.iter().find(|p| p.name == user_part).ok_or_else(|| {
            SpecError::User(format!(
                "user {user_part:?} is not in the image's /etc/passwd; use a numeric uid or a user the image defines"
            ))
        })?),
    };
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.expect("name lookups fail above").uid,
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .ok_or_else(|| {
                    SpecError::User(format!(
                        "group {g:?} is not in the image's /etc/group; use a numeric gid or a group the image defines"
                    ))
                })?
                .gid,
        },
        None => entry.map(|e| e.gid).unwrap_or(0),
    };
    let mut additional_gids = Vec::new();
    if group_part.is_none()
        && let Some(entry) = entry
    {
        for group in &groups {
            if group.members.contains(&entry.name)
                && group.gid != gid
                && !additional_gids.contains(&group.gid)
            {
                additional_gids.push(group.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.map(|e| e.home.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app\naudio:x:29:other,app\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_resolve_through_the_image_files() {
        let dir = rootfs();
        let app = resolve_user(dir.path(), "app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1001));
        assert_eq!(app.additional_gids, [10, 29]);
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        let explicit = resolve_user(dir.path(), "app:wheel").unwrap();
        assert_eq!((explicit.uid, explicit.gid), (1000, 10));
        assert!(explicit.additional_gids.is_empty());
        let numeric = resolve_user(dir.path(), "4242:77").unwrap();
        assert_eq!((numeric.uid, numeric.gid, numeric.home), (4242, 77, None));
        assert_eq!(resolve_user(dir.path(), "").unwrap().uid, 0);
        assert!(resolve_user(dir.path(), "nobody-here").is_err());
        assert!(resolve_user(dir.path(), "app:nogroup").is_err());
    }

    #[test]
    fn a_passwd_symlink_to_the_host_is_not_followed_out() {
        let dir = rootfs();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::remove_file(dir.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), dir.path().join("etc/passwd"))
            .unwrap();
        assert!(resolve_user(dir.path(), "evil").is_err());
    }
}
