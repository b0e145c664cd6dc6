//! The OCI image frontend: references, the content-addressed store, registry pulls,
//! `load`/`import` of archives, safe layer unpacking, and container root filesystems.
//!
//! The docker-style commands call, in order: [`ImageStore::resolve`] (or [`pull()`]),
//! [`crate::spec::from_image`], [`ImageStore::prepare_rootfs`], then a backend.

pub mod archive;
pub mod auth;
pub mod changes;
pub mod compression;
pub mod digest;
pub mod flatten;
pub mod fsutil;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod rootfs;
pub mod save;
pub mod store;
pub mod unpack;

use std::io;
use std::path::{Path, PathBuf};

pub use digest::Digest;
pub use manifest::Platform;
pub use pull::{PullOptions, pull};
pub use rootfs::Rootfs;
pub use store::{GcStats, Image, ImageStore, LayerRecord};

/// Errors of the image frontend. Each message names the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation on the store or an input file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An image reference that does not parse.
    #[error("invalid image reference {input:?}: {reason}")]
    Reference {
        /// What the user gave.
        input: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No such image in the store.
    #[error(
        "image {0:?} is not in the store; run `twinbox images` to list them or `twinbox pull {0}`"
    )]
    NotFound(String),
    /// An id prefix that matches several images.
    #[error("image id prefix {0:?} matches several images; give more digits")]
    Ambiguous(String),
    /// `rmi` of an image that containers still use.
    #[error("image {image:?} is used by container(s) {}; remove them first or use --force", .containers.join(", "))]
    InUse {
        /// The image given.
        image: String,
        /// Ids of the containers using it.
        containers: Vec<String>,
    },
    /// A container id that already has a root filesystem.
    #[error(
        "container {0:?} already has a root filesystem in this store; pick another id or remove it first"
    )]
    ContainerExists(String),
    /// A container id that cannot be used as a directory name.
    #[error(
        "invalid container id {0:?}: use 1-128 characters from [A-Za-z0-9_.-], not starting with '.'"
    )]
    InvalidContainerId(String),
    /// Content that does not match its digest.
    #[error(
        "{what} does not match its digest: expected {expected}, got {actual}; the source is corrupt or was tampered with, nothing was stored"
    )]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// A layer that could not be unpacked.
    #[error("unpacking layer {digest}: {source}")]
    Layer {
        /// The layer blob.
        digest: Digest,
        /// Why.
        #[source]
        source: unpack::UnpackError,
    },
    /// A store index file that cannot be parsed.
    #[error("store file {path} is corrupt ({reason}); restore it or remove the store root")]
    CorruptStore {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// A manifest, index or config that is not a valid image.
    #[error("invalid image: {0}")]
    BadImage(String),
    /// A multi-platform image without the requested platform.
    #[error("image has no variant for platform {wanted}; it has: {}; choose one with --platform", .available.join(", "))]
    NoPlatform {
        /// The platform asked for.
        wanted: String,
        /// What the index offers.
        available: Vec<String>,
    },
    /// A registry request failed.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// A credentials file that cannot be used.
    #[error("credentials file {path}: {reason}")]
    Auth {
        /// The auth.json.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// A `load`/`import` input that is not a supported archive.
    #[error("{path}: {reason}")]
    BadArchive {
        /// The input.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--change` instruction that cannot be applied.
    #[error(
        "invalid --change {0:?}: expected CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME or STOPSIGNAL with a value"
    )]
    BadChange(String),
    /// The user interrupted the operation (Ctrl-C).
    #[error("interrupted; nothing was added to the store")]
    Interrupted,
    /// Mounting or unmounting a container root filesystem failed.
    #[error("{op} {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] for `path`.
    pub fn io(path: &Path, op: &'static str, source: io::Error) -> ImageError {
        ImageError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}
