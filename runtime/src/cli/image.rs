//! Image commands: pull, load, save, import, images, inspect, rmi, gc, bundle.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// Commands that manage the image store (the global `--root` is the store root).
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry.
    Pull(PullArgs),
    /// Load images from an OCI layout (directory or tar) or a docker-archive tar.
    Load(LoadArgs),
    /// Save images as an OCI image layout tar (what `load` reads back).
    Save(SaveArgs),
    /// Create an image from a root filesystem tarball.
    Import(ImportArgs),
    /// List images.
    Images(ImagesArgs),
    /// Show containers or images as JSON (an image's record, manifest and config).
    Inspect(InspectArgs),
    /// Remove images.
    Rmi(RmiArgs),
    /// Delete blobs and unpacked layers that no image or container uses.
    Gc,
    /// Write an OCI runtime bundle (config.json + rootfs) for an image.
    Bundle(BundleArgs),
}

/// `twinbox pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. busybox, library/alpine:3.20, ghcr.io/o/i@sha256:...
    pub reference: String,
    /// Platform to pull from a multi-platform image (os/arch[/variant]; default: this host).
    #[arg(long)]
    pub platform: Option<String>,
    /// Reach this registry (host[:port]) over plain HTTP. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Credentials file (auth.json format) instead of the default locations.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// No progress bars; print only the image id.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `twinbox load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// OCI layout directory or tar, or docker-archive tar (may be gzip/zstd compressed).
    #[arg(required_unless_present = "input", conflicts_with = "input")]
    pub path: Option<PathBuf>,
    /// The same, as `docker load -i`.
    #[arg(short, long, value_name = "PATH")]
    pub input: Option<PathBuf>,
    /// Repository name for images the archive names only by tag.
    #[arg(long)]
    pub name: Option<String>,
    /// Platform to load from a multi-platform layout (default: this host).
    #[arg(long)]
    pub platform: Option<String>,
}

/// `twinbox save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Images (name, id or digest).
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Write to this file instead of stdout (which must not be a terminal).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `twinbox import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Root filesystem tarball (plain, gzip or zstd).
    pub tarball: PathBuf,
    /// Name for the new image, e.g. myimage:1.0.
    pub name: String,
    /// Dockerfile instruction to apply to the config, e.g. 'CMD ["/bin/sh"]'. Repeatable.
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,
}

/// Output format of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned table.
    Table,
    /// A JSON array.
    Json,
}

/// `twinbox images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print image ids only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// What `twinbox inspect` looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InspectType {
    /// Containers (by name, id or unique id prefix).
    Container,
    /// Images (by name, id or digest).
    Image,
}

/// `twinbox inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Only look for this kind of object (default: containers first, then images).
    #[arg(long = "type", value_enum)]
    pub kind: Option<InspectType>,
    /// Containers or images (name, id or digest).
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `twinbox rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images (name, id or digest). A name that is one of several is only untagged.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove even if containers use the image (their root filesystems keep working).
    #[arg(short, long)]
    pub force: bool,
}

/// Overrides of the image config for the runtime spec (shared by bundle and run).
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct SpecArgs {
    /// Set an environment variable (KEY=VALUE). Repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User to run as: name, uid, name:group or uid:gid (names from the image's /etc/passwd).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory in the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Replace the image's entrypoint (an empty string clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add a capability to the default set (e.g. NET_ADMIN). Repeatable.
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from the default set (ALL drops all). Repeatable.
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Resource limit TYPE=SOFT[:HARD], e.g. nofile=1024:2048. Repeatable.
    #[arg(long, value_name = "TYPE=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Security options: seccomp=unconfined, seccomp=PROFILE.json (OCI or Docker format),
    /// no-new-privileges[=true|false]. Repeatable.
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
}

/// `twinbox bundle`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Image (name, id or digest).
    pub image: String,
    /// Bundle directory to create (must be new or empty).
    pub dir: PathBuf,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Command to run instead of the image's Cmd.
    #[arg(last = true)]
    pub command: Vec<String>,
}
