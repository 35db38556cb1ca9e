//! The registry layer: distribution-spec semantics over any [`Backend`].
//!
//! Blobs are stored once (content-addressed) but are visible in a repository
//! only through a link in its `Blobs` table, written when the blob is pushed
//! or mounted there: a client that can read one repository cannot read
//! another's layers by guessing digests. Manifests are blobs too, registered
//! in the repository's `Manifests` table with the media type they were
//! pushed with; a tag is one `Tags` entry naming exactly one digest.
//!
//! Operations that touch several metadata entries (manifest push and delete)
//! hold a per-repository lock; blob uploads hold a per-session lock. Locks
//! are in-process: one registry process owns a storage root.
//!
//! Tags, manifest records and blob links carry the time they were last
//! written (by the registry's clock, [`Registry::set_clock`]): retention and
//! garbage collection (`gc.rs`) decide by those ages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::json;
use speculum_oci::{
    Algorithm, Descriptor, Digest, Digester, ErrorCode, Reference, RepositoryName, Tag, manifest,
};

use crate::backend::{Backend, Table, UploadId, UploadInfo, UploadWriter};
use crate::fs::FsBackend;
use crate::memory::MemoryBackend;
use crate::{BlobBody, BodyStream, ByteRange, Error, Page, PutManifest, Result, StoredManifest};

mod gc;
mod manifest_cache;
mod owners;
mod retention;
pub use gc::{
    GcOptions, GcReport, GcSummary, PruneOptions, RemovedLink, RemovedManifest, RemovedTag,
    SCRATCH_MAX_AGE,
};
pub use retention::{PatternError, RetentionPolicy, RetentionRule};

/// What the registry keeps in memory for an upload session: the streaming
/// digest of the bytes received so far (lost on restart, then recomputed).
#[derive(Default)]
struct Session {
    digester: Option<(Algorithm, Digester)>,
    /// Bytes the digester has seen. When the stored session has more,
    /// another process appended to it (a shared object store behind a load
    /// balancer), and the digester is dropped for a rehash at finish.
    hashed: u64,
}

type SessionRef = Arc<tokio::sync::Mutex<Session>>;

/// The clock that stamps tags, manifests and links.
type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

struct Inner {
    backend: Arc<dyn Backend>,
    sessions: Mutex<HashMap<UploadId, SessionRef>>,
    repo_locks: Mutex<HashMap<RepositoryName, Arc<tokio::sync::Mutex<()>>>>,
    /// Held shared by every write that makes a blob reachable (commit and
    /// link, mount, manifest push) and exclusively by garbage collection
    /// while it starts and for each batch of its sweep, so a sweep never
    /// sees a blob between its store and its link.
    gc_lock: tokio::sync::RwLock<()>,
    /// While a collection runs: every digest linked, pushed as a manifest
    /// or referenced by a manifest push since it started (see `gc.rs`).
    noted: Mutex<Option<std::collections::HashSet<Digest>>>,
    /// One collection at a time.
    gc_run: tokio::sync::Mutex<()>,
    clock: std::sync::RwLock<Clock>,
    /// Open upload sessions per owner, for [`Registry::start_upload_as`].
    owners: owners::Owners,
    /// Manifest bytes by digest, for reads.
    manifests: manifest_cache::ManifestCache,
}

/// The registry layer over a backend. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// How a manifest is recorded in a repository's `Manifests` table.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestRecord {
    media_type: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<Digest>,
    /// When the manifest was last pushed, in Unix seconds; absent in stores
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pushed: Option<u64>,
}

/// A tag as stored in a repository's `Tags` table: JSON with the digest and
/// when the tag was last pushed (Unix seconds). Stores written before the
/// time was recorded hold the bare digest.
#[derive(serde::Serialize, serde::Deserialize)]
struct TagRecord {
    digest: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pushed: Option<u64>,
}

impl TagRecord {
    fn parse(raw: &[u8]) -> Option<TagRecord> {
        let text = std::str::from_utf8(raw).ok()?.trim();
        if text.starts_with('{') {
            serde_json::from_str(text).ok()
        } else {
            Some(TagRecord {
                digest: text.parse().ok()?,
                pushed: None,
            })
        }
    }

    fn to_bytes(&self) -> Result<Bytes> {
        Ok(serde_json::to_vec(self)
            .map_err(std::io::Error::other)?
            .into())
    }
}

/// A tag with the digest it points at and when it was last pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TagInfo {
    /// The tag.
    pub name: String,
    /// The manifest it points at.
    pub digest: Digest,
    /// When the tag was last pushed; `None` for a tag written by a version
    /// that did not record it (garbage collection stamps such tags with the
    /// time it first sees them, and never expires them before).
    pub pushed_at: Option<SystemTime>,
}

/// Unix seconds of a time (0 before the epoch).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The time of Unix seconds.
fn from_unix_secs(secs: u64) -> SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

// The maps guarded by these locks are only ever changed by single inserts
// and removes, so a poisoned lock holds consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn blob_unknown(digest: &Digest) -> Error {
    Error::client(ErrorCode::BlobUnknown, "blob unknown to registry")
        .with_detail(json!({ "digest": digest }))
}

fn upload_unknown() -> Error {
    Error::client(
        ErrorCode::BlobUploadUnknown,
        "blob upload unknown to registry",
    )
}

fn manifest_unknown(reference: &Reference) -> Error {
    Error::client(ErrorCode::ManifestUnknown, "manifest unknown to registry")
        .with_detail(json!({ "reference": reference.to_string() }))
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        what.to_string(),
    ))
}

fn body_error(e: std::io::Error) -> Error {
    Error::client(
        ErrorCode::BlobUploadInvalid,
        format!("reading the request body failed: {e}"),
    )
}

/// Take the page of `items` (sorted) that follows `last`, at most `n` long.
fn paginate(mut items: Vec<String>, last: Option<&str>, n: Option<usize>) -> Page {
    items.sort();
    items.dedup();
    let start = match last {
        Some(last) => items.partition_point(|i| i.as_str() <= last),
        None => 0,
    };
    let rest = items.len() - start;
    let take = n.map_or(rest, |n| n.min(rest));
    let more = take < rest && n != Some(0);
    let items = items.drain(start..start + take).collect();
    Page { items, more }
}

impl Registry {
    /// A registry over any backend.
    pub fn new(backend: impl Backend) -> Registry {
        Registry::with_backend(Arc::new(backend))
    }

    /// A registry over a shared backend.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                backend,
                sessions: Mutex::default(),
                repo_locks: Mutex::default(),
                gc_lock: tokio::sync::RwLock::default(),
                noted: Mutex::default(),
                gc_run: tokio::sync::Mutex::default(),
                clock: std::sync::RwLock::new(Arc::new(SystemTime::now)),
                owners: owners::Owners::default(),
                manifests: manifest_cache::ManifestCache::new(manifest_cache::CAPACITY),
            }),
        }
    }

    /// Replace the clock that stamps tags, manifests and blob links when
    /// they are written (default: [`SystemTime::now`]), for every clone of
    /// this registry. Tests and simulations use it to make content look old
    /// without waiting; upload sessions keep the backend's own time.
    pub fn set_clock(&self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) {
        let mut guard = self
            .inner
            .clock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(clock);
    }

    /// The registry's clock now.
    pub fn now(&self) -> SystemTime {
        let clock = self
            .inner
            .clock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        clock()
    }

    /// A registry that keeps everything in memory.
    pub fn memory() -> Registry {
        Registry::new(MemoryBackend::new())
    }

    /// A registry stored under `root` (created if needed), flushing every
    /// write to the disk.
    pub async fn filesystem(root: &std::path::Path) -> Result<Registry> {
        Ok(Registry::new(FsBackend::open(root).await?))
    }

    /// A registry stored under `root` (created if needed) with the given
    /// [`Durability`](crate::Durability).
    pub async fn filesystem_with(
        root: &std::path::Path,
        durability: crate::Durability,
    ) -> Result<Registry> {
        Ok(Registry::new(FsBackend::open_with(root, durability).await?))
    }

    /// The backend underneath.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    fn backend_ref(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    async fn is_linked(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        Ok(self
            .backend_ref()
            .get(Table::Blobs(repo), &digest.to_string())
            .await?
            .is_some())
    }

    /// Link a blob into `repo`. Callers hold the GC lock shared.
    async fn link(&self, repo: &RepositoryName, digest: &Digest) -> Result<()> {
        let value = gc::link_value(self.now());
        self.note([digest]);
        self.backend_ref()
            .put(Table::Blobs(repo), &digest.to_string(), value)
            .await
    }

    /// Tell a collection in progress that these digests are in use now.
    /// Callers hold the GC lock shared.
    fn note<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) {
        if let Some(noted) = lock(&self.inner.noted).as_mut() {
            noted.extend(digests.into_iter().cloned());
        }
    }

    fn repo_lock(&self, repo: &RepositoryName) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.repo_locks)
            .entry(repo.clone())
            .or_default()
            .clone()
    }

    // ---- blobs ----------------------------------------------------------

    /// The size of a blob linked into `repo`.
    ///
    /// Also renews the link when it is more than a few minutes old: a client
    /// that checks a blob exists (HEAD) before pushing a manifest that needs
    /// it then has the GC grace period to push it, as if it had uploaded
    /// the blob again.
    pub async fn stat_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<u64> {
        let Some(link) = self
            .backend_ref()
            .get(Table::Blobs(repo), &digest.to_string())
            .await?
        else {
            return Err(blob_unknown(digest));
        };
        if gc::link_is_stale(&link, self.now()) {
            // Under the GC lock, so that a sweep either removed the link
            // before (the blob is unknown) or sees the renewed one.
            let _gc = self.inner.gc_lock.read().await;
            if !self.is_linked(repo, digest).await? {
                return Err(blob_unknown(digest));
            }
            self.link(repo, digest).await?;
        }
        self.backend_ref()
            .blob_size(digest)
            .await?
            .ok_or_else(|| blob_unknown(digest))
    }

    /// Open a blob linked into `repo`, whole or a byte range of it. A range
    /// that starts past the end, or ends before it starts, is
    /// [`ErrorCode::RangeInvalid`] (its detail carries the blob's `size`); an
    /// end past the last byte is clamped to it.
    pub async fn read_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobBody> {
        let size = self.stat_blob(repo, digest).await?;
        self.open_blob(digest, size, range).await
    }

    /// [`Registry::read_blob`] for a caller that has just checked the blob
    /// with [`Registry::stat_blob`] (the size it returned): one store
    /// lookup fewer on every blob GET.
    pub async fn open_blob(
        &self,
        digest: &Digest,
        size: u64,
        range: Option<ByteRange>,
    ) -> Result<BlobBody> {
        let last = size.saturating_sub(1);
        let (start, end) = match range {
            None => (0, last),
            Some(r) => {
                let end = r.end.map_or(last, |e| e.min(last));
                if r.start >= size || end < r.start {
                    return Err(Error::client(
                        ErrorCode::RangeInvalid,
                        format!("requested range is not satisfiable for a blob of {size} bytes"),
                    )
                    .with_detail(json!({ "size": size })));
                }
                (r.start, end)
            }
        };
        let len = if size == 0 { 0 } else { end - start + 1 };
        let reader = self
            .backend_ref()
            .read_blob(digest, start, len)
            .await?
            .ok_or_else(|| blob_unknown(digest))?;
        Ok(BlobBody {
            size,
            start,
            end,
            reader,
        })
    }

    /// Unlink a blob from `repo` (the content stays until garbage collection).
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, %digest))]
    pub async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<()> {
        // Under the repository lock, so that a manifest push checking its
        // blobs sees the link either present or gone, not both.
        let repo_lock = self.repo_lock(repo);
        let _guard = repo_lock.lock().await;
        if self
            .backend_ref()
            .remove(Table::Blobs(repo), &digest.to_string())
            .await?
        {
            Ok(())
        } else {
            Err(blob_unknown(digest))
        }
    }

    /// Link a blob of `from` into `repo`: `true` if done, `false` if `from`
    /// does not have it (the caller then starts an ordinary upload).
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, %from, %digest))]
    pub async fn mount_blob(
        &self,
        repo: &RepositoryName,
        from: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool> {
        let _gc = self.inner.gc_lock.read().await;
        if !self.is_linked(from, digest).await?
            || self.backend_ref().blob_size(digest).await?.is_none()
        {
            return Ok(false);
        }
        self.link(repo, digest).await?;
        tracing::debug!("blob mounted");
        Ok(true)
    }

    // ---- uploads --------------------------------------------------------

    /// Start an upload session in `repo`; returns its id (a UUID).
    #[tracing::instrument(level = "debug", skip_all, fields(%repo))]
    pub async fn start_upload(&self, repo: &RepositoryName) -> Result<String> {
        let id = UploadId::new();
        self.create_session(repo, &id).await?;
        Ok(id.to_string())
    }

    /// Start an upload session in `repo` for `owner` (a user name; any
    /// fixed string for anonymous clients), unless `owner` has `max_open`
    /// sessions open already: then [`ErrorCode::TooManyRequests`]. A
    /// session stops counting once it is finished, cancelled or expired.
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, owner))]
    pub async fn start_upload_as(
        &self,
        repo: &RepositoryName,
        owner: &str,
        max_open: usize,
    ) -> Result<String> {
        let id = UploadId::new();
        self.reserve_session(owner, &id, max_open).await?;
        if let Err(e) = self.create_session(repo, &id).await {
            self.release_session(owner, &id);
            return Err(e);
        }
        Ok(id.to_string())
    }

    async fn create_session(&self, repo: &RepositoryName, id: &UploadId) -> Result<()> {
        self.backend_ref().create_upload(id, repo).await?;
        let session = Session {
            digester: Some((Algorithm::Sha256, Algorithm::Sha256.digester())),
            hashed: 0,
        };
        lock(&self.inner.sessions).insert(id.clone(), Arc::new(tokio::sync::Mutex::new(session)));
        Ok(())
    }

    /// Check that `id` names an upload session of `repo`.
    async fn upload_of(&self, repo: &RepositoryName, id: &UploadId) -> Result<UploadInfo> {
        match self.backend_ref().upload_info(id).await? {
            Some(info) if info.repo == *repo => Ok(info),
            _ => Err(upload_unknown()),
        }
    }

    /// Find an upload session, lock it, and check (under the lock) that it
    /// still exists in `repo`.
    async fn lock_session(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<(
        UploadId,
        SessionRef,
        tokio::sync::OwnedMutexGuard<Session>,
        UploadInfo,
    )> {
        let id = UploadId::parse(id).ok_or_else(upload_unknown)?;
        let known = lock(&self.inner.sessions).get(&id).cloned();
        let session = match known {
            Some(session) => session,
            None => {
                // Check before creating in-memory state, so bogus ids cost
                // nothing. A session this process knows skips it: the check
                // under the lock below is the one that counts.
                self.upload_of(repo, &id).await?;
                lock(&self.inner.sessions)
                    .entry(id.clone())
                    .or_default()
                    .clone()
            }
        };
        let guard = session.clone().lock_owned().await;
        match self.upload_of(repo, &id).await {
            Ok(info) => Ok((id, session, guard, info)),
            Err(e) => {
                // Finished or cancelled while we waited.
                self.forget_session(&id, &session);
                Err(e)
            }
        }
    }

    fn forget_session(&self, id: &UploadId, session: &SessionRef) {
        let mut sessions = lock(&self.inner.sessions);
        if sessions.get(id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(id);
        }
    }

    /// Bytes received so far by an upload session.
    pub async fn upload_status(&self, repo: &RepositoryName, id: &str) -> Result<u64> {
        let id = UploadId::parse(id).ok_or_else(upload_unknown)?;
        Ok(self.upload_of(repo, &id).await?.size)
    }

    /// Append a chunk to an upload session. `start` is where the client says
    /// the chunk goes (its `Content-Range` start); it must be the current
    /// size, else [`ErrorCode::RangeInvalid`]. Returns the new size.
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, upload = id, ?start))]
    pub async fn append_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        start: Option<u64>,
        body: BodyStream,
    ) -> Result<u64> {
        let (id, session, mut guard, info) = self.lock_session(repo, id).await?;
        if let Some(start) = start
            && start != info.size
        {
            return Err(Error::client(
                ErrorCode::RangeInvalid,
                format!(
                    "chunk starts at {start} but the upload has {} bytes",
                    info.size
                ),
            )
            .with_detail(json!({ "size": info.size })));
        }
        let result = self.append_locked(&id, &mut guard, info.size, body).await;
        self.discard_if_full(&id, &session, result).await
    }

    /// Remove an upload session whose write failed for lack of space, and
    /// pass the result on. Its partial data would otherwise keep the disk
    /// full until expiry (a day) and fail every other push meanwhile; the
    /// client's next request on it gets `BLOB_UPLOAD_UNKNOWN` and starts
    /// over once the operator has freed space. Callers hold the session.
    async fn discard_if_full<T>(
        &self,
        id: &UploadId,
        session: &SessionRef,
        result: Result<T>,
    ) -> Result<T> {
        if let Err(e) = &result
            && e.is_storage_full()
        {
            match self.backend_ref().delete_upload(id).await {
                Ok(_) => tracing::debug!(upload = %id, "upload removed: storage is full"),
                Err(e) => {
                    tracing::error!(upload = %id, error = %e, "cannot remove an upload that hit a full storage")
                }
            }
            self.forget_session(id, session);
        }
        result
    }

    /// Stream `body` into the session, keeping the digest state in step with
    /// the bytes written. On any failure the digest state is dropped (it may
    /// no longer match the data) and recomputed at finish.
    async fn append_locked(
        &self,
        id: &UploadId,
        session: &mut Session,
        mut size: u64,
        mut body: BodyStream,
    ) -> Result<u64> {
        if session.hashed != size {
            session.digester = None;
        }
        let mut writer: Box<dyn UploadWriter> = self.backend_ref().upload_writer(id).await?;
        let mut result = Ok(());
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    result = Err(body_error(e));
                    break;
                }
            };
            if let Err(e) = writer.write(&chunk).await {
                result = Err(e);
                break;
            }
            if let Some((_, d)) = session.digester.as_mut() {
                d.update(&chunk);
            }
            size += chunk.len() as u64;
        }
        let closed = writer.close().await;
        if result.is_err() || closed.is_err() {
            session.digester = None;
        }
        session.hashed = size;
        result?;
        closed?;
        Ok(size)
    }

    /// Finish an upload session: append the final `body`, check that the
    /// content has `digest` (else [`ErrorCode::DigestInvalid`], and the
    /// session is discarded), store the blob and link it into `repo`.
    /// Returns the blob's size.
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, upload = id, %digest))]
    pub async fn finish_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        digest: &Digest,
        body: Option<BodyStream>,
    ) -> Result<u64> {
        let (id, session, mut guard, info) = self.lock_session(repo, id).await?;
        let result = self
            .finish_locked(repo, &id, &mut guard, info.size, digest, body)
            .await;
        let result = self.discard_if_full(&id, &session, result).await;
        // The in-memory state goes with the stored session (committed, or
        // removed for a wrong digest); while the session is stored, requests
        // must keep sharing its lock.
        let gone = match &result {
            Ok(_) => true,
            Err(_) => matches!(self.backend_ref().upload_info(&id).await, Ok(None)),
        };
        if gone {
            self.forget_session(&id, &session);
        }
        result
    }

    /// [`Registry::finish_upload`] once the session is locked.
    async fn finish_locked(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        guard: &mut Session,
        size: u64,
        digest: &Digest,
        body: Option<BodyStream>,
    ) -> Result<u64> {
        let size = match body {
            Some(body) => self.append_locked(id, guard, size, body).await?,
            None => size,
        };
        // A digester that missed bytes another process appended is stale.
        let current = guard.hashed == size;
        let actual = match guard.digester.take() {
            Some((alg, d)) if current && alg == digest.algorithm() => d.finish(),
            _ => self.rehash(id, digest.algorithm()).await?,
        };
        if actual != *digest {
            self.backend_ref().delete_upload(id).await?;
            tracing::debug!(%actual, "upload digest mismatch");
            return Err(Error::client(
                ErrorCode::DigestInvalid,
                "provided digest did not match uploaded content",
            )
            .with_detail(json!({ "digest": digest, "actual": actual })));
        }
        let _gc = self.inner.gc_lock.read().await;
        let size = self.backend_ref().commit_upload(id, digest).await?;
        // The blob's own time, which a collector in another process goes
        // by (it may have been stored long ago, and is stored again now).
        self.backend_ref().touch_blob(digest, self.now()).await?;
        self.link(repo, digest).await?;
        tracing::debug!(size, "blob stored");
        Ok(size)
    }

    async fn rehash(&self, id: &UploadId, alg: Algorithm) -> Result<Digest> {
        let mut chunks = self.backend_ref().read_upload(id).await?;
        let mut digester = alg.digester();
        while let Some(chunk) = chunks.next().await {
            digester.update(&chunk?);
        }
        Ok(digester.finish())
    }

    /// Cancel an upload session and drop what it received.
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, upload = id))]
    pub async fn cancel_upload(&self, repo: &RepositoryName, id: &str) -> Result<()> {
        let (id, session, _guard, _) = self.lock_session(repo, id).await?;
        self.backend_ref().delete_upload(&id).await?;
        self.forget_session(&id, &session);
        Ok(())
    }

    /// Upload a whole blob in one call (`POST ?digest=`). Nothing is left
    /// behind if it fails.
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, %digest))]
    pub async fn put_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        body: BodyStream,
    ) -> Result<u64> {
        let id = self.start_upload(repo).await?;
        let result = self.finish_upload(repo, &id, digest, Some(body)).await;
        if result.is_err()
            && let Some(id) = UploadId::parse(&id)
            && let Err(e) = self.purge_upload(&id).await
        {
            tracing::error!(%repo, upload = %id, error = %e, "could not remove a failed upload");
        }
        result
    }

    // ---- manifests ------------------------------------------------------

    /// Store a manifest under a tag or its digest. See the crate docs for
    /// the checks made; the exact bytes and the media type are kept.
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PutManifest> {
        self.put_manifest_tagged(repo, reference, &[], content_type, bytes)
            .await
    }

    /// [`Registry::put_manifest`], also pointing each of `tags` at the
    /// manifest (a push by digest with `?tag=` parameters). The tags are
    /// written under the same repository lock as the manifest, after every
    /// check passed, so a refused push leaves no tag behind.
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, %reference))]
    pub async fn put_manifest_tagged(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        tags: &[Tag],
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PutManifest> {
        // An unsupported media type is MANIFEST_INVALID too (`code()` maps
        // it so), with the type named in the message.
        let info = manifest::parse(content_type, &bytes)
            .map_err(|e| Error::client(e.code(), e.to_string()))?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if actual != *d {
                    return Err(Error::client(
                        ErrorCode::DigestInvalid,
                        "manifest digest does not match the reference it was pushed to",
                    )
                    .with_detail(json!({ "digest": d, "actual": actual })));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256(&bytes),
        };
        let size = bytes.len() as u64;

        let repo_lock = self.repo_lock(repo);
        let _guard = repo_lock.lock().await;
        let _gc = self.inner.gc_lock.read().await;
        for blob in info.required_blobs() {
            let stored = if self.is_linked(repo, &blob.digest).await? {
                self.backend_ref().blob_size(&blob.digest).await?
            } else {
                None
            };
            match stored {
                None => {
                    return Err(Error::client(
                        ErrorCode::ManifestBlobUnknown,
                        format!(
                            "manifest references blob {} unknown to the repository",
                            blob.digest
                        ),
                    )
                    .with_detail(json!({ "digest": blob.digest })));
                }
                Some(s) if s != blob.size => {
                    return Err(Error::client(
                        ErrorCode::ManifestInvalid,
                        format!(
                            "manifest says blob {} has {} bytes but it has {s}",
                            blob.digest, blob.size
                        ),
                    )
                    .with_detail(json!({ "digest": blob.digest, "size": s })));
                }
                Some(_) => {}
            }
        }
        for child in &info.manifests {
            if self.manifest_record(repo, &child.digest).await?.is_none() {
                return Err(Error::client(
                    ErrorCode::ManifestBlobUnknown,
                    format!(
                        "index references manifest {} unknown to the repository",
                        child.digest
                    ),
                )
                .with_detail(json!({ "digest": child.digest })));
            }
        }

        self.note(
            info.blobs()
                .map(|d| &d.digest)
                .chain(info.manifests.iter().map(|d| &d.digest))
                .chain([&digest]),
        );
        let be = self.backend_ref();
        be.write_blob(&digest, bytes.clone()).await?;
        be.touch_blob(&digest, self.now()).await?;
        self.inner.manifests.insert(&digest, bytes);
        let subject = info.subject.as_ref().map(|s| s.digest.clone());
        let pushed = Some(unix_secs(self.now()));
        let record = ManifestRecord {
            media_type: info.media_type.clone(),
            size,
            subject,
            pushed,
        };
        let record = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        be.put(Table::Manifests(repo), &digest.to_string(), record.into())
            .await?;
        if let Some(subject) = &info.subject {
            let descriptor = info.referrer_descriptor(digest.clone(), size);
            let value = serde_json::to_vec(&descriptor).map_err(std::io::Error::other)?;
            be.put(
                Table::Referrers(repo, &subject.digest),
                &digest.to_string(),
                value.into(),
            )
            .await?;
        }
        let named = match reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        };
        for tag in named.into_iter().chain(tags) {
            let value = TagRecord {
                digest: digest.clone(),
                pushed,
            };
            be.put(Table::Tags(repo), tag.as_str(), value.to_bytes()?)
                .await?;
        }
        tracing::debug!(%digest, media_type = %info.media_type, "manifest stored");
        Ok(PutManifest { digest, info })
    }

    async fn manifest_record(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>> {
        let Some(raw) = self
            .backend_ref()
            .get(Table::Manifests(repo), &digest.to_string())
            .await?
        else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&raw)
            .map_err(|e| corrupt(format!("manifest record {repo}@{digest} is corrupt: {e}")))?;
        Ok(Some(record))
    }

    async fn tag_record(&self, repo: &RepositoryName, tag: &str) -> Result<Option<TagRecord>> {
        let Some(raw) = self.backend_ref().get(Table::Tags(repo), tag).await? else {
            return Ok(None);
        };
        let record = TagRecord::parse(&raw)
            .ok_or_else(|| corrupt(format!("tag {repo}:{tag} is corrupt")))?;
        Ok(Some(record))
    }

    async fn resolve_tag(&self, repo: &RepositoryName, tag: &str) -> Result<Option<Digest>> {
        Ok(self.tag_record(repo, tag).await?.map(|r| r.digest))
    }

    /// The digest a reference names in `repo`, if the manifest is there.
    pub async fn resolve(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<Digest>> {
        Ok(self.resolve_record(repo, reference).await?.map(|(d, _)| d))
    }

    /// The digest a reference names in `repo` and the manifest's record, if
    /// the manifest is there.
    async fn resolve_record(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<(Digest, ManifestRecord)>> {
        let digest = match reference {
            Reference::Tag(tag) => match self.resolve_tag(repo, tag.as_str()).await? {
                Some(d) => d,
                None => return Ok(None),
            },
            Reference::Digest(d) => d.clone(),
        };
        Ok(self
            .manifest_record(repo, &digest)
            .await?
            .map(|r| (digest, r)))
    }

    /// A manifest by tag or digest: the exact bytes pushed and their media type.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let (digest, record) = self
            .resolve_record(repo, reference)
            .await?
            .ok_or_else(|| manifest_unknown(reference))?;
        let bytes = match self.inner.manifests.get(&digest) {
            Some(bytes) => bytes,
            None => {
                let bytes = self.read_manifest_bytes(&digest, record.size).await?;
                let Some(bytes) = bytes else {
                    tracing::error!(%repo, %digest, "manifest registered but its blob is missing");
                    return Err(manifest_unknown(reference));
                };
                self.inner.manifests.insert(&digest, bytes.clone());
                bytes
            }
        };
        Ok(StoredManifest {
            digest,
            media_type: record.media_type,
            bytes,
        })
    }

    /// A manifest's bytes from the backend, checked against the size its
    /// record gives; `None` if its blob is missing.
    async fn read_manifest_bytes(&self, digest: &Digest, size: u64) -> Result<Option<Bytes>> {
        let Some(mut reader) = self.backend_ref().read_blob(digest, 0, size).await? else {
            return Ok(None);
        };
        let capacity = usize::try_from(size)
            .unwrap_or(0)
            .min(manifest::MAX_MANIFEST_SIZE);
        let mut bytes = Vec::with_capacity(capacity);
        while let Some(chunk) = reader.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        if bytes.len() as u64 != size {
            return Err(corrupt(format!(
                "manifest {digest} has {} bytes, expected {size}",
                bytes.len(),
            )));
        }
        Ok(Some(bytes.into()))
    }

    /// Delete by digest: the manifest, every tag pointing at it and its
    /// referrer record. Delete by tag: only the tag.
    #[tracing::instrument(level = "debug", skip_all, fields(%repo, %reference))]
    pub async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<()> {
        let repo_lock = self.repo_lock(repo);
        let _guard = repo_lock.lock().await;
        let be = self.backend_ref();
        match reference {
            Reference::Tag(tag) => {
                if !be.remove(Table::Tags(repo), tag.as_str()).await? {
                    return Err(manifest_unknown(reference));
                }
            }
            Reference::Digest(digest) => {
                let record = self
                    .manifest_record(repo, digest)
                    .await?
                    .ok_or_else(|| manifest_unknown(reference))?;
                for (tag, target) in self.tags(repo).await? {
                    if target == *digest {
                        be.remove(Table::Tags(repo), &tag).await?;
                    }
                }
                if let Some(subject) = &record.subject {
                    be.remove(Table::Referrers(repo, subject), &digest.to_string())
                        .await?;
                }
                be.remove(Table::Manifests(repo), &digest.to_string())
                    .await?;
            }
        }
        tracing::debug!("manifest deleted");
        Ok(())
    }

    // ---- listings -------------------------------------------------------

    /// Whether `repo` has any tag, manifest or blob link.
    pub async fn repository_exists(&self, repo: &RepositoryName) -> Result<bool> {
        let be = self.backend_ref();
        for table in [
            Table::Tags(repo),
            Table::Manifests(repo),
            Table::Blobs(repo),
        ] {
            if !be.keys(table).await?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The tags of `repo`, sorted, after `last`, at most `n` (`Some(0)` gives
    /// an empty page with `more == false`). [`ErrorCode::NameUnknown`] if the
    /// repository has nothing at all.
    pub async fn list_tags(
        &self,
        repo: &RepositoryName,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<Page> {
        let tags = self.backend_ref().keys(Table::Tags(repo)).await?;
        if tags.is_empty() && !self.repository_exists(repo).await? {
            return Err(Error::client(
                ErrorCode::NameUnknown,
                "repository name not known to registry",
            )
            .with_detail(json!({ "name": repo.as_str() })));
        }
        Ok(paginate(tags, last, n))
    }

    /// The repositories that have at least one manifest, paginated like
    /// [`Registry::list_tags`].
    pub async fn catalog(&self, last: Option<&str>, n: Option<usize>) -> Result<Page> {
        let mut names = Vec::new();
        for repo in self.backend_ref().repositories().await? {
            if !self
                .backend_ref()
                .keys(Table::Manifests(&repo))
                .await?
                .is_empty()
            {
                names.push(repo.to_string());
            }
        }
        Ok(paginate(names, last, n))
    }

    /// The descriptors of the manifests in `repo` whose subject is `digest`,
    /// optionally only those of one artifact type. Empty when there are none.
    pub async fn referrers(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let be = self.backend_ref();
        let table = Table::Referrers(repo, digest);
        let mut out = Vec::new();
        for key in be.keys(table).await? {
            let Some(raw) = be.get(table, &key).await? else {
                continue; // deleted meanwhile
            };
            let descriptor: Descriptor = serde_json::from_slice(&raw)
                .map_err(|e| corrupt(format!("referrer record {repo}@{key} is corrupt: {e}")))?;
            if artifact_type.is_none_or(|t| descriptor.artifact_type.as_deref() == Some(t)) {
                out.push(descriptor);
            }
        }
        Ok(out)
    }

    // ---- enumeration (for garbage collection and tooling) ---------------

    /// Every repository with metadata, sorted (including ones with only
    /// blob links, or with nothing left).
    pub async fn repositories(&self) -> Result<Vec<RepositoryName>> {
        self.backend_ref().repositories().await
    }

    /// Every tag of `repo` with the digest it points at, sorted by tag.
    pub async fn tags(&self, repo: &RepositoryName) -> Result<Vec<(String, Digest)>> {
        let mut out = Vec::new();
        for tag in self.backend_ref().keys(Table::Tags(repo)).await? {
            if let Some(d) = self.resolve_tag(repo, &tag).await? {
                out.push((tag, d));
            }
        }
        Ok(out)
    }

    /// Every tag of `repo` with the digest it points at and when it was last
    /// pushed, sorted by tag.
    pub async fn tags_detailed(&self, repo: &RepositoryName) -> Result<Vec<TagInfo>> {
        let mut out = Vec::new();
        for tag in self.backend_ref().keys(Table::Tags(repo)).await? {
            if let Some(record) = self.tag_record(repo, &tag).await? {
                out.push(TagInfo {
                    name: tag,
                    digest: record.digest,
                    pushed_at: record.pushed.map(from_unix_secs),
                });
            }
        }
        Ok(out)
    }

    /// Every manifest digest of `repo`, sorted.
    pub async fn manifests(&self, repo: &RepositoryName) -> Result<Vec<Digest>> {
        let keys = self.backend_ref().keys(Table::Manifests(repo)).await?;
        Ok(keys.iter().filter_map(|k| k.parse().ok()).collect())
    }

    /// Every blob digest linked into `repo`, sorted.
    pub async fn linked_blobs(&self, repo: &RepositoryName) -> Result<Vec<Digest>> {
        let keys = self.backend_ref().keys(Table::Blobs(repo)).await?;
        Ok(keys.iter().filter_map(|k| k.parse().ok()).collect())
    }

    /// Every stored blob (layers, configs and manifests), sorted.
    pub async fn blobs(&self) -> Result<Vec<Digest>> {
        let mut blobs = self.backend_ref().list_blobs().await?;
        blobs.sort();
        Ok(blobs)
    }

    /// Every upload session in progress, with its state.
    pub async fn uploads(&self) -> Result<Vec<(UploadId, UploadInfo)>> {
        let mut out = Vec::new();
        for id in self.backend_ref().list_uploads().await? {
            if let Some(info) = self.backend_ref().upload_info(&id).await? {
                out.push((id, info));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Remove an upload session whatever its repository (for expiry); waits
    /// for a request in progress on it. `false` if there was none.
    pub async fn purge_upload(&self, id: &UploadId) -> Result<bool> {
        let session = lock(&self.inner.sessions)
            .entry(id.clone())
            .or_default()
            .clone();
        let _guard = session.lock().await;
        let removed = self.backend_ref().delete_upload(id).await;
        self.forget_session(id, &session);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: &[&str], more: bool) -> Page {
        Page {
            items: items.iter().map(|s| s.to_string()).collect(),
            more,
        }
    }

    #[test]
    fn pagination() {
        let all = || vec!["b".to_string(), "a".to_string(), "c".to_string()];
        assert_eq!(paginate(all(), None, None), page(&["a", "b", "c"], false));
        assert_eq!(paginate(all(), None, Some(2)), page(&["a", "b"], true));
        assert_eq!(paginate(all(), Some("b"), Some(2)), page(&["c"], false));
        assert_eq!(
            paginate(all(), Some("a"), Some(2)),
            page(&["b", "c"], false)
        );
        assert_eq!(
            paginate(all(), Some("0"), None),
            page(&["a", "b", "c"], false)
        );
        assert_eq!(paginate(all(), Some("bb"), None), page(&["c"], false));
        assert_eq!(paginate(all(), Some("z"), Some(5)), page(&[], false));
        assert_eq!(paginate(all(), None, Some(0)), page(&[], false));
        assert_eq!(paginate(Vec::new(), None, None), page(&[], false));
    }
}
