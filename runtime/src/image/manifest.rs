//! Manifests, indexes and image configs (OCI and Docker schema 2), platform selection, and
//! turning a manifest + config into a store record.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use super::ImageError;
use super::digest::Digest;
use super::store::{Image, LayerRecord};

/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker uncompressed layer media type (docker-archive layers).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Media types a pull accepts for a manifest request.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// A platform: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture, Go style (`amd64`, `arm64`).
    pub arch: String,
    /// Architecture variant (`v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this host.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
        }
    }

    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.arch == arch
            && (self.variant.is_none() || self.variant.as_deref() == variant)
    }
}

impl FromStr for Platform {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
            }),
            _ => Err(ImageError::BadImage(format!(
                "platform {s:?} is not os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"
            ))),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// A parsed manifest document.
pub enum Manifest {
    /// An OCI index or Docker manifest list.
    Index(Box<ImageIndex>),
    /// An OCI or Docker schema 2 image manifest.
    Image(Box<ImageManifest>),
}

/// Parses a manifest document of any supported kind (the kind comes from its `mediaType`
/// field or, when absent, from its shape).
pub fn parse(bytes: &[u8]) -> Result<Manifest, ImageError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::BadImage(format!("manifest is not JSON: {e}")))?;
    let media_type = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(ImageError::BadImage(
            "Docker schema 1 manifests are obsolete and not supported; re-push the image with a current tool".into(),
        ));
    }
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_LIST
        || (media_type.is_empty() && value.get("manifests").is_some());
    if is_index {
        let index: ImageIndex = serde_json::from_value(value)
            .map_err(|e| ImageError::BadImage(format!("invalid image index: {e}")))?;
        Ok(Manifest::Index(Box::new(index)))
    } else {
        let manifest: ImageManifest = serde_json::from_value(value)
            .map_err(|e| ImageError::BadImage(format!("invalid image manifest: {e}")))?;
        Ok(Manifest::Image(Box::new(manifest)))
    }
}

/// Picks the manifest for `platform` from an index.
pub fn select_platform(index: &ImageIndex, platform: &Platform) -> Result<Descriptor, ImageError> {
    let describe = |d: &Descriptor| {
        d.platform()
            .as_ref()
            .map(|p| {
                let mut s = format!("{}/{}", p.os(), p.architecture());
                if let Some(v) = p.variant() {
                    s.push('/');
                    s.push_str(v);
                }
                s
            })
            .unwrap_or_else(|| "unknown".into())
    };
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                platform.matches(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                )
            })
        })
        .cloned()
        .ok_or_else(|| ImageError::NoPlatform {
            wanted: platform.to_string(),
            available: index
                .manifests()
                .iter()
                .map(describe)
                .filter(|p| p != "unknown/unknown")
                .collect(),
        })
}

/// A descriptor's digest, validated.
pub fn descriptor_digest(descriptor: &Descriptor) -> Result<Digest, ImageError> {
    descriptor
        .digest()
        .to_string()
        .parse()
        .map_err(|e: super::digest::InvalidDigest| ImageError::BadImage(e.to_string()))
}

/// Checks a layer media type: only filesystem tar layers can be unpacked.
fn check_layer_media_type(media_type: &str) -> Result<(), ImageError> {
    let is_layer =
        media_type.contains("rootfs.diff.tar") || media_type.contains("image.layer.v1.tar");
    if !is_layer {
        return Err(ImageError::BadImage(format!(
            "layer media type {media_type:?} is not a filesystem layer (is this an artifact, not a container image?)"
        )));
    }
    if media_type.contains("foreign") || media_type.contains("nondistributable") {
        return Err(ImageError::BadImage(format!(
            "layer media type {media_type:?} is a foreign (non-distributable) layer; twinbox runs Linux images only"
        )));
    }
    Ok(())
}

/// What an image is known as when it is recorded.
#[derive(Debug, Default, Clone)]
pub struct ImageNames {
    /// Full tagged names.
    pub names: Vec<String>,
    /// `repo@digest` names.
    pub repo_digests: Vec<String>,
    /// The index it was selected from.
    pub index: Option<Digest>,
}

/// Builds the store record of an image from its manifest and config blob, checking that
/// they fit together. The caller has stored (or will store) the blobs themselves.
pub fn image_record(
    manifest_digest: &Digest,
    manifest: &ImageManifest,
    config_bytes: &[u8],
    names: ImageNames,
) -> Result<Image, ImageError> {
    let config = parse_config(config_bytes)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::BadImage(format!(
            "manifest {manifest_digest} lists {} layers but its config lists {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (descriptor, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let media_type = descriptor.media_type().to_string();
        check_layer_media_type(&media_type)?;
        layers.push(LayerRecord {
            digest: descriptor_digest(descriptor)?,
            diff_id: diff_id.parse().map_err(|e: super::digest::InvalidDigest| {
                ImageError::BadImage(format!("config diff_id: {e}"))
            })?,
            size: descriptor.size(),
            media_type,
        });
    }
    let mut platform = format!("{}/{}", config.os(), config.architecture());
    if let Some(variant) = config.variant() {
        platform.push('/');
        platform.push_str(variant);
    }
    Ok(Image {
        id: Digest::of_bytes(config_bytes),
        manifest: manifest_digest.clone(),
        index: names.index,
        names: names.names,
        repo_digests: names.repo_digests,
        layers,
        platform,
        created: config.created().clone(),
        added: now_rfc3339(),
    })
}

/// Parses an image config blob.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::BadImage(format!("invalid image config: {e}")))
}

/// The current time, RFC 3339 in UTC with seconds precision.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
