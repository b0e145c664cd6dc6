//! Standard OCI runtime bundles (`config.json` + `rootfs/`) from stored images, runnable by
//! any OCI runtime (runc, crun, twinbox).

use std::fs;
use std::path::Path;

use oci_spec::runtime::Spec;

use super::{SpecError, SpecOptions, from_image};
use crate::image::flatten::flatten;
use crate::image::{Image, ImageError, ImageStore, fsutil};

/// A bundle that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The image or store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The runtime spec could not be built.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The bundle directory is not usable.
    #[error("bundle directory {path}: {reason}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes a bundle for `image` into `dir` (created if missing; must be empty): the image's
/// layers copied into `dir/rootfs` and the runtime spec into `dir/config.json`. On error
/// everything this created is removed again.
pub fn write_bundle(
    store: &ImageStore,
    image: &Image,
    dir: &Path,
    options: &SpecOptions,
) -> Result<Spec, BundleError> {
    let bad = |reason: String| BundleError::Dir {
        path: dir.to_path_buf(),
        reason,
    };
    let created_dir = match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(bad("is not empty; give a new or empty directory".into()));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it: {e}")))?;
            true
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let result = fill_bundle(store, image, dir, options);
    if result.is_err() {
        if created_dir {
            let _ = fsutil::remove_tree(dir);
        } else {
            let _ = fsutil::remove_tree(&dir.join("rootfs"));
            let _ = fs::remove_file(dir.join("config.json"));
        }
    }
    result
}

fn fill_bundle(
    store: &ImageStore,
    image: &Image,
    dir: &Path,
    options: &SpecOptions,
) -> Result<Spec, BundleError> {
    let rootfs = dir.join("rootfs");
    fs::create_dir(&rootfs).map_err(|e| ImageError::io(&rootfs, "creating", e))?;
    {
        // Held while copying, so a concurrent rmi + gc cannot delete the layers under us.
        let _lock = store.lock_shared()?;
        let layers = store.layer_dirs(image)?;
        flatten(&layers, &rootfs)
            .map_err(|e| ImageError::io(&rootfs, "copying the image layers into", e))?;
    }
    let spec = from_image(&store.config(image)?, &rootfs, options)?;
    let path = dir.join("config.json");
    let json = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    fs::write(&path, json).map_err(|e| ImageError::io(&path, "writing", e))?;
    Ok(spec)
}
