//! Kernel and identity checks: uname, boot id, machine id, namespaces, uid map.

use std::collections::BTreeMap;

use super::read_trimmed;
use crate::observations::{CloneIdentity, KernelIdentity, UserView};

/// The namespace kinds listed under `/proc/self/ns`.
const NAMESPACE_KINDS: [&str; 8] = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];

/// `uname(2)` fields: (sysname, nodename, release, version, machine).
fn uname() -> Result<[String; 5], String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid, writable utsname.
    if unsafe { libc::uname(&mut name) } != 0 {
        return Err(format!("uname: {}", crate::errno::last_errno_name()));
    }
    let field = |chars: &[libc::c_char]| {
        let bytes: Vec<u8> = chars
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok([
        field(&name.sysname),
        field(&name.nodename),
        field(&name.release),
        field(&name.version),
        field(&name.machine),
    ])
}

/// The running kernel's boot id, if readable.
pub fn boot_id() -> Option<String> {
    read_trimmed("/proc/sys/kernel/random/boot_id").ok()
}

/// Which kernel this is.
pub fn identity() -> Result<KernelIdentity, String> {
    let [_, _, release, version, machine] = uname()?;
    Ok(KernelIdentity {
        release,
        version,
        machine,
        proc_version: read_trimmed("/proc/version").ok(),
        boot_id: boot_id(),
    })
}

/// Host name and machine id.
pub fn clone_identity() -> Result<CloneIdentity, String> {
    let [_, hostname, ..] = uname()?;
    let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| read_trimmed(path).ok().filter(|id| !id.is_empty()));
    Ok(CloneIdentity {
        hostname,
        machine_id,
    })
}

/// `/proc/self/ns/*` link targets by kind; kinds this kernel lacks are left out.
pub fn namespaces() -> Result<BTreeMap<String, String>, String> {
    let links: BTreeMap<String, String> = NAMESPACE_KINDS
        .iter()
        .filter_map(|kind| {
            let target = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok()?;
            Some((kind.to_string(), target.to_string_lossy().into_owned()))
        })
        .collect();
    if links.is_empty() {
        return Err("/proc/self/ns: no namespace link is readable (is /proc mounted?)".into());
    }
    Ok(links)
}

/// Uids and the user namespace mapping.
pub fn user() -> Result<UserView, String> {
    let uid_map = read_trimmed("/proc/self/uid_map")?
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    // SAFETY: getuid and geteuid cannot fail and touch no memory.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    Ok(UserView { uid, euid, uid_map })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_matches_proc() {
        let kernel = identity().unwrap();
        let osrelease = read_trimmed("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(kernel.release, osrelease);
        assert_eq!(kernel.boot_id.as_deref().map(str::len), Some(36));
        let ns = namespaces().unwrap();
        assert!(ns["pid"].starts_with("pid:["));
        let user = user().unwrap();
        assert!(!user.uid_map.is_empty());
    }
}
