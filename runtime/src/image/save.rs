//! `save`: images of the store as an OCI image layout tar (`oci-layout`, `index.json`,
//! `blobs/sha256/...`), the format `twinbox load`, `podman load` and `skopeo copy oci-archive:`
//! read. The blobs are the store's own (the manifest, config and layer blobs as pulled or
//! built), so a saved and loaded image keeps its id, config and layers.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::manifest::{self, Manifest};
use super::{Digest, Image, ImageError, ImageStore};

/// Annotation with the image's full name (containerd, podman and `twinbox load` read it).
const FULL_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation with the reference's tag.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// One manifest entry of the layout's index.
struct Entry {
    media_type: String,
    digest: Digest,
    size: usize,
    name: Option<String>,
}

/// The tag of a full name (`docker.io/library/busybox:latest` -> `latest`).
fn tag_of(name: &str) -> Option<&str> {
    let last = name.rsplit('/').next()?;
    let without_digest = last.split('@').next()?;
    without_digest.split_once(':').map(|(_, tag)| tag)
}

/// Writes `images` (store specs: name, id or digest) as an OCI layout tar to `out`.
pub fn save(store: &ImageStore, images: &[String], out: impl Write) -> Result<(), ImageError> {
    // Blobs stay while the lock is held (gc takes it exclusively).
    let _lock = store.lock_shared()?;
    let mut entries = Vec::new();
    let mut blobs = BTreeSet::new();
    for spec in images {
        let image = store.resolve(spec)?;
        let (media_type, size) = manifest_of(store, &image)?;
        for digest in std::iter::once(&image.manifest)
            .chain(std::iter::once(&image.id))
            .chain(image.layers.iter().map(|layer| &layer.digest))
        {
            if !store.has_blob(digest) {
                return Err(ImageError::BadImage(format!(
                    "the store no longer holds blob {digest} of image {spec}; pull or load the \
                     image again"
                )));
            }
            blobs.insert(digest.clone());
        }
        let names: Vec<Option<String>> = if image.names.is_empty() {
            vec![None]
        } else {
            image.names.iter().cloned().map(Some).collect()
        };
        for name in names {
            entries.push(Entry {
                media_type: media_type.clone(),
                digest: image.manifest.clone(),
                size,
                name,
            });
        }
    }
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let mut descriptor = json!({
                "mediaType": entry.media_type,
                "digest": entry.digest.to_string(),
                "size": entry.size,
            });
            if let Some(name) = &entry.name {
                let mut annotations = json!({ FULL_NAME_ANNOTATION: name });
                if let Some(tag) = tag_of(name) {
                    annotations[REF_NAME_ANNOTATION] = json!(tag);
                }
                descriptor["annotations"] = annotations;
            }
            descriptor
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut tar = tar::Builder::new(out);
    let write_error = |e: std::io::Error| ImageError::io(Path::new("the archive"), "writing", e);
    append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(write_error)?;
    let index_bytes = serde_json::to_vec(&index).expect("an index always serializes");
    append(&mut tar, "index.json", &index_bytes).map_err(write_error)?;
    append_dir(&mut tar, "blobs/").map_err(write_error)?;
    append_dir(&mut tar, "blobs/sha256/").map_err(write_error)?;
    for digest in blobs {
        let path = store.blob_path(&digest);
        let mut file =
            std::fs::File::open(&path).map_err(|e| ImageError::io(&path, "opening", e))?;
        let size = file
            .metadata()
            .map_err(|e| ImageError::io(&path, "reading", e))?
            .len();
        let mut header = header(tar::EntryType::Regular, 0o644, size);
        tar.append_data(
            &mut header,
            format!("blobs/sha256/{}", digest.hex()),
            &mut file,
        )
        .map_err(write_error)?;
    }
    tar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(write_error)
}

/// The media type and size of an image's manifest blob.
fn manifest_of(store: &ImageStore, image: &Image) -> Result<(String, usize), ImageError> {
    let bytes = store.read_blob(&image.manifest)?;
    let media_type = match manifest::parse(&bytes)? {
        Manifest::Image(m) => m
            .media_type()
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_string()),
        Manifest::Index(_) => {
            return Err(ImageError::BadImage(format!(
                "image {} records an index as its manifest",
                image.id
            )));
        }
    };
    Ok((media_type, bytes.len()))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append(tar: &mut tar::Builder<impl Write>, path: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    tar.append_data(&mut header, path, data)
}

fn append_dir(tar: &mut tar::Builder<impl Write>, path: &str) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut header, path, std::io::empty())
}

/// Writes `images` as an OCI layout tar to the file `path`, atomically: a failed save leaves
/// no partial file.
pub fn save_to_file(store: &ImageStore, images: &[String], path: &Path) -> Result<(), ImageError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".twinbox-save-")
        .tempfile_in(dir)
        .map_err(|e| ImageError::io(dir, "creating a file in", e))?;
    save(store, images, std::io::BufWriter::new(temp.as_file_mut()))?;
    temp.persist(path)
        .map_err(|e| ImageError::io(path, "writing", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_from_the_last_path_component() {
        assert_eq!(tag_of("docker.io/library/busybox:latest"), Some("latest"));
        assert_eq!(tag_of("localhost:5000/app:1.2"), Some("1.2"));
        assert_eq!(tag_of("localhost:5000/app"), None);
        assert_eq!(tag_of("example.com/app@sha256:abc"), None);
    }
}
