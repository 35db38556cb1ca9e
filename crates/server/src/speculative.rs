//! Speculative images served lazily (issue 10): a buildset registry (BR)
//! serves the images of the changes ahead under their final names without
//! copying them first.
//!
//! The Zuul executor registers them in one `PUT` to
//! [`REGISTRATION_PATH`](speculum_oci::speculative::REGISTRATION_PATH)
//! (see [`speculum_oci::speculative`] for the body and why it carries the
//! manifests): per destination `repository:tag` the manifest bytes (an
//! index with its children), where the image is in the intermediate
//! registry (IR), and a pull-only token for the IR.
//!
//! - **Tags are bound at registration.** Each manifest is held in memory
//!   (the [`Held`] machinery of the pull-through upstreams) and answered at
//!   once by tag and digest; it is stored, under its tag, once every blob it
//!   needs is. Nothing is evicted: a forgotten binding would let a client
//!   fall back to an upstream image of the same name. A later registration
//!   of the same destination replaces the binding; a client's push of that
//!   tag replaces it too (a build job of this buildset rebuilt the image).
//! - **Blobs move when a client pulls them**: a blob GET or HEAD that misses
//!   in the repository, for a blob a registered manifest references, is
//!   fetched from the IR with the token, one download per blob even when
//!   requests come at once, checked against its digest, and stored. A whole
//!   GET is passed through to the client as it is stored (see `stream`);
//!   HEAD and range requests wait for the download and are answered from
//!   storage. A blob already held in another repository of the BR is
//!   linked instead of downloaded.
//! - **A failure is a 404 with a detail** naming the IR and the cause, as
//!   for upstreams: content-addressed, so a client that falls back for a
//!   blob can only get the same bytes or fail. An expired token (see the
//!   IR's `registry.token-expiry`) fails the pull; it never serves another
//!   image.
//! - Manifests are never fetched from the IR here: an unregistered tag is
//!   unknown (404), as in any buildset registry.
//! - Tags held in memory are not listed by `tags/list` or the catalog until
//!   they are stored; pulls by name and digest see them.

mod stream;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::json;
use speculum_client::{BearerToken, RegistryOptions};
use speculum_oci::speculative::{
    DecodedManifest, RegisteredImage, RegistrationAnswer, ValidImage, ValidSource, Validated,
};
use speculum_oci::{Digest, ErrorCode, Reference, RepositoryName};
use speculum_storage::{BodyStream, Registry, StoredManifest};

use crate::error::{ApiError, ApiResult};
use crate::upstream::held::{Held, Needs, blob_flight, has_blob, idle_timeout};
use crate::upstream::lock;
use crate::upstream::remote::{Remote, Role};

/// Where a blob of a registered manifest comes from.
#[derive(Clone)]
struct BlobOrigin {
    remote: Arc<Remote>,
    /// The repository in the IR.
    repository: RepositoryName,
    /// Its size, as the manifest says.
    size: u64,
}

#[derive(Default)]
struct Origins {
    /// By `(repository in the BR, blob digest)`.
    blobs: HashMap<(RepositoryName, Digest), BlobOrigin>,
    /// The digest each destination was last registered with.
    tags: HashMap<(RepositoryName, String), Digest>,
    /// Repositories with registrations.
    repos: HashSet<RepositoryName>,
}

struct Inner {
    held: Held,
    origins: Mutex<Origins>,
}

/// The speculative images of one buildset registry. Cheap to clone.
#[derive(Clone)]
pub struct Speculative {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Speculative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speculative").finish_non_exhaustive()
    }
}

impl Default for Speculative {
    fn default() -> Self {
        Speculative::new()
    }
}

/// A blob answered while it is being fetched and stored.
pub(crate) struct StreamedBlob {
    /// Its size, as the manifest says (the `Content-Length`).
    pub(crate) size: u64,
    /// The bytes, ending with an error if storage refuses them.
    pub(crate) body: BodyStream,
}

/// Held while a client pushes or deletes tags of a repository with
/// registrations, so that a held manifest being stored cannot overwrite
/// the client's change.
pub(crate) struct TagChange {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    /// Whether a registered tag was taken out.
    pub(crate) forgotten: bool,
}

impl Speculative {
    /// Nothing registered.
    pub fn new() -> Speculative {
        Speculative {
            inner: Arc::new(Inner {
                held: Held::new(None),
                origins: Mutex::default(),
            }),
        }
    }

    /// Register `valid`'s images, in order (for one destination, the last
    /// wins).
    pub(crate) async fn register(
        &self,
        registry: &Registry,
        valid: Validated,
    ) -> ApiResult<RegistrationAnswer> {
        let remotes = remotes(&valid.sources)?;
        let mut registered = Vec::with_capacity(valid.images.len());
        for (i, image) in valid.images.into_iter().enumerate() {
            let remote = remotes.get(&image.registry).cloned().ok_or_else(|| {
                ApiError::internal(format!("validated source {} missing", image.registry))
            })?;
            registered.push(self.register_image(registry, remote, i, image).await?);
        }
        Ok(RegistrationAnswer { registered })
    }

    async fn register_image(
        &self,
        registry: &Registry,
        remote: Arc<Remote>,
        index: usize,
        image: ValidImage,
    ) -> ApiResult<RegisteredImage> {
        let repo = &image.repository;
        self.record(repo, &remote, &image);
        let refused = |why: String| {
            ApiError::new(ErrorCode::ManifestInvalid)
                .message(format!("images[{index}]: {why}"))
                .detail(json!({ "field": format!("images[{index}]") }))
        };
        let held = &self.inner.held;
        for child in &image.children {
            let reference = Reference::Digest(child.digest.clone());
            held.store_or_hold(
                registry,
                repo,
                &reference,
                &stored(child),
                Needs::of(&child.info),
                refused,
            )
            .await?;
        }
        let digest = image.manifest.digest.clone();
        let replaced = lock(&self.inner.origins)
            .tags
            .insert((repo.clone(), image.tag.to_string()), digest.clone())
            .filter(|old| *old != digest);
        let is_held = held
            .store_or_hold(
                registry,
                repo,
                &Reference::Tag(image.tag.clone()),
                &stored(&image.manifest),
                Needs::of(&image.manifest.info),
                refused,
            )
            .await?;
        tracing::info!(%repo, tag = %image.tag, %digest, source = %format!("{}/{}:{}", image.registry, image.source_repository, image.source_reference), held = is_held, replaced = ?replaced, "speculative image registered");
        Ok(RegisteredImage {
            repository: repo.to_string(),
            tag: image.tag.to_string(),
            digest: digest.to_string(),
            replaced: replaced.map(|d| d.to_string()),
            held: is_held,
        })
    }

    /// Remember where every blob of `image` comes from.
    fn record(&self, repo: &RepositoryName, remote: &Arc<Remote>, image: &ValidImage) {
        let mut origins = lock(&self.inner.origins);
        origins.repos.insert(repo.clone());
        let manifests = std::iter::once(&image.manifest).chain(&image.children);
        for blob in manifests.flat_map(|m| m.info.blobs()) {
            origins.blobs.insert(
                (repo.clone(), blob.digest.clone()),
                BlobOrigin {
                    remote: remote.clone(),
                    repository: image.source_repository.clone(),
                    size: blob.size,
                },
            );
        }
    }

    /// A registered manifest not stored yet, by tag or digest.
    pub(crate) fn manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Option<StoredManifest> {
        self.inner.held.pending(repo, reference)
    }

    /// Before a client pushes or deletes `tags` in `repo`: take them out of
    /// the registrations, and keep the returned value until the change is
    /// made. `None` for a repository without registrations.
    pub(crate) async fn change_tags(
        &self,
        repo: &RepositoryName,
        tags: &[&str],
    ) -> Option<TagChange> {
        if !lock(&self.inner.origins).repos.contains(repo) {
            return None;
        }
        let guard = self.inner.held.tag_lock().lock_owned().await;
        let mut forgotten = false;
        for tag in tags {
            if let Some(digest) = self.inner.held.forget_tag(repo, tag) {
                tracing::info!(%repo, tag, %digest, "a client changed a speculative tag; the registration no longer applies");
                forgotten = true;
            }
        }
        Some(TagChange {
            _guard: guard,
            forgotten,
        })
    }

    /// Make sure a blob of a registered manifest is held in `repo`,
    /// fetching it from the IR on a miss. `Some`: this request started the
    /// download and `stream` asked for the bytes as they pass. `None`: the
    /// blob is stored now, or is nothing registered here (the caller's own
    /// lookup answers).
    pub(crate) async fn blob(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        digest: &Digest,
        stream: bool,
    ) -> ApiResult<Option<StreamedBlob>> {
        let Some(origin) = self.origin(repo, digest) else {
            return Ok(None);
        };
        if has_blob(registry, repo, digest).await? {
            return Ok(None);
        }
        if self.link_from_elsewhere(registry, repo, digest).await? {
            return Ok(None);
        }
        let flight = self.inner.held.flight(blob_flight(repo, digest)).await;
        if has_blob(registry, repo, digest).await? {
            return Ok(None);
        }
        let body = idle_timeout(origin.remote.open_blob(&origin.repository, digest).await?);
        if !stream {
            let held = &self.inner.held;
            held.store_blob(registry, repo, &origin.remote, digest, body)
                .await?;
            return Ok(None);
        }
        let (to_storage, to_client, finish) = stream::tee(body);
        let inner = self.inner.clone();
        let (registry, repo, digest) = (registry.clone(), repo.clone(), digest.clone());
        let remote = origin.remote.clone();
        tokio::spawn(async move {
            let stored = inner
                .held
                .store_blob(&registry, &repo, &remote, &digest, to_storage)
                .await;
            // Stored (or failed): the requests waiting for this download
            // need not wait for this client to read its last chunk.
            drop(flight);
            finish
                .done(stored.map(|_| ()).map_err(|e| e.to_string()))
                .await;
        });
        Ok(Some(StreamedBlob {
            size: origin.size,
            body: to_client,
        }))
    }

    fn origin(&self, repo: &RepositoryName, digest: &Digest) -> Option<BlobOrigin> {
        lock(&self.inner.origins)
            .blobs
            .get(&(repo.clone(), digest.clone()))
            .cloned()
    }

    /// Link the blob from another repository with registrations that holds
    /// it (images of one project share layers), then store what that
    /// completes. Whether it was linked.
    async fn link_from_elsewhere(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> ApiResult<bool> {
        let others: Vec<RepositoryName> = lock(&self.inner.origins)
            .repos
            .iter()
            .filter(|r| *r != repo)
            .cloned()
            .collect();
        for other in others {
            if registry.mount_blob(repo, &other, digest).await? {
                tracing::debug!(%repo, from = %other, %digest, "blob linked from another repository");
                self.inner.held.commit_pending(registry, repo).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The manifest as held and served.
fn stored(m: &DecodedManifest) -> StoredManifest {
    StoredManifest {
        digest: m.digest.clone(),
        media_type: m.info.media_type.clone(),
        bytes: m.bytes.clone().into(),
    }
}

/// A client per source, with the token and nothing else: the BR trusts the
/// CA it is given besides the system roots, not the node's `certs.d`.
fn remotes(sources: &[ValidSource]) -> ApiResult<HashMap<String, Arc<Remote>>> {
    let mut out = HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        let opts = RegistryOptions {
            credentials: None,
            ca_pems: s.ca.iter().map(|c| c.as_bytes().to_vec()).collect(),
            insecure: s.insecure,
            certs_dirs: Some(Vec::new()),
            // One retry at most: a client is waiting.
            attempts: Some(2),
            token: s.token.clone().map(BearerToken::new),
        };
        let client = speculum_client::Registry::new(&s.registry, opts).map_err(|e| {
            ApiError::custom(
                axum::http::StatusCode::BAD_REQUEST,
                crate::handlers::REGISTRATION_INVALID,
                format!("sources[{i}]: {e}"),
            )
            .detail(json!({ "field": format!("sources[{i}]") }))
        })?;
        let remote = Remote::new(Role::Intermediate, s.registry.clone(), client);
        out.insert(s.registry.clone(), Arc::new(remote));
    }
    Ok(out)
}
