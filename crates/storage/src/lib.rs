//! CONTRACT SKELETON — replaced by the real implementation.
//!
//! This file pins the public API that `speculum-server` calls. The storage
//! implementer may add to it and change internals freely, but must keep these
//! names and signatures (or update the server in the same change).

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use speculum_oci::{Descriptor, Digest, ErrorCode, ManifestInfo, Reference, RepositoryName};
use tokio::io::AsyncRead;

/// A request body as a stream of chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A storage error: either the client's mistake (it carries the spec code the
/// server answers with) or an internal failure (the server answers 500 and
/// logs the cause; the client never sees it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was wrong or names something that does not exist.
    #[error("{message}")]
    Client {
        /// The spec error code (its HTTP status is `code.status()`).
        code: ErrorCode,
        /// Human message, safe to send to the client.
        message: String,
        /// Optional structured detail, safe to send to the client.
        detail: Option<serde_json::Value>,
    },
    /// Storage itself failed.
    #[error("storage failure: {0}")]
    Io(#[from] std::io::Error),
}

/// A result with a storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An inclusive byte range requested from a blob: `start..=end`, or from
/// `start` to the end when `end` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: Option<u64>,
}

/// A blob opened for reading.
pub struct BlobBody {
    /// The whole blob's size.
    pub size: u64,
    /// The inclusive range served (`0..=size-1` when no range was asked).
    pub start: u64,
    /// The inclusive end of the range served.
    pub end: u64,
    /// The bytes of the range.
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

/// A manifest as stored: the exact bytes pushed and the media type pushed with.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The media type it is served with.
    pub media_type: String,
    /// The exact bytes pushed.
    pub bytes: Bytes,
}

/// The outcome of a manifest push.
#[derive(Debug, Clone)]
pub struct PutManifest {
    /// The digest of the pushed bytes.
    pub digest: Digest,
    /// What the manifest says (subject, media type, references).
    pub info: ManifestInfo,
}

/// One page of a sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The items, sorted lexically.
    pub items: Vec<String>,
    /// Whether more items follow the last one.
    pub more: bool,
}

/// The registry layer over a backend. Cheap to clone.
#[derive(Clone)]
pub struct Registry {}

#[allow(missing_docs, unused_variables, clippy::unused_async)]
impl Registry {
    pub fn memory() -> Registry { todo!() }
    pub async fn filesystem(root: &std::path::Path) -> Result<Registry> { todo!() }

    pub async fn stat_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<u64> { todo!() }
    pub async fn read_blob(&self, repo: &RepositoryName, digest: &Digest, range: Option<ByteRange>) -> Result<BlobBody> { todo!() }
    pub async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<()> { todo!() }
    pub async fn mount_blob(&self, repo: &RepositoryName, from: &RepositoryName, digest: &Digest) -> Result<bool> { todo!() }

    pub async fn start_upload(&self, repo: &RepositoryName) -> Result<String> { todo!() }
    pub async fn upload_status(&self, repo: &RepositoryName, id: &str) -> Result<u64> { todo!() }
    pub async fn append_upload(&self, repo: &RepositoryName, id: &str, start: Option<u64>, body: BodyStream) -> Result<u64> { todo!() }
    pub async fn finish_upload(&self, repo: &RepositoryName, id: &str, digest: &Digest, body: Option<BodyStream>) -> Result<u64> { todo!() }
    pub async fn cancel_upload(&self, repo: &RepositoryName, id: &str) -> Result<()> { todo!() }
    pub async fn put_blob(&self, repo: &RepositoryName, digest: &Digest, body: BodyStream) -> Result<u64> { todo!() }

    pub async fn put_manifest(&self, repo: &RepositoryName, reference: &Reference, content_type: Option<&str>, bytes: Bytes) -> Result<PutManifest> { todo!() }
    pub async fn get_manifest(&self, repo: &RepositoryName, reference: &Reference) -> Result<StoredManifest> { todo!() }
    pub async fn delete_manifest(&self, repo: &RepositoryName, reference: &Reference) -> Result<()> { todo!() }
    pub async fn list_tags(&self, repo: &RepositoryName, last: Option<&str>, n: Option<usize>) -> Result<Page> { todo!() }
    pub async fn catalog(&self, last: Option<&str>, n: Option<usize>) -> Result<Page> { todo!() }
    pub async fn referrers(&self, repo: &RepositoryName, digest: &Digest, artifact_type: Option<&str>) -> Result<Vec<Descriptor>> { todo!() }
}
