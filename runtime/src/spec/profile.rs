//! Seccomp profile files given with `--security-opt seccomp=PROFILE.json`: the OCI
//! `linux.seccomp` object, or a Docker/moby profile (`archMap`, and rules conditional on the
//! container's capabilities, architecture and kernel through `includes`/`excludes`), which is
//! resolved here for this container the way Docker resolves it.

use std::path::Path;

use oci_spec::runtime::{Capability, LinuxSeccomp};
use serde_json::Value;

use super::SpecError;

/// The seccomp architecture name of this machine and the name Docker profiles use for it in
/// `includes.arches` (Go's GOARCH).
fn native_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("SCMP_ARCH_X86_64", "amd64"),
        "aarch64" => ("SCMP_ARCH_AARCH64", "arm64"),
        "x86" => ("SCMP_ARCH_X86", "386"),
        "arm" => ("SCMP_ARCH_ARM", "arm"),
        "riscv64" => ("SCMP_ARCH_RISCV64", "riscv64"),
        "s390x" => ("SCMP_ARCH_S390X", "s390x"),
        "powerpc64" => ("SCMP_ARCH_PPC64LE", "ppc64le"),
        other => (other, other),
    }
}

/// (major, minor) of a "5.10" or "6.1.0-18-amd64" kernel version.
fn kernel_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Reads the profile at `path` for a container with capabilities `caps`.
pub fn load(path: &Path, caps: &[Capability]) -> Result<LinuxSeccomp, SpecError> {
    let bad = |reason: String| SpecError::Profile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let profile: Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("is not JSON: {e}")))?;
    let kernel = nix::sys::utsname::uname()
        .ok()
        .and_then(|u| kernel_version(&u.release().to_string_lossy()));
    resolve(profile, caps, kernel).map_err(bad)
}

/// Resolves a Docker profile's `archMap`, `includes` and `excludes` (an OCI profile passes
/// through unchanged) and parses the result.
fn resolve(
    mut profile: Value,
    caps: &[Capability],
    kernel: Option<(u32, u32)>,
) -> Result<LinuxSeccomp, String> {
    let object = profile
        .as_object_mut()
        .ok_or("is not a JSON object with defaultAction and syscalls")?;
    let (seccomp_arch, go_arch) = native_arch();
    if let Some(arch_map) = object.remove("archMap")
        && !object.contains_key("architectures")
    {
        let entry = arch_map
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["architecture"] == seccomp_arch);
        if let Some(entry) = entry {
            let mut arches = vec![entry["architecture"].clone()];
            arches.extend(
                entry["subArchitectures"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            object.insert("architectures".into(), Value::Array(arches));
        }
    }
    let cap_names: Vec<Value> = caps
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    let holds = |condition: &Value, any: bool| -> bool {
        // includes: every listed cap is held, the arch is listed, the kernel is new enough.
        // excludes (`any`): some listed cap is held, or the arch is listed.
        let listed_caps = condition["caps"].as_array().cloned().unwrap_or_default();
        let arches = condition["arches"].as_array().cloned().unwrap_or_default();
        let arch_listed = arches.iter().any(|a| a == go_arch || a == seccomp_arch);
        if any {
            listed_caps.iter().any(|c| cap_names.contains(c)) || arch_listed
        } else {
            let min_kernel = condition["minKernel"].as_str().and_then(kernel_version);
            listed_caps.iter().all(|c| cap_names.contains(c))
                && (arches.is_empty() || arch_listed)
                && match (min_kernel, kernel) {
                    (Some(min), Some(running)) => running >= min,
                    _ => true,
                }
        }
    };
    if let Some(Value::Array(rules)) = object.get_mut("syscalls") {
        rules.retain(|rule| {
            let included = rule.get("includes").is_none_or(|c| holds(c, false));
            let excluded = rule.get("excludes").is_some_and(|c| holds(c, true));
            included && !excluded
        });
        for rule in rules.iter_mut() {
            if let Some(rule) = rule.as_object_mut() {
                for key in ["includes", "excludes", "comment"] {
                    rule.remove(key);
                }
                // Docker writes "args": null.
                if rule.get("args").is_some_and(Value::is_null) {
                    rule.remove("args");
                }
            }
        }
    }
    serde_json::from_value(profile).map_err(|e| format!("is not a seccomp profile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Arch, LinuxSeccompAction};
    use serde_json::json;

    fn names(seccomp: &LinuxSeccomp) -> Vec<String> {
        seccomp
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn oci_profiles_pass_through() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        });
        let seccomp = resolve(profile, &[], None).unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(names(&seccomp), ["mkdir"]);
    }

    #[test]
    fn docker_conditions_follow_caps_arch_and_kernel() {
        let (seccomp_arch, go_arch) = native_arch();
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {"architecture": "SCMP_ARCH_MIPS", "subArchitectures": []},
                {"architecture": seccomp_arch, "subArchitectures": ["SCMP_ARCH_X86"]},
            ],
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": null, "comment": ""},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["chown"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": [go_arch]}},
                {"names": ["s390_only"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": ["s390x-not-here"]}},
                {"names": ["new_call"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"minKernel": "6.1"}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            ],
        });
        let plain = resolve(profile.clone(), &[Capability::Chown], Some((5, 10))).unwrap();
        assert_eq!(names(&plain), ["read", "chown", "clone"]);
        let arches = plain.architectures().clone().unwrap();
        assert_eq!(arches.len(), 2);
        assert!(arches.contains(&Arch::ScmpArchX86));
        let admin = resolve(profile, &[Capability::SysAdmin], Some((6, 1))).unwrap();
        assert_eq!(names(&admin), ["read", "mount", "chown", "new_call"]);
    }

    #[test]
    fn unreadable_and_malformed_profiles_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(&dir.path().join("none.json"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("none.json") && missing.contains("cannot be read"),
            "{missing}"
        );
        let path = dir.path().join("bad.json");
        std::fs::write(&path, r#"{"defaultAction": "SCMP_ACT_BOGUS"}"#).unwrap();
        let bad = load(&path, &[]).unwrap_err().to_string();
        assert!(bad.contains("is not a seccomp profile"), "{bad}");
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
    }
}
