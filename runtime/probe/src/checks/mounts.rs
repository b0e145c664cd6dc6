//! `/proc/self/mountinfo` parsing (shared by the mount, cgroup and release_agent checks).

use crate::observations::MountEntry;

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line:
/// `id parent major:minor root mount_point options [optional...] - fstype source super_options`.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (before, after) = line.split_once(" - ")?;
    let mut left = before.split(' ');
    let root = left.nth(3)?;
    let mount_point = left.next()?;
    let options = left.next()?;
    let mut right = after.split(' ');
    Some(MountEntry {
        fstype: unescape(right.next()?),
        source: unescape(right.next()?),
        super_options: unescape(right.next().unwrap_or("")),
        root: unescape(root),
        mount_point: unescape(mount_point),
        options: options.to_string(),
    })
}

/// Parses a whole mountinfo file.
pub fn read_mountinfo(path: &str) -> Result<Vec<MountEntry>, String> {
    let text = super::read_trimmed(path)?;
    text.lines()
        .map(|line| parse_line(line).ok_or_else(|| format!("{path}: unparsable line {line:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bind_mount_with_optional_fields_and_escapes() {
        let line = "812 790 254:1 /tmp/bundle\\040x/rootfs / rw,relatime master:1 - ext4 \
                    /dev/vda1 rw,errors=remount-ro";
        let entry = parse_line(line).unwrap();
        assert_eq!(entry.root, "/tmp/bundle x/rootfs");
        assert_eq!(entry.mount_point, "/");
        assert_eq!(entry.fstype, "ext4");
        assert_eq!(entry.source, "/dev/vda1");
        assert_eq!(entry.options, "rw,relatime");
        assert_eq!(entry.super_options, "rw,errors=remount-ro");
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn reads_own_mountinfo() {
        let mounts = read_mountinfo("/proc/self/mountinfo").unwrap();
        assert!(mounts.iter().any(|m| m.fstype == "proc"));
    }
}
