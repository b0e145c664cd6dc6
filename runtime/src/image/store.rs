//! The content-addressed image store.
//!
//! Layout under the store root:
//!
//! ```text
//! blobs/sha256/<hex>      blobs by digest (manifests, configs, compressed layers)
//! layers/sha256/<hex>     layers unpacked once by diff-id, overlayfs whiteout form, shared
//! containers/<id>/        per-container upper/, work/ and rootfs/ (the mount point)
//! images.json             image records: names -> manifest, config, layers
//! containers.json         which container uses which image and layers
//! tmp/                    staging area for atomic renames
//! store.lock, index.lock  flock(2) locks
//! ```
//!
//! Blobs and layers are staged under `tmp/` and renamed into place, so a reader never sees a
//! half-written blob or layer and an interrupted writer leaves nothing but staging files.
//! Writers that add content hold `store.lock` shared; garbage collection holds it exclusive,
//! so it never deletes what an in-flight pull has written but not yet indexed.
//! Read-modify-write of the JSON indexes happens under `index.lock` (always taken after
//! `store.lock`, never before).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ImageError;
use super::compression::LayerStream;
use super::digest::{Digest, HashingWriter};
use super::reference;
use super::unpack::{self, WhiteoutMode};

/// Default store root.
pub const DEFAULT_ROOT: &str = "/var/lib/twinbox";

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (usually compressed) blob as distributed.
    pub digest: Digest,
    /// Digest of the uncompressed tar stream (the image config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Media type of the blob as the manifest gave it.
    pub media_type: String,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Image id: the digest of its config blob (as `docker images` shows it).
    pub id: Digest,
    /// Digest of the image manifest (for a multi-platform image: the selected platform's).
    pub manifest: Digest,
    /// Digest of the index / manifest list it was selected from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// Full names it is known by (`docker.io/library/busybox:latest`).
    pub names: Vec<String>,
    /// Repository digests it was pulled by (`ghcr.io/o/i@sha256:...`).
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// `os/arch[/variant]` of the image.
    pub platform: String,
    /// Creation time from the image config, if it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When it was added to this store (RFC 3339).
    pub added: String,
}

impl Image {
    /// Total size of the layer blobs.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// The layers' diff-ids, bottom first: the key of each unpacked layer directory.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// Which container uses which image (so `rmi` and gc leave its layers alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Manifest digest of the image.
    pub image: Digest,
    /// The unpacked layers its root filesystem stacks, bottom first.
    pub layers: Vec<Digest>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ImageIndex {
    images: Vec<Image>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ContainerIndex {
    containers: BTreeMap<String, ContainerRecord>,
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs deleted.
    pub blobs: usize,
    /// Unpacked layers deleted.
    pub layers: usize,
    /// Bytes of blobs freed.
    pub bytes: u64,
}

/// The image store under one root directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// A held store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] File);

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    ///
    /// The top-level directories are mode 0700: unpacked layers hold the images' setuid
    /// binaries and device nodes, which host users must not be able to reach.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        use std::os::unix::fs::PermissionsExt;
        let store = ImageStore {
            root: root.to_path_buf(),
        };
        for (dir, sub) in [
            ("blobs", "sha256"),
            ("layers", "sha256"),
            ("containers", ""),
            ("tmp", ""),
        ] {
            let path = root.join(dir);
            fs::create_dir_all(path.join(sub))
                .map_err(|e| ImageError::io(&path, "creating the store directory", e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                .map_err(|e| ImageError::io(&path, "restricting access to", e))?;
        }
        Ok(store)
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_file(&self, name: &str) -> Result<File, ImageError> {
        let path = self.root.join(name);
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io(&path, "opening the lock file", e))
    }

    /// Takes the store lock shared: held while adding content, so gc waits.
    pub fn lock_shared(&self) -> Result<StoreLock, ImageError> {
        let file = self.lock_file("store.lock")?;
        file.lock_shared()
            .map_err(|e| ImageError::io(&self.root, "locking the store", e))?;
        Ok(StoreLock(file))
    }

    fn lock_exclusive(&self, name: &str, wait: bool) -> Result<Option<StoreLock>, ImageError> {
        let file = self.lock_file(name)?;
        if wait {
            file.lock()
                .map_err(|e| ImageError::io(&self.root, "locking the store", e))?;
        } else {
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => {
                    return Err(ImageError::io(&self.root, "locking the store", e));
                }
            }
        }
        Ok(Some(StoreLock(file)))
    }

    fn lock_index(&self) -> Result<StoreLock, ImageError> {
        Ok(self
            .lock_exclusive("index.lock", true)?
            .expect("blocking lock"))
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Directory of an unpacked layer (overlayfs form: whiteouts are 0:0 devices).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    /// Directory of a container's writable layer and mount point.
    pub fn container_dir(&self, container_id: &str) -> PathBuf {
        self.root.join("containers").join(container_id)
    }

    /// True when the blob is in the store.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a whole blob (manifests and configs; layers are streamed).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(|e| ImageError::io(&path, "reading the blob", e))
    }

    /// The image's config (Entrypoint, Cmd, Env, ...), for [`crate::spec::from_image`].
    pub fn config(&self, image: &Image) -> Result<oci_spec::image::ImageConfiguration, ImageError> {
        super::manifest::parse_config(&self.read_blob(&image.id)?)
    }

    /// The unpacked layer directories of an image, bottom first, unpacking any that are
    /// missing. Stack them (overlayfs lowerdir is top first) or copy them; never write to them.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        let _lock = self.lock_shared()?;
        image.layers.iter().map(|l| self.ensure_layer(l)).collect()
    }

    /// A staging file for a blob being written.
    pub fn blob_writer(&self) -> Result<BlobWriter, ImageError> {
        let tmp = self.root.join("tmp");
        let file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(|e| ImageError::io(&tmp, "creating a staging file", e))?;
        Ok(BlobWriter {
            inner: HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Stores `data` as a blob, checking it against `expected` when given.
    pub fn write_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest, ImageError> {
        let digest = Digest::of_bytes(data);
        if expected.is_none_or(|e| *e == digest) && self.has_blob(&digest) {
            return Ok(digest);
        }
        copy_blob(self, &mut &data[..], expected).map(|(digest, _)| digest)
    }

    /// Unpacks a layer blob into `layers/sha256/<diff-id>` unless it is already there,
    /// verifying that the uncompressed stream's digest is `layer.diff_id`.
    pub fn ensure_layer(&self, layer: &LayerRecord) -> Result<PathBuf, ImageError> {
        let target = self.layer_path(&layer.diff_id);
        if !target.is_dir() {
            self.unpack_layer_blob(&layer.digest, Some(&layer.diff_id))?;
        }
        Ok(target)
    }

    /// Unpacks the layer blob `blob` into the layer directory named by its diff-id, which
    /// must equal `expected_diff_id` when given. Returns the diff-id.
    pub fn unpack_layer_blob(
        &self,
        blob: &Digest,
        expected_diff_id: Option<&Digest>,
    ) -> Result<Digest, ImageError> {
        let blob_path = self.blob_path(blob);
        let file = File::open(&blob_path)
            .map_err(|e| ImageError::io(&blob_path, "opening the layer blob", e))?;
        let staging = self.staging_dir("layer-")?;
        let layer_error = |source| ImageError::Layer {
            digest: blob.clone(),
            source,
        };
        let mut stream = LayerStream::new(file)
            .map_err(|e| ImageError::io(&blob_path, "reading the layer blob", e))?;
        unpack::apply_layer(&mut stream, staging.path(), WhiteoutMode::Overlay)
            .map_err(layer_error)?;
        let diff_id = stream
            .finish()
            .map_err(|e| layer_error(unpack::UnpackError::Archive(e)))?;
        if let Some(expected) = expected_diff_id
            && diff_id != *expected
        {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {blob}"),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
        commit_dir(staging, &self.layer_path(&diff_id))?;
        Ok(diff_id)
    }

    /// A fresh staging directory under `tmp/`, removed on drop unless renamed away.
    pub fn staging_dir(&self, prefix: &str) -> Result<tempfile::TempDir, ImageError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&tmp)
            .map_err(|e| ImageError::io(&tmp, "creating a staging directory", e))
    }

    fn read_json<T: for<'de> Deserialize<'de> + Default>(
        &self,
        name: &str,
    ) -> Result<T, ImageError> {
        let path = self.root.join(name);
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| ImageError::CorruptStore {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(ImageError::io(&path, "reading", e)),
        }
    }

    /// Replaces index file `name` atomically. `durable`: fsync before the rename, for what
    /// must survive a power loss (the image index). The container index is not synced: it
    /// describes containers, which do not survive a reboot anyway, and it is written twice
    /// per `run --rm`.
    fn write_json<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), ImageError> {
        let path = self.root.join(name);
        let data = serde_json::to_vec_pretty(value).expect("store records serialize");
        let mut tmp = tempfile::Builder::new()
            .prefix(name)
            .tempfile_in(self.root.join("tmp"))
            .map_err(|e| ImageError::io(&path, "staging", e))?;
        tmp.write_all(&data)
            .map_err(|e| ImageError::io(&path, "writing", e))?;
        if durable {
            tmp.as_file()
                .sync_all()
                .map_err(|e| ImageError::io(&path, "syncing", e))?;
        }
        tmp.persist(&path)
            .map_err(|e| ImageError::io(&path, "renaming into place", e.error))?;
        Ok(())
    }

    /// All images, in the order they were added.
    pub fn images(&self) -> Result<Vec<Image>, ImageError> {
        Ok(self.read_json::<ImageIndex>("images.json")?.images)
    }

    /// Records an image. Names it takes are moved away from any image that had them
    /// (like re-tagging); if the image is already present its names are merged.
    pub fn add_image(&self, mut image: Image) -> Result<Image, ImageError> {
        let _index = self.lock_index()?;
        let mut index: ImageIndex = self.read_json("images.json")?;
        for other in &mut index.images {
            if other.manifest != image.manifest {
                other.names.retain(|n| !image.names.contains(n));
            }
        }
        if let Some(existing) = index
            .images
            .iter_mut()
            .find(|i| i.manifest == image.manifest)
        {
            for name in image.names.drain(..) {
                if !existing.names.contains(&name) {
                    existing.names.push(name);
                }
            }
            for digest in image.repo_digests.drain(..) {
                if !existing.repo_digests.contains(&digest) {
                    existing.repo_digests.push(digest);
                }
            }
            image = existing.clone();
        } else {
            index.images.push(image.clone());
        }
        self.write_json("images.json", &index, true)?;
        Ok(image)
    }

    /// Finds an image by name (`busybox`, `ghcr.io/o/i:tag`, `name@sha256:...`), by full
    /// digest, or by a unique prefix (12+ hex digits) of its id or manifest digest.
    pub fn resolve(&self, spec: &str) -> Result<Image, ImageError> {
        let images = self.images()?;
        find_image(&images, spec).cloned()
    }

    /// Removes an image name, or the image itself. Given a name that is one of several,
    /// only that name goes (like `docker rmi` untagging). Refuses while a container uses
    /// the image unless `force`. Unreferenced blobs and layers are then collected.
    /// Returns what was untagged and deleted, as `rmi` prints it.
    pub fn remove_image(&self, spec: &str, force: bool) -> Result<Vec<String>, ImageError> {
        let mut report = Vec::new();
        {
            let _index = self.lock_index()?;
            let mut index: ImageIndex = self.read_json("images.json")?;
            let image = find_image(&index.images, spec)?.clone();
            let name = reference::normalize_name(spec);
            let by_name = name.as_ref().is_some_and(|n| image.names.contains(n));
            if by_name && image.names.len() > 1 {
                let name = name.expect("checked");
                let entry = index
                    .images
                    .iter_mut()
                    .find(|i| i.manifest == image.manifest)
                    .expect("found above");
                entry.names.retain(|n| *n != name);
                self.write_json("images.json", &index, true)?;
                return Ok(vec![format!("Untagged: {name}")]);
            }
            let containers: ContainerIndex = self.read_json("containers.json")?;
            let users: Vec<&String> = containers
                .containers
                .iter()
                .filter(|(_, c)| c.image == image.manifest)
                .map(|(id, _)| id)
                .collect();
            if !users.is_empty() && !force {
                return Err(ImageError::InUse {
                    image: spec.to_string(),
                    containers: users.into_iter().cloned().collect(),
                });
            }
            index.images.retain(|i| i.manifest != image.manifest);
            self.write_json("images.json", &index, true)?;
            report.extend(image.names.iter().map(|n| format!("Untagged: {n}")));
            report.push(format!("Deleted: {}", image.id));
        }
        self.gc_if_idle()?;
        Ok(report)
    }

    /// Collects garbage now unless another process is adding content (then the next gc
    /// will). Used after `rmi` and after failed pulls, loads and imports, so they leave
    /// nothing behind.
    pub fn gc_if_idle(&self) -> Result<Option<GcStats>, ImageError> {
        match self.lock_exclusive("store.lock", false)? {
            Some(lock) => self.gc_locked(&lock).map(Some),
            None => Ok(None),
        }
    }

    /// Runs `operation` holding the store lock shared; if it fails, collects what it may
    /// have left (blobs of an image that never got recorded) once the lock is released.
    pub fn adding_content<T>(
        &self,
        operation: impl FnOnce() -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let result = {
            let _lock = self.lock_shared()?;
            operation()
        };
        if result.is_err()
            && let Err(e) = self.gc_if_idle()
        {
            tracing::warn!(error = %e, "cleaning up after the failed operation");
        }
        result
    }

    /// Deletes blobs and unpacked layers that no image or container references, and stale
    /// staging files. Waits for in-flight pulls to finish.
    pub fn gc(&self) -> Result<GcStats, ImageError> {
        let lock = self
            .lock_exclusive("store.lock", true)?
            .expect("blocking lock");
        self.gc_locked(&lock)
    }

    fn gc_locked(&self, _exclusive: &StoreLock) -> Result<GcStats, ImageError> {
        let _index = self.lock_index()?;
        let images: ImageIndex = self.read_json("images.json")?;
        let containers: ContainerIndex = self.read_json("containers.json")?;
        let mut blobs: HashSet<String> = HashSet::new();
        let mut layers: HashSet<String> = HashSet::new();
        for image in &images.images {
            blobs.insert(image.id.hex().to_string());
            blobs.insert(image.manifest.hex().to_string());
            if let Some(index) = &image.index {
                blobs.insert(index.hex().to_string());
            }
            for layer in &image.layers {
                blobs.insert(layer.digest.hex().to_string());
                layers.insert(layer.diff_id.hex().to_string());
            }
        }
        for container in containers.containers.values() {
            layers.extend(container.layers.iter().map(|d| d.hex().to_string()));
        }
        let mut stats = GcStats::default();
        for (dir, keep, is_layer) in [
            ("blobs/sha256", &blobs, false),
            ("layers/sha256", &layers, true),
        ] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).map_err(|e| ImageError::io(&dir, "listing", e))? {
                let entry = entry.map_err(|e| ImageError::io(&dir, "listing", e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let path = entry.path();
                if is_layer {
                    super::fsutil::remove_tree(&path)
                        .map_err(|e| ImageError::io(&path, "removing", e))?;
                    stats.layers += 1;
                } else {
                    stats.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&path).map_err(|e| ImageError::io(&path, "removing", e))?;
                    stats.blobs += 1;
                }
            }
        }
        // No writer holds the store lock, so everything in tmp/ is left over from a crash.
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| ImageError::io(&tmp, "listing", e))? {
            let path = entry
                .map_err(|e| ImageError::io(&tmp, "listing", e))?
                .path();
            let removed = if path.is_dir() {
                super::fsutil::remove_tree(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| ImageError::io(&path, "removing", e))?;
        }
        Ok(stats)
    }

    /// Records that container `id` uses `image`. Fails if the id is taken.
    pub(crate) fn add_container(&self, id: &str, image: &Image) -> Result<(), ImageError> {
        let _index = self.lock_index()?;
        let mut index: ContainerIndex = self.read_json("containers.json")?;
        if index.containers.contains_key(id) {
            return Err(ImageError::ContainerExists(id.to_string()));
        }
        index.containers.insert(
            id.to_string(),
            ContainerRecord {
                image: image.manifest.clone(),
                layers: image.diff_ids(),
            },
        );
        self.write_json("containers.json", &index, false)
    }

    /// Forgets container `id`.
    pub(crate) fn remove_container(&self, id: &str) -> Result<(), ImageError> {
        let _index = self.lock_index()?;
        let mut index: ContainerIndex = self.read_json("containers.json")?;
        if index.containers.remove(id).is_some() {
            self.write_json("containers.json", &index, false)?;
        }
        Ok(())
    }

    /// Containers that have a root filesystem from this store, by id.
    pub fn containers(&self) -> Result<BTreeMap<String, ContainerRecord>, ImageError> {
        Ok(self
            .read_json::<ContainerIndex>("containers.json")?
            .containers)
    }
}

/// Renames a finished staging directory into place. If another writer got there first the
/// staging copy is discarded (content addressing makes both equal).
fn commit_dir(staging: tempfile::TempDir, target: &Path) -> Result<(), ImageError> {
    let staged = staging.keep();
    match fs::rename(&staged, target) {
        Ok(()) => Ok(()),
        Err(e) if target.is_dir() => {
            tracing::debug!(target = %target.display(), error = %e, "layer already unpacked by another writer");
            super::fsutil::remove_tree(&staged).map_err(|e| ImageError::io(&staged, "removing", e))
        }
        Err(e) => {
            let _ = super::fsutil::remove_tree(&staged);
            Err(ImageError::io(
                target,
                "renaming the unpacked layer into place",
                e,
            ))
        }
    }
}

fn find_image<'a>(images: &'a [Image], spec: &str) -> Result<&'a Image, ImageError> {
    let not_found = || ImageError::NotFound(spec.to_string());
    if let Ok(digest) = spec.parse::<Digest>() {
        return images
            .iter()
            .find(|i| i.id == digest || i.manifest == digest)
            .ok_or_else(not_found);
    }
    // The common case first, without the reference grammar's costly regular expression.
    if let Some(name) = reference::normalize_simple(spec)
        && let Some(image) = images.iter().find(|i| i.names.contains(&name))
    {
        return Ok(image);
    }
    if let Some(name) = reference::normalize_name(spec) {
        if let Some(image) = images
            .iter()
            .find(|i| i.names.contains(&name) || i.repo_digests.contains(&name))
        {
            return Ok(image);
        }
        // name@digest where the digest is known under another name.
        if let Some((_, digest)) = name.split_once('@')
            && let Ok(digest) = digest.parse::<Digest>()
            && let Some(image) = images.iter().find(|i| i.manifest == digest)
        {
            return Ok(image);
        }
    }
    let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<&Image> = images
            .iter()
            .filter(|i| i.id.hex().starts_with(hex) || i.manifest.hex().starts_with(hex))
            .collect();
        return match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(not_found()),
            _ => Err(ImageError::Ambiguous(spec.to_string())),
        };
    }
    Err(not_found())
}

/// A blob being written to a staging file, hashed on the way.
pub struct BlobWriter {
    inner: HashingWriter<io::BufWriter<tempfile::NamedTempFile>>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Verifies the written bytes against `expected` (when given) and renames the blob into
    /// place. On a mismatch the staging file is deleted and nothing enters the store.
    pub fn commit(
        self,
        store: &ImageStore,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), ImageError> {
        let (buffered, digest, len) = self.inner.finish();
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(ImageError::DigestMismatch {
                what: "blob".into(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        let file = buffered
            .into_inner()
            .map_err(|e| ImageError::io(&store.root, "writing a blob", e.into_error()))?;
        file.as_file()
            .sync_all()
            .map_err(|e| ImageError::io(file.path(), "syncing", e))?;
        let target = store.blob_path(&digest);
        file.persist(&target)
            .map_err(|e| ImageError::io(&target, "renaming the blob into place", e.error))?;
        Ok((digest, len))
    }
}

/// Copies `reader` into a new blob, verifying it against `expected` when given.
pub fn copy_blob(
    store: &ImageStore,
    reader: &mut impl Read,
    expected: Option<&Digest>,
) -> Result<(Digest, u64), ImageError> {
    let mut writer = store.blob_writer()?;
    io::copy(reader, &mut writer).map_err(|e| ImageError::io(&store.root, "writing a blob", e))?;
    writer.commit(store, expected)
}
