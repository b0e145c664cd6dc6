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

/// [`normalize_name`] of a plain `[registry/]repository[:tag]` without parsing it with the
/// reference grammar (whose regular expression costs tens of milliseconds to build, which
/// `twinbox run IMAGE` would pay on every start). `None` when the input is not of that simple
/// form; then only [`normalize_name`] can tell.
pub fn normalize_simple(input: &str) -> Option<String> {
    if input.contains('@') {
        return None;
    }
    let (name, tag) = match input.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (input, "latest"),
    };
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    if !tag_ok {
        return None;
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_string())
        }
        _ => ("docker.io", name.to_string()),
    };
    if registry == "index.docker.io" || registry.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let path = if registry == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    path.split('/')
        .all(component_ok)
        .then(|| format!("{registry}/{path}:{tag}"))
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
    }

    #[test]
    fn the_simple_form_normalizes_like_the_grammar() {
        for input in [
            "busybox",
            "busybox:1.36",
            "library/alpine:3.20",
            "docker.io/busybox",
            "team/app",
            "ghcr.io/o/i:v1.2-rc_3",
            "127.0.0.1:5000/x/y:1",
            "localhost/app",
            "localhost:5000/a.b/c-d",
        ] {
            assert_eq!(normalize_simple(input), normalize_name(input), "{input}");
        }
        for unsure in [
            "BusyBox",
            "a@sha256:00",
            "x:",
            "x:-bad",
            "a//b",
            "-a",
            "index.docker.io/x",
        ] {
            assert_eq!(normalize_simple(unsure), None, "{unsure}");
        }
        assert!(parse("repo:bad tag").is_err());
    }
}
