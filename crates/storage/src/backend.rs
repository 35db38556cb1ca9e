//! The [`Backend`] trait: what a storage medium must provide.
//!
//! A backend stores three kinds of things, and knows nothing of manifests,
//! tags or repositories' rules (the registry layer in `registry.rs` does):
//!
//! - **content-addressed blobs**, written once under their digest (the caller
//!   has verified the digest) and read by range;
//! - **upload sessions**, append-only scratch objects that become a blob
//!   atomically when committed;
//! - **small metadata tables** ([`Table`]): per-repository maps from a short
//!   key (a digest or a tag) to a small value, each write atomic.
//!
//! It is deliberately not a filesystem API (no paths, no walk, no move): an
//! object store can implement each operation directly, and listing a table
//! or the set of blobs is one call, which keeps catalog and GC cheap.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use speculum_oci::{Digest, RepositoryName};

use crate::{BodyStream, Result};

/// The id of an upload session: a lowercase hyphenated UUID.
///
/// Only canonical UUIDs parse, so an id is always safe to use as a file or
/// object name (no path traversal through a crafted id).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UploadId(String);

impl UploadId {
    /// A new random id (UUID v4).
    pub fn new() -> UploadId {
        UploadId(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    /// Parse an id as handed out by [`UploadId::new`]; anything else is `None`.
    pub fn parse(s: &str) -> Option<UploadId> {
        let u = uuid::Uuid::try_parse(s).ok()?;
        let canonical = u.hyphenated().to_string();
        (canonical == s).then_some(UploadId(canonical))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for UploadId {
    fn default() -> Self {
        UploadId::new()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What a backend knows about an upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// The repository the upload was started in.
    pub repo: RepositoryName,
    /// Bytes received so far.
    pub size: u64,
    /// When the session was created.
    pub started: SystemTime,
}

/// A metadata table: a small map from keys to values, scoped to a repository.
///
/// Keys are digests (`sha256:...`) or tags; the registry layer validates
/// them before they reach a backend, and backends refuse keys that are not
/// plain names. Values are small opaque bytes (at most a few KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table<'a> {
    /// Blobs linked into a repository: digest → when linked (Unix seconds).
    Blobs(&'a RepositoryName),
    /// Manifests of a repository: digest → JSON record (media type, subject).
    Manifests(&'a RepositoryName),
    /// Tags of a repository: tag → digest.
    Tags(&'a RepositoryName),
    /// Manifests whose `subject` is the given digest: digest → descriptor JSON.
    Referrers(&'a RepositoryName, &'a Digest),
}

impl Table<'_> {
    /// The repository the table belongs to.
    pub fn repo(&self) -> &RepositoryName {
        match self {
            Table::Blobs(r) | Table::Manifests(r) | Table::Tags(r) | Table::Referrers(r, _) => r,
        }
    }
}

/// Appends to one upload session. Dropping it without [`UploadWriter::close`]
/// may lose buffered bytes.
#[async_trait]
pub trait UploadWriter: Send {
    /// Append `chunk`.
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Flush everything written; the session's size then includes it.
    async fn close(self: Box<Self>) -> Result<()>;
}

/// A storage medium for blobs, upload sessions and small metadata.
///
/// Every method may be called concurrently. Implementations must make each
/// single operation atomic (a reader never sees a half-written blob or
/// metadata value); the registry layer serializes what needs more than one.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The size of a blob, or `None` if it is not stored.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;

    /// Read `len` bytes of a blob from `offset` (the caller has checked the
    /// range against the size), or `None` if the blob is not stored.
    async fn read_blob(&self, digest: &Digest, offset: u64, len: u64)
    -> Result<Option<BodyStream>>;

    /// A URL from which a client can fetch the blob itself for the next
    /// `valid_for` (a pre-signed object-store URL), or `None` when the
    /// backend has none or the blob is not stored: the server then streams
    /// the blob. Only a backend whose store clients can reach has one.
    async fn blob_url(
        &self,
        digest: &Digest,
        valid_for: std::time::Duration,
    ) -> Result<Option<String>> {
        let _ = (digest, valid_for);
        Ok(None)
    }

    /// Store a small blob whose digest the caller has verified. Storing a
    /// blob that exists already is not an error.
    async fn write_blob(&self, digest: &Digest, bytes: Bytes) -> Result<()>;

    /// Remove a blob; `false` if it was not stored.
    async fn delete_blob(&self, digest: &Digest) -> Result<bool>;

    /// When a blob was stored, or last given a time by
    /// [`Backend::touch_blob`]; `None` if it is not stored. Storing a blob
    /// that exists already need not change it. Garbage collection spares a
    /// blob younger than its grace period by this time, whatever its own
    /// mark saw, so that a collector in another process never deletes a
    /// blob that was just pushed.
    async fn blob_modified(&self, digest: &Digest) -> Result<Option<SystemTime>>;

    /// Set the time [`Backend::blob_modified`] reports (at least to the
    /// second); `false` if the blob is not stored. The registry stamps every
    /// blob it stores or stores again with its own clock.
    async fn touch_blob(&self, digest: &Digest, time: SystemTime) -> Result<bool>;

    /// Every stored blob, in no particular order.
    async fn list_blobs(&self) -> Result<Vec<Digest>>;

    /// Create an empty upload session.
    async fn create_upload(&self, id: &UploadId, repo: &RepositoryName) -> Result<()>;

    /// The state of an upload session, or `None` if there is none.
    async fn upload_info(&self, id: &UploadId) -> Result<Option<UploadInfo>>;

    /// Open an upload session for appending. Fails if it does not exist.
    async fn upload_writer(&self, id: &UploadId) -> Result<Box<dyn UploadWriter>>;

    /// Read everything received so far by an upload session.
    async fn read_upload(&self, id: &UploadId) -> Result<BodyStream>;

    /// Turn an upload session into the blob `digest` (verified by the
    /// caller): make it durable, move it into place atomically (or drop it
    /// if the blob exists already) and remove the session. Returns the size.
    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> Result<u64>;

    /// Remove an upload session and its data; `false` if there was none.
    async fn delete_upload(&self, id: &UploadId) -> Result<bool>;

    /// Every upload session, in no particular order.
    async fn list_uploads(&self) -> Result<Vec<UploadId>>;

    /// A metadata value.
    async fn get(&self, table: Table<'_>, key: &str) -> Result<Option<Bytes>>;

    /// Set a metadata value, atomically replacing any previous one.
    async fn put(&self, table: Table<'_>, key: &str, value: Bytes) -> Result<()>;

    /// Remove a metadata value; `false` if there was none.
    async fn remove(&self, table: Table<'_>, key: &str) -> Result<bool>;

    /// The keys of a table, sorted.
    async fn keys(&self, table: Table<'_>) -> Result<Vec<String>>;

    /// Every repository that has (or had) metadata, sorted. It may include
    /// repositories whose tables are all empty now.
    async fn repositories(&self) -> Result<Vec<RepositoryName>>;

    /// Temporary objects that belong to no upload session, such as the
    /// partial file of a metadata write in progress or left by a crash.
    /// Empty when the backend is idle and healthy.
    async fn scratch(&self) -> Result<Vec<String>>;

    /// Remove the scratch objects ([`Backend::scratch`]) last written
    /// before `before` and return their names; with `dry_run`, only return
    /// them. The scratch of a write in progress is moments old, so a cut-off
    /// well in the past removes only what a crash left behind.
    async fn remove_scratch(&self, before: SystemTime, dry_run: bool) -> Result<Vec<String>>;

    /// Become the one garbage collector of this store, across every process
    /// that opens it: `Some(lock)`, held until dropped, or `None` at once if
    /// another collector holds it. Never waits.
    async fn try_lock_collector(&self) -> Result<Option<CollectorLock>>;
}

/// Proof that a garbage collector holds a store's collector lock
/// ([`Backend::try_lock_collector`]); dropping it releases the lock.
pub struct CollectorLock {
    _held: Box<dyn std::any::Any + Send + Sync>,
}

impl CollectorLock {
    /// A lock that `held` keeps until it is dropped (an open locked file, a
    /// guard that clears a flag, a lease renewer).
    pub fn new(held: impl std::any::Any + Send + Sync) -> CollectorLock {
        CollectorLock {
            _held: Box::new(held),
        }
    }
}

impl fmt::Debug for CollectorLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorLock").finish_non_exhaustive()
    }
}

/// Check that a metadata key is a plain name: the characters of digests and
/// tags only, not starting with a dot, at most 256 bytes.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid metadata key {key:?}"),
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_canonical_uuids() {
        let id = UploadId::new();
        assert_eq!(UploadId::parse(id.as_str()), Some(id.clone()));
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "not-a-uuid",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c8/..",
        ] {
            assert_eq!(UploadId::parse(bad), None, "{bad:?}");
        }
        assert!(UploadId::parse("67e55044-10b1-426f-9247-bb680e5fe0c8").is_some());
    }

    #[test]
    fn keys() {
        assert!(check_key("latest").is_ok());
        assert!(check_key("sha256:abc").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a\\b", "a b", "a\0"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
