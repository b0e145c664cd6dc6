//! Building OCI image layouts for tests: layers (including whiteouts and hostile entries
//! that no well-behaved tool writes), image configs, manifests and multi-platform indexes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A finished layer: the blob and what a manifest and config say about it.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The (compressed) blob.
    pub blob: Vec<u8>,
    /// Its media type.
    pub media_type: &'static str,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

/// Builds a layer tarball entry by entry.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        LayerBuilder { tar }
    }

    /// Adds everything under `dir` (as the layer root), symlinks as symlinks.
    pub fn tree(mut self, dir: &Path) -> Self {
        self.tar.append_dir_all(".", dir).expect("append tree");
        self
    }

    /// Adds a regular file.
    pub fn file(self, path: &str, contents: &[u8], mode: u32) -> Self {
        self.raw(
            path.as_bytes(),
            tar::EntryType::Regular,
            None,
            contents,
            mode,
        )
    }

    /// Adds a directory.
    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.raw(path.as_bytes(), tar::EntryType::Directory, None, b"", mode)
    }

    /// Adds a symlink.
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(
            path.as_bytes(),
            tar::EntryType::Symlink,
            Some(target.as_bytes()),
            b"",
            0o777,
        )
    }

    /// Adds a hardlink to `target` (a path in the archive).
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(
            path.as_bytes(),
            tar::EntryType::Link,
            Some(target.as_bytes()),
            b"",
            0o644,
        )
    }

    /// Adds a whiteout hiding `path` (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let entry = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&entry, b"", 0o644)
    }

    /// Marks directory `dir` opaque (`dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// Adds an entry with exactly these name and link bytes, bypassing the tar crate's
    /// path checks (for hostile layers: `..`, absolute paths, ...). Names must fit the
    /// 100-byte ustar field.
    pub fn raw(
        mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: Option<&[u8]>,
        data: &[u8],
        mode: u32,
    ) -> Self {
        let mut header = header(kind, mode, data.len() as u64);
        {
            let old = header.as_old_mut();
            assert!(name.len() < old.name.len(), "test entry name too long");
            old.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                assert!(link.len() < old.linkname.len(), "test link name too long");
                old.linkname[..link.len()].copy_from_slice(link);
            }
        }
        header.set_cksum();
        self.tar.append(&header, data).expect("append entry");
        self
    }

    /// The uncompressed tar stream.
    pub fn into_tar(self) -> Vec<u8> {
        self.tar.into_inner().expect("finish tar")
    }

    /// Finishes the layer with the given compression.
    pub fn finish(self, compression: Compression) -> Layer {
        let tar = self.into_tar();
        let diff_id = sha256(&tar);
        let (blob, media_type) = match compression {
            Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar).unwrap();
                (
                    gz.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Layer {
            blob,
            media_type,
            diff_id,
        }
    }
}

/// An OCI image layout directory being written.
pub struct OciLayout {
    /// The layout directory.
    pub dir: PathBuf,
    manifests: Vec<Value>,
}

impl OciLayout {
    /// Creates an empty layout at `dir`.
    pub fn create(dir: &Path) -> OciLayout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layout = OciLayout {
            dir: dir.to_path_buf(),
            manifests: Vec::new(),
        };
        layout.write_index();
        layout
    }

    /// Stores a blob; returns its descriptor (without media type).
    pub fn blob(&self, data: &[u8]) -> (String, usize) {
        let digest = sha256(data);
        std::fs::write(self.blob_path(&digest), data).unwrap();
        (digest, data.len())
    }

    /// Path of a blob in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Stores an image (layers + config `config` with os/arch) and returns the manifest
    /// descriptor. `config` is the image config's `config` object (Cmd, Env, ...).
    pub fn image(&self, layers: &[Layer], config: Value, arch: &str) -> Value {
        let image_config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config_bytes = serde_json::to_vec(&image_config).unwrap();
        let (config_digest, config_size) = self.blob(&config_bytes);
        let layer_descriptors: Vec<Value> = layers
            .iter()
            .map(|l| {
                let (digest, size) = self.blob(&l.blob);
                json!({"mediaType": l.media_type, "digest": digest, "size": size})
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": layer_descriptors,
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let (digest, size) = self.blob(&bytes);
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"architecture": arch, "os": "linux"},
        })
    }

    /// Stores an index over `manifests` (descriptors from [`OciLayout::image`]).
    pub fn index(&self, manifests: Vec<Value>) -> Value {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let (digest, size) = self.blob(&bytes);
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size})
    }

    /// Lists `descriptor` in index.json under tag `tag` (`org.opencontainers.image.ref.name`).
    pub fn tag(&mut self, mut descriptor: Value, tag: &str) {
        descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        descriptor.as_object_mut().unwrap().remove("platform");
        self.manifests.push(descriptor);
        self.write_index();
    }

    /// Writes the layout as an OCI archive (a tar of the layout, as `ctr image import` and
    /// `docker load` take) at `tarball`.
    pub fn archive(&self, tarball: &Path) {
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(&self.dir)
            .arg("-cf")
            .arg(tarball)
            .args(["oci-layout", "index.json", "blobs"])
            .status()
            .expect("tar");
        assert!(status.success(), "tar of the OCI layout failed");
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.manifests});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

/// A busybox root filesystem layer (see [`crate::busybox_rootfs`]).
pub fn busybox_layer(compression: Compression) -> Layer {
    let dir = tempfile::tempdir().unwrap();
    crate::busybox_rootfs(dir.path()).unwrap();
    LayerBuilder::new().tree(dir.path()).finish(compression)
}

/// A layout whose tag `tag` is an index of two images: linux/amd64 (busybox) and
/// linux/arm64 (one file, /arch).
pub fn multi_platform_layout(dir: &Path, tag: &str) -> OciLayout {
    let mut layout = OciLayout::create(dir);
    let amd64 = layout.image(
        &[busybox_layer(Compression::Gzip)],
        json!({"Cmd": ["/bin/true"]}),
        "amd64",
    );
    let arm64_layer = LayerBuilder::new()
        .file("arch", b"arm64\n", 0o644)
        .finish(Compression::Gzip);
    let arm64 = layout.image(&[arm64_layer], json!({"Cmd": ["/bin/true"]}), "arm64");
    let index = layout.index(vec![amd64, arm64]);
    layout.tag(index, tag);
    layout
}
