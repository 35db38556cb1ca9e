//! Content-addressed storage for the speculum registry.
//!
//! Two layers, as in the reference registry:
//!
//! - A [`Backend`] stores content-addressed blobs, upload sessions and small
//!   metadata tables. It is not a filesystem API, so each backend implements
//!   exactly the operations the registry needs. [`MemoryBackend`] keeps
//!   everything in memory (tests, throw-away registries); [`FsBackend`] keeps
//!   it under a directory, whose layout is drawn in one place (`fs.rs`).
//! - The [`Registry`] gives a backend the semantics of the OCI distribution
//!   spec: blobs linked per repository, chunked uploads with a streaming
//!   digest, manifests stored as the exact bytes pushed, one digest per tag,
//!   the referrers index, tag and catalog pagination, enumeration of
//!   repositories, tags, manifests, blobs and uploads, and retention and
//!   garbage collection ([`Registry::prune`] with [`PruneOptions`] and a
//!   [`RetentionPolicy`], reporting a [`GcReport`]).
//! - The `conformance` module (feature `conformance`) is the one test suite
//!   every backend passes; each backend's test is a `conformance_tests!`
//!   call.
//!
//! Every failure is an [`Error`]: [`Error::Client`] carries the spec
//! [`ErrorCode`] (and so the HTTP status) plus a message that is safe to send
//! to a client; [`Error::Io`] is an internal failure that the server logs and
//! answers with 500; [`Error::StorageFull`] is the storage medium out of
//! space (the server answers 507, and the upload that hit it is removed at
//! once, so the space it held is free again); [`Error::CollectionRunning`]
//! says another garbage collection holds the store's collector lock.
//!
//! What a manifest push checks: the manifest parses and is valid for its
//! media type (else `MANIFEST_INVALID`; an unsupported media type is
//! `MANIFEST_INVALID` too), a push by digest matches the content (else
//! `DIGEST_INVALID`), every blob it needs is linked in the repository with the
//! size it claims and every child of an index is a manifest of the
//! repository (else `MANIFEST_BLOB_UNKNOWN`, with the missing digest as
//! detail). A `subject` need not exist.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use speculum_oci::{Digest, RepositoryName, media_type};
//! use speculum_storage::{Registry, body_from_bytes};
//!
//! let registry = Registry::memory();
//! let repo: RepositoryName = "org/app".parse().unwrap();
//!
//! // A blob in two chunks.
//! let id = registry.start_upload(&repo).await.unwrap();
//! registry.append_upload(&repo, &id, Some(0), body_from_bytes("{")).await.unwrap();
//! let config = Digest::sha256(b"{}");
//! let size = registry.finish_upload(&repo, &id, &config, Some(body_from_bytes("}"))).await.unwrap();
//! assert_eq!(size, 2);
//!
//! // A manifest that needs it, pushed under a tag.
//! let manifest = format!(
//!     r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config}","size":2}},"layers":[]}}"#,
//!     media_type::OCI_MANIFEST,
//!     media_type::OCI_EMPTY,
//! );
//! let pushed = registry
//!     .put_manifest(&repo, &"v1".parse().unwrap(), Some(media_type::OCI_MANIFEST), Bytes::from(manifest.clone()))
//!     .await
//!     .unwrap();
//! let got = registry.get_manifest(&repo, &"v1".parse().unwrap()).await.unwrap();
//! assert_eq!(got.digest, pushed.digest);
//! assert_eq!(got.bytes, manifest.as_bytes());
//! assert_eq!(registry.list_tags(&repo, None, None).await.unwrap().items, ["v1"]);
//! # });
//! ```

#![deny(missing_docs)]

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use speculum_oci::{Digest, ErrorCode, ManifestInfo};

mod backend;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod fs;
mod memory;
mod registry;
mod s3;

pub use backend::{Backend, CollectorLock, HeldLock, Table, UploadId, UploadInfo, UploadWriter};
pub use fs::{Durability, FsBackend};
pub use memory::MemoryBackend;
pub use registry::{
    GcOptions, GcReport, GcSummary, PatternError, PruneOptions, Registry, RemovedLink,
    RemovedManifest, RemovedTag, RetentionPolicy, RetentionRule, SCRATCH_MAX_AGE, TagInfo,
};
pub use s3::{S3Backend, S3Config};

/// Bytes as a stream of chunks: a request body on its way in, a blob on its
/// way out.
///
/// Blob reads are chunks rather than an `AsyncRead` so that what a backend
/// already holds as `Bytes` (the memory backend's blob, a file chunk read in
/// one system call, an object store's response) reaches the HTTP body
/// without another copy through a reader's buffer.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A body stream that yields `bytes` as one chunk.
pub fn body_from_bytes(bytes: impl Into<Bytes>) -> BodyStream {
    let bytes = bytes.into();
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

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
    Io(std::io::Error),
    /// The storage medium is out of space or over its quota (`ENOSPC`,
    /// `EDQUOT`): not a bug and not the client's mistake, and it heals by
    /// itself once space is freed, so the server answers it apart from other
    /// failures. An upload whose write hit it has been removed.
    #[error("storage is full: {0}")]
    StorageFull(std::io::Error),
    /// Another garbage collection holds the store's collector lock (a
    /// `prune`, or the scheduled collection of a `serve`, in this process or
    /// another); this one removed nothing.
    #[error("another garbage collection is running on this store")]
    CollectionRunning,
}

impl Error {
    /// A client error with a message and no detail.
    pub fn client(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Client {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// The same error with `detail` attached (client errors only).
    pub fn with_detail(self, detail: serde_json::Value) -> Error {
        match self {
            Error::Client { code, message, .. } => Error::Client {
                code,
                message,
                detail: Some(detail),
            },
            other => other,
        }
    }

    /// The spec code of a client error; `None` for internal failures.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Client { code, .. } => Some(*code),
            Error::Io(_) | Error::StorageFull(_) | Error::CollectionRunning => None,
        }
    }

    /// Whether this is [`Error::StorageFull`].
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Error::StorageFull(_))
    }
}

/// Every I/O failure enters through here, so that a full disk is told
/// apart wherever it happens (a blob, an upload chunk, a tag, a `tmp/`
/// file), not only where a caller thought to look.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        if is_out_of_space(&e) {
            Error::StorageFull(e)
        } else {
            Error::Io(e)
        }
    }
}

/// `ENOSPC` or `EDQUOT`, by kind or, for errors that lost it (wrapped by a
/// library), by raw errno.
fn is_out_of_space(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || e.raw_os_error().is_some_and(|n| {
            n == rustix::io::Errno::NOSPC.raw_os_error()
                || n == rustix::io::Errno::DQUOT.raw_os_error()
        })
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
    /// The inclusive end of the range served (`0` for an empty blob, whose
    /// reader is empty).
    pub end: u64,
    /// The bytes of the range, in chunks.
    pub reader: BodyStream,
}

impl BlobBody {
    /// The number of bytes the reader yields.
    pub fn len(&self) -> u64 {
        if self.size == 0 {
            0
        } else {
            self.end - self.start + 1
        }
    }

    /// Whether the reader yields nothing (an empty blob).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("size", &self.size)
            .field("start", &self.start)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
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

#[cfg(test)]
mod tests {
    use std::io::{Error as IoError, ErrorKind};

    use super::Error;

    #[test]
    fn out_of_space_is_told_apart() {
        let full = [
            IoError::from(ErrorKind::StorageFull),
            IoError::from(ErrorKind::QuotaExceeded),
            IoError::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
            IoError::from_raw_os_error(rustix::io::Errno::DQUOT.raw_os_error()),
        ];
        for e in full {
            let e = Error::from(e);
            assert!(e.is_storage_full(), "{e:?}");
            assert_eq!(e.code(), None);
        }
        for e in [
            IoError::from(ErrorKind::NotFound),
            IoError::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
            IoError::other("no space left on device"),
        ] {
            assert!(matches!(Error::from(e), Error::Io(_)));
        }
    }
}
