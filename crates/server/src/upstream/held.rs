//! Manifests served from memory until what they need is stored, and one
//! download per thing.
//!
//! The registry refuses a manifest whose config, layers or child manifests
//! it does not hold. A manifest that came from elsewhere (fetched from a
//! pull-through upstream, or registered as a speculative image) is
//! therefore answered from memory at once, and stored, under the tags that
//! point at it, once the last thing it needs is: every stored blob may
//! complete a held manifest, and every stored image manifest may complete
//! a held index.
//!
//! A held tag wins over a stored one: it is the newer binding. A client's
//! push of that tag wins over both, so a push first takes the tag out of
//! the held map (see [`Held::forget_tag`]). Commits and such pushes take
//! [`Held::tag_lock`] in turn, so a commit that gathered a tag before the
//! push cannot store it after the push.
//!
//! Concurrent requests for the same blob or manifest wait for the first
//! one's download ([`Held::flight`]) instead of starting their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use speculum_oci::{Digest, ManifestInfo, Reference, RepositoryName};
use speculum_storage::{BodyStream, Registry, StoredManifest};

use super::lock;
use super::remote::Remote;
use crate::error::{ApiError, ApiResult};

/// What must be stored before a manifest can be.
#[derive(Clone)]
pub(crate) enum Needs {
    /// An image manifest: its config and layers.
    Blobs(Vec<Digest>),
    /// An index: its child manifests.
    Children(Vec<Digest>),
}

impl Needs {
    /// What `info` needs stored first.
    pub(crate) fn of(info: &ManifestInfo) -> Needs {
        if info.manifests.is_empty() {
            Needs::Blobs(info.required_blobs().map(|d| d.digest.clone()).collect())
        } else {
            Needs::Children(info.manifests.iter().map(|c| c.digest.clone()).collect())
        }
    }
}

/// A manifest that cannot be stored yet, served from memory.
struct Pending {
    media_type: String,
    bytes: Bytes,
    needs: Needs,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Manifests waiting for their blobs or children, by `(repo, digest)`.
    pending: HashMap<(RepositoryName, Digest), Pending>,
    /// Tags that point at a pending manifest (they win over stored tags).
    pending_tags: HashMap<(RepositoryName, String), Digest>,
}

type Flights = HashMap<String, Arc<tokio::sync::Mutex<()>>>;

/// Held manifests and the downloads in flight.
pub(crate) struct Held {
    state: Mutex<State>,
    flights: Arc<Mutex<Flights>>,
    /// The most manifests held; the oldest goes past it. `None`: no bound
    /// (speculative images must not be forgotten: their tags would fall
    /// back to upstream images).
    max_pending: Option<usize>,
    tag_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Held while downloading one thing; the map entry goes when nobody waits.
pub(crate) struct Flight {
    map: Arc<Mutex<Flights>>,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
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

/// Whether a storage error is "not there" (as opposed to a storage failure).
pub(crate) fn is_unknown(e: &speculum_storage::Error) -> bool {
    use speculum_oci::ErrorCode;
    matches!(
        e.code(),
        Some(ErrorCode::ManifestUnknown | ErrorCode::BlobUnknown | ErrorCode::NameUnknown)
    )
}

/// Whether `repo` holds the blob.
pub(crate) async fn has_blob(
    registry: &Registry,
    repo: &RepositoryName,
    digest: &Digest,
) -> ApiResult<bool> {
    match registry.stat_blob(repo, digest).await {
        Ok(_) => Ok(true),
        Err(e) if is_unknown(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Held {
    /// Nothing held; at most `max_pending` manifests (`None`: no bound).
    pub(crate) fn new(max_pending: Option<usize>) -> Held {
        Held {
            state: Mutex::default(),
            flights: Arc::default(),
            max_pending,
            tag_lock: Arc::default(),
        }
    }

    /// Wait for (and then hold) the right to download `key`.
    pub(crate) async fn flight(&self, key: String) -> Flight {
        let lock = lock(&self.flights).entry(key.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        Flight {
            map: self.flights.clone(),
            key,
            lock,
            _guard: guard,
        }
    }

    /// The lock that orders commits of held tags against pushes of tags.
    pub(crate) fn tag_lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.tag_lock.clone()
    }

    /// The manifest if held in memory (by a held tag, or by digest).
    pub(crate) fn pending(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Option<StoredManifest> {
        let state = lock(&self.state);
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => state
                .pending_tags
                .get(&(repo.clone(), t.to_string()))?
                .clone(),
        };
        let p = state.pending.get(&(repo.clone(), digest.clone()))?;
        Some(StoredManifest {
            digest,
            media_type: p.media_type.clone(),
            bytes: p.bytes.clone(),
        })
    }

    /// The manifest if held here: in memory, else in storage.
    pub(crate) async fn local(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> ApiResult<Option<StoredManifest>> {
        if let Some(m) = self.pending(repo, reference) {
            return Ok(Some(m));
        }
        match registry.get_manifest(repo, reference).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_unknown(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Take a held tag out (a client pushed or deleted it): the digest it
    /// pointed at, if it was held.
    pub(crate) fn forget_tag(&self, repo: &RepositoryName, tag: &str) -> Option<Digest> {
        lock(&self.state)
            .pending_tags
            .remove(&(repo.clone(), tag.to_string()))
    }

    /// Whether everything `needs` names is stored in `repo`.
    pub(crate) async fn is_complete(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        needs: &Needs,
    ) -> ApiResult<bool> {
        match needs {
            Needs::Blobs(blobs) => {
                for blob in blobs {
                    if !has_blob(registry, repo, blob).await? {
                        return Ok(false);
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

    /// Store `manifest` under `reference` if everything it needs is
    /// stored, else hold it. `Ok(true)`: held. A manifest the registry
    /// refuses is answered with `bad(why)`.
    pub(crate) async fn store_or_hold(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        reference: &Reference,
        manifest: &StoredManifest,
        needs: Needs,
        bad: impl FnOnce(String) -> ApiError,
    ) -> ApiResult<bool> {
        if !self.is_complete(registry, repo, &needs).await? {
            self.hold(repo, reference, manifest, needs);
            return Ok(true);
        }
        let stored = registry
            .put_manifest(
                repo,
                reference,
                Some(&manifest.media_type),
                manifest.bytes.clone(),
            )
            .await;
        match stored {
            Ok(_) => {}
            Err(e @ speculum_storage::Error::Client { .. }) => return Err(bad(e.to_string())),
            Err(e) => return Err(e.into()),
        }
        if let Reference::Tag(t) = reference {
            self.forget_tag(repo, t.as_str());
        }
        self.commit_pending(registry, repo).await?;
        Ok(false)
    }

    /// Keep a manifest in memory until what it needs is stored.
    pub(crate) fn hold(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        manifest: &StoredManifest,
        needs: Needs,
    ) {
        let mut state = lock(&self.state);
        if let Some(max) = self.max_pending
            && state.pending.len() >= max
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
    pub(crate) async fn commit_pending(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
    ) -> ApiResult<()> {
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
            let _tags = self.tag_lock.lock().await;
            let Some((pending, tags)) = self.take(repo, &digest) else {
                // Another request stored it meanwhile.
                continue;
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
                    // Fetched (or registered) again next time.
                    tracing::warn!(%repo, %reference, error = %e, "cannot store a held manifest");
                }
            }
            tracing::debug!(%repo, %digest, "held manifest stored");
        }
        Ok(())
    }

    /// Take a pending manifest and the held tags that point at it out.
    fn take(&self, repo: &RepositoryName, digest: &Digest) -> Option<(Pending, Vec<String>)> {
        let mut state = lock(&self.state);
        let p = state.pending.remove(&(repo.clone(), digest.clone()))?;
        let tags: Vec<String> = state
            .pending_tags
            .iter()
            .filter(|((r, _), d)| r == repo && *d == digest)
            .map(|((_, t), _)| t.clone())
            .collect();
        for t in &tags {
            state.pending_tags.remove(&(repo.clone(), t.clone()));
        }
        Some((p, tags))
    }

    /// Download a blob from `remote` into `repo` unless it is there
    /// already (one download per blob and repository), then store what it
    /// completes.
    pub(crate) async fn ensure_blob(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        remote: &Remote,
        remote_repo: &RepositoryName,
        digest: &Digest,
    ) -> ApiResult<()> {
        if has_blob(registry, repo, digest).await? {
            return Ok(());
        }
        let _flight = self.flight(blob_flight(repo, digest)).await;
        if has_blob(registry, repo, digest).await? {
            return Ok(());
        }
        let stream = remote.open_blob(remote_repo, digest).await?;
        self.store_blob(registry, repo, remote, digest, idle_timeout(stream))
            .await
            .map(|_| ())
    }

    /// Store a blob's bytes from `remote` (checked against the digest by
    /// storage), then the manifests it completes. Content that does not
    /// match, or a broken stream, is the 404 to answer; once the blob is
    /// stored, a manifest that cannot be stored yet stays held (it is
    /// tried again with the next blob), and the blob is answered.
    pub(crate) async fn store_blob(
        &self,
        registry: &Registry,
        repo: &RepositoryName,
        remote: &Remote,
        digest: &Digest,
        body: BodyStream,
    ) -> ApiResult<u64> {
        let started = Instant::now();
        match registry.put_blob(repo, digest, body).await {
            Ok(size) => {
                tracing::info!(remote = %remote.name(), %repo, %digest, size, elapsed = ?started.elapsed(), "fetched blob");
                if let Err(e) = self.commit_pending(registry, repo).await {
                    tracing::warn!(%repo, error = %e, "cannot store the manifests this blob completes; they stay held");
                }
                Ok(size)
            }
            Err(e @ speculum_storage::Error::Client { .. }) => {
                tracing::warn!(remote = %remote.name(), %repo, %digest, error = %e, "blob download failed");
                Err(remote.unknown(
                    speculum_oci::ErrorCode::BlobUnknown,
                    digest.to_string(),
                    &super::remote::Failure::Failed(e.to_string()),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The flight key of a blob download into `repo`.
pub(crate) fn blob_flight(repo: &RepositoryName, digest: &Digest) -> String {
    format!("blob {repo}@{digest}")
}

/// A remote's blob stream as a storage body, failing if it stalls for
/// [`BLOB_IDLE_TIMEOUT`](super::remote::BLOB_IDLE_TIMEOUT).
pub(crate) fn idle_timeout(stream: speculum_client::ByteStream) -> BodyStream {
    use futures_util::StreamExt;
    let idle = super::remote::BLOB_IDLE_TIMEOUT;
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
                        format!("the remote sent nothing for {idle:?}"),
                    )),
                    None,
                )),
            }
        },
    ))
}
