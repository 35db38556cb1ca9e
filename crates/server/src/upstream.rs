//! Pull-through upstreams: a namespace (`docker.io`, `quay.io`, any host)
//! can name an upstream registry, and what a client asks for there and the
//! registry does not hold is fetched from the upstream, stored, and served.
//!
//! Why it is shaped this way:
//!
//! - **Everything fetched goes through the registry layer** (`put_blob`,
//!   which verifies the digest, then `put_manifest` with the upstream's exact
//!   bytes). So the content is linked only into the repository it was
//!   fetched for, digests never change, and garbage collection, retention,
//!   tag listing and the catalog see proxied content like pushed content.
//! - **A manifest is answered as soon as it is fetched**, and stored once
//!   what it needs is: the registry refuses a manifest whose config, layers
//!   or child manifests it does not hold. Until then it is kept in memory
//!   (and served from there, by tag and by digest).
//!   - An image manifest's config and layers are downloaded in the
//!     background at once (three at a time); the client's own blob requests
//!     join those downloads. The last one stores the manifest.
//!   - An index is lazy: each child manifest is fetched when a client asks
//!     for it by digest, so pulling one platform of a ten-platform image
//!     downloads one platform. The index is stored when all its children
//!     are.
//!   - A restart forgets what is still in memory; the next request fetches
//!     it again.
//! - **Blobs** asked for (a blob GET or HEAD that misses in a proxied
//!   repository) are downloaded into storage (`put_blob` checks the digest),
//!   then served from there.
//! - **One download per thing**: concurrent requests for the same blob, or
//!   the same manifest reference, in the same repository wait for the first
//!   one's download instead of starting their own.
//! - **Tags are re-checked after `tag-ttl`** with a HEAD (no pull counted on
//!   Docker Hub): same digest, nothing to do; another digest, the new
//!   manifest is fetched; upstream unreachable, the cached one is served
//!   and a warning logged; tag unknown upstream (deleted there, or pushed
//!   here), the one held here is served. A tag's first use after a
//!   restart counts as stale. Digest references are never checked upstream
//!   when the manifest is held locally: a digest names one content forever.
//! - **Failures are 404s.** A client configured with mirrors falls back to
//!   its next mirror or the upstream itself on a 404, while a 5xx can abort
//!   its pull. So an upstream that is down, refuses our credentials, or
//!   sends content that does not match its digest answers
//!   `MANIFEST_UNKNOWN`/`BLOB_UNKNOWN` with a detail naming the upstream
//!   and what failed. Upstream calls have bounded timeouts, and after a
//!   connection failure the upstream is considered down for a few seconds,
//!   so a dead upstream costs one timeout, not one per request.
//! - A namespace without an upstream, or a repository outside an upstream's
//!   `repositories` pattern, behaves exactly as before: 404 on a miss (the
//!   buildset registry configures no upstreams).
//!
//! A proxied namespace is a mirror: a tag that exists upstream follows the
//! upstream after the TTL even if a client pushed it here. Push your own
//! images to names the upstream does not have, or restrict the upstream
//! with `repositories`.

mod config;
pub(crate) mod held;
pub(crate) mod remote;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use speculum_client::{Credentials, RawManifest, RegistryOptions};
use speculum_oci::{Digest, ErrorCode, Reference, RepositoryName, manifest};
use speculum_storage::{Registry, StoredManifest};

pub use config::{
    DEFAULT_TAG_TTL, TtlValue, UpstreamConfig, UpstreamConfigError, UpstreamSettings,
    validate_upstreams,
};

use crate::error::ApiResult;
use held::{Held, Needs};
use remote::{Failure, MANIFEST_TIMEOUT, RECHECK_TIMEOUT, Remote, Role};

/// How many blobs of one manifest are downloaded at once.
const PARALLEL_BLOBS: usize = 3;
/// How many incomplete indexes one upstream keeps in memory.
const MAX_PENDING: usize = 1024;

/// A client for an upstream could not be built.
#[derive(Debug, thiserror::Error)]
#[error("upstream for {namespace}: {message}")]
pub struct UpstreamError {
    namespace: String,
    message: String,
}

/// The configured upstreams, by namespace, with their caches. Cheap to
/// clone; [`Upstreams::none`] (the default) proxies nothing.
#[derive(Clone, Default)]
pub struct Upstreams {
    list: Arc<Vec<Arc<Upstream>>>,
}

impl fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|u| &u.settings))
            .finish()
    }
}

impl Upstreams {
    /// No upstreams: every miss is a 404.
    pub fn none() -> Upstreams {
        Upstreams::default()
    }

    /// Build a client for each upstream (reads no network yet).
    pub fn new(settings: Vec<UpstreamSettings>) -> Result<Upstreams, UpstreamError> {
        let mut list = Vec::with_capacity(settings.len());
        for s in settings {
            let opts = RegistryOptions {
                credentials: s
                    .credentials
                    .as_ref()
                    .map(|(u, p)| Credentials::new(u.clone(), p.clone())),
                ca_pems: s.ca_pem.iter().cloned().collect(),
                insecure: s.insecure,
                // A server trusts what its config says, not the host's
                // docker/podman certs.d.
                certs_dirs: Some(Vec::new()),
                // One retry at most: a client is waiting, and a miss is
                // better answered fast (it falls back) than late.
                attempts: Some(2),
                token: None,
            };
            let client =
                speculum_client::Registry::new(&s.host, opts).map_err(|e| UpstreamError {
                    namespace: s.namespace.clone(),
                    message: e.to_string(),
                })?;
            tracing::info!(namespace = %s.namespace, upstream = %client.base(), tag_ttl = ?s.tag_ttl, "pull-through upstream");
            list.push(Arc::new(Upstream {
                remote: Remote::new(Role::Upstream, s.namespace.clone(), client),
                settings: s,
                held: Held::new(Some(MAX_PENDING)),
                checked: Mutex::default(),
            }));
        }
        Ok(Upstreams {
            list: Arc::new(list),
        })
    }

    /// Whether no upstream is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The upstream that serves a stored repository name, and the name of
    /// the repository there: `quay.io/org/app` → (quay.io, `org/app`);
    /// `org/app` → (docker.io, `org/app`); `python` → (docker.io,
    /// `library/python`), as Docker names official images.
    fn find(&self, stored: &RepositoryName) -> Option<(&Arc<Upstream>, RepositoryName)> {
        if self.list.is_empty() {
            return None;
        }
        let name = stored.as_str();
        let (namespace, remote) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first == "localhost" => {
                (first, rest.to_string())
            }
            Some(_) => ("docker.io", name.to_string()),
            None => ("docker.io", format!("library/{name}")),
        };
        let upstream = self
            .list
            .iter()
            .find(|u| u.settings.namespace == namespace)?;
        let remote: RepositoryName = remote.parse().ok()?;
        if let Some(re) = &upstream.settings.repositories
            && !re.is_match(remote.as_str())
        {
            return None;
        }
        Some((upstream, remote))
    }

    /// A manifest of `repo` by tag or digest: from storage, or, in a proxied
    /// namespace, from (or re-checked against) the upstream. Errors are what
    /// [`Registry::get_manifest`] gives for a namespace without upstream.
    pub(crate) async fn manifest(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> ApiResult<StoredManifest> {
        match self.find(repo) {
            None => Ok(registry.get_manifest(repo, reference).await?),
            Some((upstream, remote)) => upstream.manifest(registry, repo, &remote, reference).await,
        }
    }

    /// Make sure a blob that a client asks for in `repo` is held: in a
    /// proxied namespace, a miss is downloaded from the upstream. Does
    /// nothing elsewhere (the caller's own lookup then answers 404).
    pub(crate) async fn ensure_blob(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> ApiResult<()> {
        match self.find(repo) {
            None => Ok(()),
            Some((upstream, remote)) => {
                upstream
                    .held
                    .ensure_blob(registry, repo, &upstream.remote, &remote, digest)
                    .await
            }
        }
    }
}

/// One upstream registry and what is known about it.
struct Upstream {
    settings: UpstreamSettings,
    remote: Remote,
    held: Held,
    /// When each `(repo, tag)` was last confirmed upstream.
    checked: Mutex<HashMap<(RepositoryName, String), Instant>>,
}

// The maps behind these locks are changed by single inserts and removes, so
// a poisoned lock still holds consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Upstream {
    fn namespace(&self) -> &str {
        &self.settings.namespace
    }

    fn is_fresh(&self, key: &(RepositoryName, String)) -> bool {
        lock(&self.checked)
            .get(key)
            .is_some_and(|t| t.elapsed() < self.settings.tag_ttl)
    }

    fn mark_checked(&self, key: (RepositoryName, String)) {
        lock(&self.checked).insert(key, Instant::now());
    }

    #[tracing::instrument(level = "debug", skip_all, fields(namespace = %self.namespace(), %repo, %reference))]
    async fn manifest(
        self: &Arc<Self>,
        registry: &Registry,
        repo: &RepositoryName,
        remote: &RepositoryName,
        reference: &Reference,
    ) -> ApiResult<StoredManifest> {
        let tag = match reference {
            Reference::Digest(_) => None,
            Reference::Tag(t) => Some((repo.clone(), t.to_string())),
        };
        // The common case without waiting for anyone: held, and (for a tag)
        // confirmed upstream within the TTL.
        if tag.as_ref().is_none_or(|key| self.is_fresh(key))
            && let Some(m) = self.held.local(registry, repo, reference).await?
        {
            return Ok(m);
        }
        let _flight = self
            .held
            .flight(format!("manifest {repo}:{reference}"))
            .await;
        let cached = self.held.local(registry, repo, reference).await?;
        let Some(key) = tag else {
            if let Some(m) = cached {
                return Ok(m);
            }
            return self.fetch(registry, repo, remote, reference).await;
        };
        let Some(cached) = cached else {
            let m = self.fetch(registry, repo, remote, reference).await?;
            self.mark_checked(key);
            return Ok(m);
        };
        if self.is_fresh(&key) {
            return Ok(cached);
        }
        let served = self
            .recheck(registry, repo, remote, reference, &key.1, cached)
            .await;
        self.mark_checked(key);
        Ok(served)
    }

    /// Ask the upstream whether a cached tag still points at the same
    /// digest, fetching the new manifest if it moved; whatever fails, the
    /// cached one is served.
    async fn recheck(
        self: &Arc<Self>,
        registry: &Registry,
        repo: &RepositoryName,
        remote: &RepositoryName,
        reference: &Reference,
        tag: &str,
        cached: StoredManifest,
    ) -> StoredManifest {
        let head = self
            .remote
            .call(
                RECHECK_TIMEOUT,
                self.remote.client().head_manifest(remote, tag),
            )
            .await;
        match head {
            Ok(Some((digest, _))) if digest == cached.digest => {
                tracing::debug!(%digest, "tag unchanged upstream");
                cached
            }
            Ok(Some((digest, _))) => {
                tracing::info!(old = %cached.digest, new = %digest, "tag moved upstream; fetching");
                match self.fetch(registry, repo, remote, reference).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot fetch the moved tag; serving the cached manifest");
                        cached
                    }
                }
            }
            Ok(None) => {
                // Deleted upstream, or a tag pushed here that the upstream
                // never had: either way the one held here stands.
                tracing::debug!(digest = %cached.digest, "tag not upstream; serving the one held here");
                cached
            }
            Err(Failure::NotFound) => cached,
            Err(Failure::Failed(why)) => {
                tracing::warn!(error = %why, digest = %cached.digest, "cannot re-check the tag upstream; serving the cached manifest");
                cached
            }
        }
    }

    /// Fetch a manifest from the upstream and answer it at once: stored if
    /// everything it needs is here, else held in memory until it is (an
    /// image manifest's blobs are then downloaded in the background).
    async fn fetch(
        self: &Arc<Self>,
        registry: &Registry,
        repo: &RepositoryName,
        remote: &RepositoryName,
        reference: &Reference,
    ) -> ApiResult<StoredManifest> {
        let what = reference.to_string();
        let raw: RawManifest = self
            .remote
            .call(MANIFEST_TIMEOUT, self.remote.client().get_manifest(remote, &what))
            .await
            .map_err(|f| {
                if let Failure::Failed(why) = &f {
                    tracing::warn!(%remote, reference = %what, error = %why, "upstream manifest fetch failed");
                }
                self.remote
                    .unknown(ErrorCode::ManifestUnknown, what.clone(), &f)
            })?;
        let bad = |why: String| {
            tracing::warn!(%remote, reference = %what, error = %why, "upstream sent an unusable manifest");
            self.remote.unknown(
                ErrorCode::ManifestUnknown,
                what.clone(),
                &Failure::Failed(why),
            )
        };
        let info =
            manifest::parse(Some(&raw.media_type), &raw.bytes).map_err(|e| bad(e.to_string()))?;
        tracing::info!(%remote, reference = %what, digest = %raw.digest, media_type = %info.media_type, "fetched manifest from upstream");
        let served = StoredManifest {
            digest: raw.digest.clone(),
            media_type: info.media_type.clone(),
            bytes: raw.bytes.clone(),
        };
        let needs = Needs::of(&info);
        let held = self
            .held
            .store_or_hold(registry, repo, reference, &served, needs.clone(), bad)
            .await?;
        if held && let Needs::Blobs(blobs) = needs {
            self.prefetch(registry, repo, remote, &served.digest, blobs);
        }
        Ok(served)
    }

    /// Download a held image manifest's blobs in the background, three at a
    /// time; the client's own blob requests join those downloads, and the
    /// last one stores the manifest.
    fn prefetch(
        self: &Arc<Self>,
        registry: &Registry,
        repo: &RepositoryName,
        remote: &RepositoryName,
        digest: &Digest,
        blobs: Vec<Digest>,
    ) {
        let this = Arc::clone(self);
        let (registry, repo, remote) = (registry.clone(), repo.clone(), remote.clone());
        let digest = digest.clone();
        tokio::spawn(async move {
            let fetched = futures_util::stream::iter(blobs)
                .map(|blob| {
                    let (this, registry, repo, remote) = (&this, &registry, &repo, &remote);
                    async move {
                        this.held
                            .ensure_blob(registry, repo, &this.remote, remote, &blob)
                            .await
                    }
                })
                .buffer_unordered(PARALLEL_BLOBS)
                .try_collect::<Vec<()>>()
                .await;
            // Each download stores what it completes (see ensure_blob);
            // a failure leaves the rest to the client's own requests.
            if let Err(e) = fetched {
                tracing::warn!(%repo, %digest, error = %e, "background blob download failed; blobs are fetched again on request");
            }
        });
    }
}
