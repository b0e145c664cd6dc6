//! Image references: `busybox` means `docker.io/library/busybox:latest`, as with docker.

pub use oci_client::Reference;

use super::ImageError;

/// Parses a reference, applying Docker Hub defaults (registry `docker.io`, namespace
/// `library`, tag `latest`).
pub fn parse(input: &str) -> Result<Reference, ImageError> {
    input
        .parse::<Reference>()
        .map_err(|e| ImageError::Reference {
            input: input.to_string(),
            reason: e.to_string(),
        })
}

/// The full name a reference is stored under: `registry/repo:tag`, or `registry/repo@digest`
/// for a reference by digest only. `None` if `input` is not a reference.
pub fn normalize_name(input: &str) -> Option<String> {
    let reference = input.parse::<Reference>().ok()?;
    Some(match (reference.tag(), reference.digest()) {
        (Some(tag), _) => format!(
            "{}/{}:{}",
            reference.registry(),
            reference.repository(),
            tag
        ),
        (None, Some(digest)) => format!(
            "{}/{}@{}",
            reference.registry(),
            reference.repository(),
            digest
        ),
        (None, None) => format!("{}/{}:latest", reference.registry(), reference.repository()),
    })
}

/// `registry/repo` of a reference (without tag or digest).
pub fn repository(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults_apply() {
        assert_eq!(
            normalize_name("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_name("library/alpine:3.20").unwrap(),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(
            normalize_name("127.0.0.1:5000/x/y:1").unwrap(),
            "127.0.0.1:5000/x/y:1"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize_name(&format!("ghcr.io/o/i@{digest}")).unwrap(),
            format!("ghcr.io/o/i@{digest}")
        );
        assert!(parse("no spaces allowed").is_err());
        assert!(parse("repo:bad tag").is_err());
    }
}
