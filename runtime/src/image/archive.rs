//! `load` (OCI image layouts as a directory or tar, and `docker save` / skopeo
//! docker-archive tars) and `import` (a plain root filesystem tarball).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use oci_spec::image::{
    Arch, Config, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde::Deserialize;

use super::changes::apply_change;
use super::compression::{Compression, LayerStream};
use super::fsutil::Root;
use super::manifest::{self, ImageNames, Manifest, Platform};
use super::store::{self, Image, ImageStore};
use super::unpack::{self, WhiteoutMode};
use super::{Digest, ImageError, reference};

/// Where a `load` reads from: a directory tree (an OCI layout or an extracted archive).
struct Source<'a> {
    root: Root,
    /// What the user gave, for messages and default names.
    input: &'a Path,
}

impl Source<'_> {
    fn bad(&self, reason: impl Into<String>) -> ImageError {
        ImageError::BadArchive {
            path: self.input.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn open(&self, rel: &str) -> Result<File, ImageError> {
        self.root
            .open_file(Path::new(rel))
            .map_err(|e| self.bad(format!("cannot open {rel}: {e}")))
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, ImageError> {
        let mut data = Vec::new();
        self.open(rel)?
            .read_to_end(&mut data)
            .map_err(|e| self.bad(format!("cannot read {rel}: {e}")))?;
        Ok(data)
    }

    fn blob_rel(digest: &Digest) -> String {
        format!("blobs/sha256/{}", digest.hex())
    }

    /// Reads a small blob of an OCI layout, verified.
    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let data = self.read(&Self::blob_rel(digest))?;
        let actual = Digest::of_bytes(&data);
        if actual != *digest {
            return Err(ImageError::DigestMismatch {
                what: format!("{} in {}", Self::blob_rel(digest), self.input.display()),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }
}

/// Loads every image in an OCI layout (directory or tar, optionally compressed) or a
/// docker-archive tar. Images without a full name in the archive are named
/// `NAME:<ref>` when `name` is given, else `localhost/<file stem>:<ref>`.
pub fn load(
    store: &ImageStore,
    input: &Path,
    name: Option<&str>,
    platform: Option<&Platform>,
) -> Result<Vec<Image>, ImageError> {
    store.adding_content(|| load_locked(store, input, name, platform))
}

fn load_locked(
    store: &ImageStore,
    input: &Path,
    name: Option<&str>,
    platform: Option<&Platform>,
) -> Result<Vec<Image>, ImageError> {
    let meta = std::fs::metadata(input).map_err(|e| ImageError::io(input, "reading", e))?;
    let staging;
    let dir = if meta.is_dir() {
        input.to_path_buf()
    } else {
        staging = store.staging_dir("load-")?;
        let file = File::open(input).map_err(|e| ImageError::io(input, "opening", e))?;
        let stream = LayerStream::new(file).map_err(|e| ImageError::io(input, "reading", e))?;
        unpack::apply_layer(stream, staging.path(), WhiteoutMode::Apply).map_err(|e| {
            ImageError::BadArchive {
                path: input.to_path_buf(),
                reason: format!("not a readable tar archive: {e}"),
            }
        })?;
        staging.path().to_path_buf()
    };
    let source = Source {
        root: Root::open(&dir).map_err(|e| ImageError::io(&dir, "opening", e))?,
        input,
    };
    let default_repo = match name {
        Some(n) => n.to_string(),
        None => {
            let stem = input
                .file_stem()
                .map(|s| s.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            let stem: String = stem
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!(
                "localhost/{}",
                if stem.is_empty() { "image" } else { &stem }
            )
        }
    };
    if source.root.open_file(Path::new("oci-layout")).is_ok() {
        load_oci_layout(store, &source, &default_repo, platform)
    } else if source.root.open_file(Path::new("manifest.json")).is_ok() {
        load_docker_archive(store, &source)
    } else {
        Err(source.bad("neither an OCI image layout (no oci-layout file) nor a docker-archive (no manifest.json)"))
    }
}

fn load_oci_layout(
    store: &ImageStore,
    source: &Source<'_>,
    default_repo: &str,
    platform: Option<&Platform>,
) -> Result<Vec<Image>, ImageError> {
    let index_bytes = source.read("index.json")?;
    let Manifest::Index(index) = manifest::parse(&index_bytes)? else {
        return Err(source.bad("index.json is not an image index"));
    };
    let platform = platform.cloned().unwrap_or_else(Platform::host);
    let mut images = Vec::new();
    for descriptor in index.manifests() {
        let annotations = descriptor.annotations().clone().unwrap_or_default();
        let mut names = ImageNames::default();
        if let Some(full) = annotations
            .get("io.containerd.image.name")
            .and_then(|n| reference::normalize_name(n))
        {
            names.names.push(full);
        } else if let Some(tag) = annotations.get("org.opencontainers.image.ref.name") {
            // A full reference (`example.com/app:1`, `app:1`) or just a tag (`v1`).
            let full = if tag.contains('/') || tag.contains(':') {
                reference::normalize_name(tag)
            } else {
                reference::normalize_name(&format!("{default_repo}:{tag}"))
            };
            names.names.push(full.ok_or_else(|| {
                source.bad(format!("image name {tag:?} is not a valid reference"))
            })?);
        }
        let mut digest = manifest::descriptor_digest(descriptor)?;
        let mut bytes = source.read_blob(&digest)?;
        let image_manifest = match manifest::parse(&bytes)? {
            Manifest::Image(m) => m,
            Manifest::Index(nested) => {
                store.write_blob(&bytes, Some(&digest))?;
                names.index = Some(digest);
                let chosen = manifest::select_platform(&nested, &platform)?;
                digest = manifest::descriptor_digest(&chosen)?;
                bytes = source.read_blob(&digest)?;
                match manifest::parse(&bytes)? {
                    Manifest::Image(m) => m,
                    Manifest::Index(_) => {
                        return Err(source.bad("nested index points to another index"));
                    }
                }
            }
        };
        let config_digest = manifest::descriptor_digest(image_manifest.config())?;
        let config = source.read_blob(&config_digest)?;
        store.write_blob(&config, Some(&config_digest))?;
        let image = manifest::image_record(&digest, &image_manifest, &config, names)?;
        for layer in &image.layers {
            if !store.has_blob(&layer.digest) {
                let mut file = source.open(&Source::blob_rel(&layer.digest))?;
                store::copy_blob(store, &mut file, Some(&layer.digest))?;
            }
        }
        images.push(commit(store, &bytes, image)?);
    }
    if images.is_empty() {
        return Err(source.bad("index.json lists no images"));
    }
    Ok(images)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn load_docker_archive(store: &ImageStore, source: &Source<'_>) -> Result<Vec<Image>, ImageError> {
    let entries: Vec<DockerArchiveEntry> = serde_json::from_slice(&source.read("manifest.json")?)
        .map_err(|e| {
        source.bad(format!(
            "manifest.json is not a docker-archive manifest: {e}"
        ))
    })?;
    let mut images = Vec::new();
    for entry in entries {
        let config = source.read(&entry.config)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let mut file = source.open(layer)?;
            let mut head = [0u8; 4];
            let n = file
                .read(&mut head)
                .map_err(|e| source.bad(format!("cannot read {layer}: {e}")))?;
            let mut file = std::io::Cursor::new(head[..n].to_vec()).chain(file);
            let (digest, size) = store::copy_blob(store, &mut file, None)?;
            layers.push(layer_descriptor(
                digest,
                size,
                Compression::detect(&head[..n]),
            )?);
        }
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| {
                reference::normalize_name(t)
                    .ok_or_else(|| source.bad(format!("RepoTag {t:?} is not a valid reference")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        images.push(store_with_manifest(
            store,
            &config,
            layers,
            ImageNames {
                names,
                ..Default::default()
            },
        )?);
    }
    if images.is_empty() {
        return Err(source.bad("manifest.json lists no images"));
    }
    Ok(images)
}

fn layer_descriptor(
    digest: Digest,
    size: u64,
    compression: Compression,
) -> Result<Descriptor, ImageError> {
    let media_type = match compression {
        Compression::None => MediaType::ImageLayer,
        Compression::Gzip => MediaType::ImageLayerGzip,
        Compression::Zstd => MediaType::ImageLayerZstd,
    };
    descriptor(media_type, &digest, size)
}

fn descriptor(media_type: MediaType, digest: &Digest, size: u64) -> Result<Descriptor, ImageError> {
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(
            digest
                .as_ref()
                .parse::<oci_spec::image::Digest>()
                .map_err(|e| ImageError::BadImage(e.to_string()))?,
        )
        .size(size)
        .build()
        .map_err(|e| ImageError::BadImage(e.to_string()))
}

/// Writes an OCI manifest for `config` + `layers` (blobs already stored) and commits the image.
fn store_with_manifest(
    store: &ImageStore,
    config: &[u8],
    layers: Vec<Descriptor>,
    names: ImageNames,
) -> Result<Image, ImageError> {
    let config_digest = store.write_blob(config, None)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config_digest,
            config.len() as u64,
        )?)
        .layers(layers)
        .build()
        .map_err(|e| ImageError::BadImage(e.to_string()))?;
    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let image = manifest::image_record(&Digest::of_bytes(&bytes), &manifest, config, names)?;
    commit(store, &bytes, image)
}

/// Unpacks an image's layers (verifying diff-ids), stores its manifest and records it.
fn commit(store: &ImageStore, manifest_bytes: &[u8], image: Image) -> Result<Image, ImageError> {
    for layer in &image.layers {
        store.ensure_layer(layer)?;
    }
    store.write_blob(manifest_bytes, Some(&image.manifest))?;
    store.add_image(image)
}

/// Imports a root filesystem tarball (plain, gzip or zstd) as a one-layer image named
/// `name`, with `changes` (`CMD ...`, `ENV ...`) applied to its config.
pub fn import(
    store: &ImageStore,
    tarball: &Path,
    name: &str,
    changes: &[String],
) -> Result<Image, ImageError> {
    let full_name = reference::normalize_name(name).ok_or_else(|| ImageError::Reference {
        input: name.to_string(),
        reason: "expected [registry/]repository[:tag]".into(),
    })?;
    let mut config = Config::default();
    for change in changes {
        apply_change(&mut config, change)?;
    }
    store.adding_content(|| import_locked(store, tarball, full_name, config))
}

fn import_locked(
    store: &ImageStore,
    tarball: &Path,
    full_name: String,
    config: Config,
) -> Result<Image, ImageError> {
    let mut file = File::open(tarball).map_err(|e| ImageError::io(tarball, "opening", e))?;
    let mut head = [0u8; 4];
    let n = file
        .read(&mut head)
        .map_err(|e| ImageError::io(tarball, "reading", e))?;
    let compression = Compression::detect(&head[..n]);
    let mut file = std::io::Cursor::new(head[..n].to_vec()).chain(file);
    let (blob, size) = store::copy_blob(store, &mut file, None)?;
    let diff_id = store.unpack_layer_blob(&blob, None).map_err(|e| match e {
        ImageError::Layer { source, .. } => ImageError::BadArchive {
            path: tarball.to_path_buf(),
            reason: format!("not a usable root filesystem tarball: {source}"),
        },
        other => other,
    })?;
    let host = Platform::host();
    let image_config: ImageConfiguration = ImageConfigurationBuilder::default()
        .created(manifest::now_rfc3339())
        .architecture(Arch::from(host.arch.as_str()))
        .os(Os::from(host.os.as_str()))
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id.to_string()])
                .build()
                .map_err(|e| ImageError::BadImage(e.to_string()))?,
        )
        .history(vec![
            HistoryBuilder::default()
                .created(manifest::now_rfc3339())
                .created_by(format!("twinbox import {}", tarball.display()))
                .build()
                .map_err(|e| ImageError::BadImage(e.to_string()))?,
        ])
        .build()
        .map_err(|e| ImageError::BadImage(e.to_string()))?;
    let config_bytes = serde_json::to_vec(&image_config).expect("config serializes");
    store_with_manifest(
        store,
        &config_bytes,
        vec![layer_descriptor(blob, size, compression)?],
        ImageNames {
            names: vec![full_name],
            ..Default::default()
        },
    )
}
