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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use speculum_client::{Credentials, RawManifest, RegistryOptions};
use speculum_oci::{Digest, ErrorCode, Reference, RepositoryName, manifest};
use speculum_storage::{BodyStream, Registry, StoredManifest};

pub use config::{
    DEFAULT_TAG_TTL, TtlValue, UpstreamConfig, UpstreamConfigError, UpstreamSettings,
    validate_upstreams,
};

use crate::error::{ApiError, ApiResult};

/// The longest a manifest request (GET or HEAD) to an upstream may take.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a tag re-check may take before the cached tag is served.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an upstream may take to start answering a blob GET.
const BLOB_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a blob download may stall between two chunks.
const BLOB_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an upstream that could not be reached is not asked again.
const DOWN_FOR: Duration = Duration::from_secs(5);
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
                settings: s,
                client,
                state: Mutex::default(),
                flights: Mutex::default(),
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
            Some((upstream, remote)) => upstream.ensure_blob(registry, repo, &remote, digest).await,
        }
    }
}

/// A fetched manifest that cannot be stored yet, served from memory.
struct Pending {
    media_type: String,
    bytes: Bytes,
    needs: Needs,
    since: Instant,
}

/// What must be stored before a manifest can be.
#[derive(Clone)]
enum Needs {
    /// An image manifest: its config and layers.
    Blobs(Vec<Digest>),
    /// An index: its child manifests.
    Children(Vec<Digest>),
}

#[derive(Default)]
struct State {
    /// When each `(repo, tag)` was last confirmed upstream.
    checked: HashMap<(RepositoryName, String), Instant>,
    /// Manifests waiting for their blobs or children, by `(repo, digest)`.
    pending: HashMap<(RepositoryName, Digest), Pending>,
    /// Tags that point at a pending manifest (they win over stored tags).
    pending_tags: HashMap<(RepositoryName, String), Digest>,
    /// Set after a connection failure: the upstream is not asked before.
    down_until: Option<Instant>,
}

type Flights = HashMap<String, Arc<tokio::sync::Mutex<()>>>;

/// One upstream registry and what is known about it.
struct Upstream {
    settings: UpstreamSettings,
    client: speculum_client::Registry,
    state: Mutex<State>,
    flights: Mutex<Flights>,
}

/// Why an upstream request failed.
enum Failure {
    /// The upstream does not have it.
    NotFound,
    /// Anything else: unreachable, timed out, refused, bad content.
    Failed(String),
}

impl Failure {
    fn from_client(e: speculum_client::Error) -> Failure {
        match e.status() {
            Some(404) => Failure::NotFound,
            _ => Failure::Failed(e.to_string()),
        }
    }
}

/// Held while downloading one thing; the map entry goes when nobody waits.
struct Flight<'a> {
    map: &'a Mutex<Flights>,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        // Ours plus the map's: nobody else is waiting.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
            && Arc::strong_count(&self.lock) <= 3
        {
            map.remove(&self.key);
        }
    }
}

// The maps behind these locks are changed by single inserts and removes, so
// a poisoned lock still holds consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a storage error is "not there" (as opposed to a storage failure).
fn is_unknown(e: &speculum_storage::Error) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::ManifestUnknown | ErrorCode::BlobUnknown | ErrorCode::NameUnknown)
    )
}

impl Upstream {
    fn namespace(&self) -> &str {
        &self.settings.namespace
    }

    /// Wait for (and then hold) the right to download `key`.
    async fn flight(&self, key: String) -> Flight<'_> {
        let lock = lock(&self.flights).entry(key.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        Flight {
            map: &self.flights,
            key,
            lock,
            _guard: guard,
        }
    }

    fn is_down(&self) -> bool {
        lock(&self.state)
            .down_until
            .is_some_and(|t| Instant::now() < t)
    }

    /// Note that the upstream could not be reached (or answered again).
    fn set_down(&self, down: bool) {
        let mut state = lock(&self.state);
        if down {
            if state.down_until.is_none_or(|t| t <= Instant::now()) {
                tracing::warn!(namespace = %self.namespace(), upstream = %self.client.base(), down_for = ?DOWN_FOR, "upstream unreachable");
            }
            state.down_until = Some(Instant::now() + DOWN_FOR);
        } else {
            state.down_until = None;
        }
    }

    /// Run one upstream call with a time limit, classifying its failure and
    /// tracking whether the upstream is reachable.
    async fn call<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = speculum_client::Result<T>>,
    ) -> Result<T, Failure> {
        if self.is_down() {
            return Err(Failure::Failed(format!(
                "{} was unreachable moments ago",
                self.client.base()
            )));
        }
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => {
                self.set_down(false);
                Ok(v)
            }
            Ok(Err(e)) => {
                if matches!(e, speculum_client::Error::Transport { .. }) {
                    self.set_down(true);
                }
                Err(Failure::from_client(e))
            }
            Err(_) => {
                self.set_down(true);
                Err(Failure::Failed(format!(
                    "{} did not answer within {limit:?}",
                    self.client.base()
                )))
            }
        }
    }

    /// The 404 answered when the upstream could not provide something.
    fn unknown(&self, code: ErrorCode, what: String, failure: &Failure) -> ApiError {
        let noun = if code == ErrorCode::BlobUnknown {
            "blob"
        } else {
            "manifest"
        };
        match failure {
            Failure::NotFound => ApiError::new(code)
                .message(format!("{noun} unknown to registry and to its upstream"))
                .detail(json!({ "reference": what, "upstream": self.namespace() })),
            Failure::Failed(why) => ApiError::new(code)
                .message(format!(
                    "{noun} unknown to registry; upstream {} failed: {why}",
                    self.namespace()
                ))
                .detail(json!({
                    "reference": what,
                    "upstream": self.namespace(),
                    "error": why,
                })),
        }
    }

    /// The manifest if held here: a pending one in memory (a tag fetched
    /// again is pending before it is stored), else a stored one.
    async fn local(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> ApiResult<Option<StoredManifest>> {
        let pending = {
            let state = lock(&self.state);
            let digest = match reference {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(t) => state
                    .pending_tags
                    .get(&(repo.clone(), t.to_string()))
                    .cloned(),
            };
            digest.and_then(|digest| {
                state
                    .pending
                    .get(&(repo.clone(), digest.clone()))
                    .map(|p| StoredManifest {
                        digest,
                        media_type: p.media_type.clone(),
                        bytes: p.bytes.clone(),
                    })
            })
        };
        if pending.is_some() {
            return Ok(pending);
        }
        match registry.get_manifest(repo, reference).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_unknown(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn is_fresh(&self, key: &(RepositoryName, String)) -> bool {
        lock(&self.state)
            .checked
            .get(key)
            .is_some_and(|t| t.elapsed() < self.settings.tag_ttl)
    }

    fn mark_checked(&self, key: (RepositoryName, String)) {
        lock(&self.state).checked.insert(key, Instant::now());
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
            && let Some(m) = self.local(registry, repo, reference).await?
        {
            return Ok(m);
        }
        let _flight = self.flight(format!("manifest {repo}:{reference}")).await;
        let cached = self.local(registry, repo, reference).await?;
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
        let head = self
            .call(RECHECK_TIMEOUT, self.client.head_manifest(remote, &key.1))
            .await;
        let served = match head {
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
        };
        self.mark_checked(key);
        Ok(served)
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
            .call(MANIFEST_TIMEOUT, self.client.get_manifest(remote, &what))
            .await
            .map_err(|f| {
                if let Failure::Failed(why) = &f {
                    tracing::warn!(%remote, reference = %what, error = %why, "upstream manifest fetch failed");
                }
                self.unknown(ErrorCode::ManifestUnknown, what.clone(), &f)
            })?;
        let bad = |why: String| {
            tracing::warn!(%remote, reference = %what, error = %why, "upstream sent an unusable manifest");
            self.unknown(
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
        let needs = if info.manifests.is_empty() {
            Needs::Blobs(info.required_blobs().map(|d| d.digest.clone()).collect())
        } else {
            Needs::Children(info.manifests.iter().map(|c| c.digest.clone()).collect())
        };

        if self.is_complete(registry, repo, &needs).await? {
            match registry
                .put_manifest(repo, reference, Some(&info.media_type), raw.bytes)
                .await
            {
                Ok(_) => {}
                Err(e @ speculum_storage::Error::Client { .. }) => return Err(bad(e.to_string())),
                Err(e) => return Err(e.into()),
            }
            if let Reference::Tag(t) = reference {
                lock(&self.state)
                    .pending_tags
                    .remove(&(repo.clone(), t.to_string()));
            }
            self.commit_pending(registry, repo).await?;
            return Ok(served);
        }

        self.hold(repo, reference, &served, needs.clone());
        if let Needs::Blobs(blobs) = needs {
            let this = Arc::clone(self);
            let (registry, repo, remote) = (registry.clone(), repo.clone(), remote.clone());
            let digest = served.digest.clone();
            tokio::spawn(async move {
                let fetched = futures_util::stream::iter(blobs)
                    .map(|blob| {
                        let (this, registry, repo, remote) = (&this, &registry, &repo, &remote);
                        async move { this.ensure_blob(registry, repo, remote, &blob).await }
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
        Ok(served)
    }

    /// Whether everything `needs` names is stored in `repo`.
    async fn is_complete(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        needs: &Needs,
    ) -> ApiResult<bool> {
        match needs {
            Needs::Blobs(blobs) => {
                for blob in blobs {
                    match registry.stat_blob(repo, blob).await {
                        Ok(_) => {}
                        Err(e) if is_unknown(&e) => return Ok(false),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Needs::Children(children) => {
                for child in children {
                    let child = Reference::Digest(child.clone());
                    if registry.resolve(repo, &child).await?.is_none() {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Keep a manifest in memory until what it needs is stored.
    fn hold(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        manifest: &StoredManifest,
        needs: Needs,
    ) {
        let mut state = lock(&self.state);
        if state.pending.len() >= MAX_PENDING
            && let Some(oldest) = state
                .pending
                .iter()
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| k.clone())
        {
            state.pending.remove(&oldest);
            state
                .pending_tags
                .retain(|(r, _), d| !(*r == oldest.0 && *d == oldest.1));
        }
        state.pending.insert(
            (repo.clone(), manifest.digest.clone()),
            Pending {
                media_type: manifest.media_type.clone(),
                bytes: manifest.bytes.clone(),
                needs,
                since: Instant::now(),
            },
        );
        if let Reference::Tag(t) = reference {
            state
                .pending_tags
                .insert((repo.clone(), t.to_string()), manifest.digest.clone());
        }
    }

    /// Store every pending manifest of `repo` whose blobs or children are
    /// now all stored (image manifests first, so the indexes they complete
    /// follow in the same pass), under the tags that point at it.
    async fn commit_pending(&self, registry: &Registry, repo: &RepositoryName) -> ApiResult<()> {
        let mut candidates: Vec<(Digest, Needs)> = lock(&self.state)
            .pending
            .iter()
            .filter(|((r, _), _)| r == repo)
            .map(|((_, d), p)| (d.clone(), p.needs.clone()))
            .collect();
        candidates.sort_by_key(|(_, needs)| matches!(needs, Needs::Children(_)));
        for (digest, needs) in candidates {
            if !self.is_complete(registry, repo, &needs).await? {
                continue;
            }
            let (pending, tags) = {
                let mut state = lock(&self.state);
                let Some(p) = state.pending.remove(&(repo.clone(), digest.clone())) else {
                    // Another request stored it meanwhile.
                    continue;
                };
                let tags: Vec<String> = state
                    .pending_tags
                    .iter()
                    .filter(|((r, _), d)| r == repo && **d == digest)
                    .map(|((_, t), _)| t.clone())
                    .collect();
                for t in &tags {
                    state.pending_tags.remove(&(repo.clone(), t.clone()));
                }
                (p, tags)
            };
            let mut references: Vec<Reference> = tags
                .iter()
                .filter_map(|t| t.parse().ok().map(Reference::Tag))
                .collect();
            if references.is_empty() {
                references.push(Reference::Digest(digest.clone()));
            }
            for reference in references {
                if let Err(e) = registry
                    .put_manifest(
                        repo,
                        &reference,
                        Some(&pending.media_type),
                        pending.bytes.clone(),
                    )
                    .await
                {
                    // Fetched from the upstream again next time.
                    tracing::warn!(%repo, %reference, error = %e, "cannot store a proxied manifest");
                }
            }
            tracing::debug!(%repo, %digest, "proxied manifest stored");
        }
        Ok(())
    }

    /// Download a blob into `repo` unless it is there already.
    #[tracing::instrument(level = "debug", skip_all, fields(namespace = %self.namespace(), %repo, %digest))]
    async fn ensure_blob(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        remote: &RepositoryName,
        digest: &Digest,
    ) -> ApiResult<()> {
        let present = |r: Result<u64, speculum_storage::Error>| match r {
            Ok(_) => Ok(true),
            Err(e) if is_unknown(&e) => Ok(false),
            Err(e) => Err(ApiError::from(e)),
        };
        if present(registry.stat_blob(repo, digest).await)? {
            return Ok(());
        }
        let _flight = self.flight(format!("blob {repo}@{digest}")).await;
        if present(registry.stat_blob(repo, digest).await)? {
            return Ok(());
        }
        let what = digest.to_string();
        let stream = self
            .call(BLOB_START_TIMEOUT, self.client.get_blob(remote, digest))
            .await
            .map_err(|f| {
                if let Failure::Failed(why) = &f {
                    tracing::warn!(%remote, error = %why, "upstream blob fetch failed");
                }
                self.unknown(ErrorCode::BlobUnknown, what.clone(), &f)
            })?;
        let started = Instant::now();
        match registry
            .put_blob(repo, digest, idle_timeout(stream, BLOB_IDLE_TIMEOUT))
            .await
        {
            Ok(size) => {
                tracing::info!(%remote, size, elapsed = ?started.elapsed(), "fetched blob from upstream");
                // A manifest waiting for this blob may be complete now.
                self.commit_pending(registry, repo).await
            }
            // A broken stream or content that does not match its digest.
            Err(e @ speculum_storage::Error::Client { .. }) => {
                tracing::warn!(%remote, error = %e, "upstream blob download failed");
                Err(self.unknown(
                    ErrorCode::BlobUnknown,
                    what,
                    &Failure::Failed(e.to_string()),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The upstream's blob stream as a storage body, failing if it stalls.
fn idle_timeout(stream: speculum_client::ByteStream, idle: Duration) -> BodyStream {
    Box::pin(futures_util::stream::unfold(
        Some(stream),
        move |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("upstream sent nothing for {idle:?}"),
                    )),
                    None,
                )),
            }
        },
    ))
}
