//! Pulling images from OCI / Docker registries (distribution spec) with `oci-client`:
//! anonymous, bearer-token (from the `WWW-Authenticate` challenge) and basic auth; index
//! and manifest-list platform selection; every blob verified against its digest before use.

use std::io::Write;
use std::path::PathBuf;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use super::manifest::{self, ImageNames, Manifest, Platform};
use super::progress::Progress;
use super::reference::{self, Reference};
use super::store::{Image, ImageStore, LayerRecord};
use super::{Digest, ImageError, auth};

/// Layers downloaded at once.
const PARALLEL_DOWNLOADS: usize = 3;

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Platform to select from a multi-platform image (default: this host's).
    pub platform: Option<Platform>,
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Credentials file to use instead of the default locations.
    pub authfile: Option<PathBuf>,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

/// Pulls `reference` into the store and returns the stored image.
pub fn pull(
    store: &ImageStore,
    reference: &str,
    options: &PullOptions,
) -> Result<Image, ImageError> {
    let parsed = reference::parse(reference)?;
    store.adding_content(|| {
        // Created and dropped inside the locked section: dropping the runtime waits for
        // unpacking tasks still running after a cancel, so gc never races them.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ImageError::io(store.root(), "starting the download runtime", e))?;
        let puller = Puller::new(store, parsed, options)?;
        runtime.block_on(async {
            // Ctrl-C cancels the pull cleanly: staging files are dropped and whatever this
            // pull stored without recording an image is collected.
            tokio::select! {
                result = puller.run() => result,
                _ = tokio::signal::ctrl_c() => Err(ImageError::Interrupted),
            }
        })
    })
}

struct Puller<'a> {
    store: &'a ImageStore,
    reference: Reference,
    client: Client,
    auth: RegistryAuth,
    platform: Platform,
    progress: Progress,
    insecure: bool,
}

impl<'a> Puller<'a> {
    fn new(
        store: &'a ImageStore,
        reference: Reference,
        options: &PullOptions,
    ) -> Result<Self, ImageError> {
        let registry = reference.resolve_registry().to_string();
        let insecure = options
            .insecure_registries
            .iter()
            .any(|r| r == reference.registry() || *r == registry);
        let mut plain_http: Vec<String> = options.insecure_registries.clone();
        plain_http.push(registry);
        let client = Client::new(ClientConfig {
            protocol: if insecure {
                ClientProtocol::HttpsExcept(plain_http)
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            user_agent: concat!("twinbox/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        });
        let auth = match auth::find_credentials(options.authfile.as_deref(), &reference)? {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Puller {
            store,
            reference,
            client,
            auth,
            platform: options.platform.clone().unwrap_or_else(Platform::host),
            progress: Progress::new(options.progress),
            insecure,
        })
    }

    fn registry_error(&self, e: OciDistributionError) -> ImageError {
        let registry = self.reference.registry().to_string();
        let hint = match &e {
            OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
                if self.insecure {
                    " (is the registry running and reachable?)".to_string()
                } else {
                    format!(
                        " (is it reachable? if it serves plain HTTP, pass --insecure-registry {registry} or add it to insecure_registries in the config file)"
                    )
                }
            }
            OciDistributionError::RequestError(re) if re.is_request() && !self.insecure => format!(
                " (if it serves plain HTTP, pass --insecure-registry {registry} or add it to insecure_registries in the config file)"
            ),
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => {
                " (check the credentials for this registry in auth.json, or pass --authfile)"
                    .to_string()
            }
            OciDistributionError::ImageManifestNotFoundError(_) => {
                " (check the repository name and tag)".to_string()
            }
            OciDistributionError::RegistryError { .. } => {
                " (check the repository name, tag and your access to it)".to_string()
            }
            _ => String::new(),
        };
        ImageError::Registry {
            registry,
            message: format!("{}{hint}", error_chain(&e)),
        }
    }

    /// An error from a blob stream: a digest mismatch detected while streaming becomes
    /// [`ImageError::DigestMismatch`], anything else a registry error.
    fn stream_error(&self, digest: &Digest, e: std::io::Error) -> ImageError {
        if let Some(DigestError::VerificationError { expected, actual }) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<DigestError>())
            && let (Ok(expected), Ok(actual)) = (expected.parse(), actual.parse())
        {
            return ImageError::DigestMismatch {
                what: format!("blob {digest} from {}", self.reference.registry()),
                expected,
                actual,
            };
        }
        self.registry_error(e.into())
    }

    async fn run(self) -> Result<Image, ImageError> {
        self.client
            .auth(&self.reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.registry_error(e))?;
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&self.reference, &self.auth, manifest::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.registry_error(e))?;
        let top_digest = Digest::of_bytes(&bytes);
        self.check_requested_digest(&top_digest)?;

        let repo = reference::repository(&self.reference);
        let mut names = ImageNames::default();
        if let Some(tag) = self.reference.tag() {
            names.names.push(format!("{repo}:{tag}"));
        }
        names.repo_digests.push(format!("{repo}@{top_digest}"));

        let (manifest_digest, manifest_bytes, image_manifest) = match manifest::parse(&bytes)? {
            Manifest::Image(m) => (top_digest, bytes.to_vec(), m),
            Manifest::Index(index) => {
                self.store.write_blob(&bytes, Some(&top_digest))?;
                names.index = Some(top_digest);
                let chosen = manifest::select_platform(&index, &self.platform)?;
                let digest = manifest::descriptor_digest(&chosen)?;
                let by_digest = self.reference.clone_with_digest(digest.to_string());
                let (bytes, _) = self
                    .client
                    .pull_manifest_raw(&by_digest, &self.auth, manifest::ACCEPTED_MANIFESTS)
                    .await
                    .map_err(|e| self.registry_error(e))?;
                let actual = Digest::of_bytes(&bytes);
                if actual != digest {
                    return Err(ImageError::DigestMismatch {
                        what: format!("manifest for {}", self.platform),
                        expected: digest,
                        actual,
                    });
                }
                match manifest::parse(&bytes)? {
                    Manifest::Image(m) => {
                        names.repo_digests.push(format!("{repo}@{digest}"));
                        (digest, bytes.to_vec(), m)
                    }
                    Manifest::Index(_) => {
                        return Err(ImageError::BadImage(
                            "an index entry points to another index".into(),
                        ));
                    }
                }
            }
        };

        let config_digest = manifest::descriptor_digest(image_manifest.config())?;
        let config = self.fetch_small_blob(&config_digest).await?;
        let image = manifest::image_record(&manifest_digest, &image_manifest, &config, names)?;

        futures_util::stream::iter(image.layers.iter().map(|layer| self.fetch_layer(layer)))
            .buffer_unordered(PARALLEL_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        self.unpack_layers(&image.layers).await?;

        self.store
            .write_blob(&manifest_bytes, Some(&manifest_digest))?;
        self.store.add_image(image)
    }

    fn check_requested_digest(&self, actual: &Digest) -> Result<(), ImageError> {
        if let Some(requested) = self.reference.digest() {
            let requested: Digest =
                requested
                    .parse()
                    .map_err(|e: super::digest::InvalidDigest| ImageError::Reference {
                        input: self.reference.whole(),
                        reason: e.to_string(),
                    })?;
            if requested != *actual {
                return Err(ImageError::DigestMismatch {
                    what: "manifest".into(),
                    expected: requested,
                    actual: actual.clone(),
                });
            }
        }
        Ok(())
    }

    /// Downloads a config blob (kept in memory and stored).
    async fn fetch_small_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        if self.store.has_blob(digest) {
            return self.store.read_blob(digest);
        }
        let mut data = Vec::new();
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, digest.as_ref())
            .await
            .map_err(|e| self.registry_error(e))?;
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk.map_err(|e| self.stream_error(digest, e))?);
        }
        self.store.write_blob(&data, Some(digest))?;
        Ok(data)
    }

    /// Downloads one layer blob into the store (verified) unless it is there.
    async fn fetch_layer(&self, layer: &LayerRecord) -> Result<(), ImageError> {
        if self.store.has_blob(&layer.digest) {
            return Ok(());
        }
        let bar = self.progress.bytes(
            format!("Copying blob {}", layer.digest.short()),
            Some(layer.size),
        );
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, layer.digest.as_ref())
            .await
            .map_err(|e| self.registry_error(e))?;
        let mut writer = self.store.blob_writer()?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.stream_error(&layer.digest, e))?;
            writer
                .write_all(&chunk)
                .map_err(|e| ImageError::io(self.store.root(), "writing a blob", e))?;
            bar.inc(chunk.len() as u64);
        }
        writer.commit(self.store, Some(&layer.digest))?;
        bar.finish_with_message(format!("Copied blob  {}", layer.digest.short()));
        Ok(())
    }

    /// Unpacks the layers (each into its own directory, so in parallel).
    async fn unpack_layers(&self, layers: &[LayerRecord]) -> Result<(), ImageError> {
        let tasks = layers
            .iter()
            .filter(|l| !self.store.layer_path(&l.diff_id).is_dir())
            .map(|layer| {
                let store = self.store.clone();
                let layer = layer.clone();
                let bar = self
                    .progress
                    .step(format!("Unpacking {}", layer.digest.short()));
                async move {
                    let result = tokio::task::spawn_blocking(move || store.ensure_layer(&layer))
                        .await
                        .map_err(|e| ImageError::BadImage(format!("unpacking task failed: {e}")))?;
                    bar.finish_with_message(format!(
                        "Unpacked  {}",
                        bar.message().trim_start_matches("Unpacking ")
                    ));
                    result.map(drop)
                }
            });
        futures_util::stream::iter(tasks)
            .buffer_unordered(2)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// An error with its sources, joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
