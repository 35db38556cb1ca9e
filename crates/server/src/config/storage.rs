//! Where images are kept: `storage: {driver, ...}` and `uploads-per-user`.
//!
//! The backend is an enum with one variant per driver, each carrying its
//! own typed settings: `filesystem` (`root`) or `s3` (bucket, endpoint and
//! credentials, see [`s3`]). A new driver is a new variant, a new arm in
//! [`validate`] and in the server's `open_storage`; no other section
//! changes.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use speculum_storage::{Durability, S3Config};

use super::{ConfigError, RawRegistry, Source};

mod s3;

/// `storage:` as written: the keys of every driver, each checked to
/// belong to the one chosen.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawStorage {
    driver: String,
    root: Option<PathBuf>,
    bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    prefix: Option<String>,
    path_style: Option<bool>,
    access_key_id_file: Option<PathBuf>,
    secret_access_key_file: Option<PathBuf>,
    /// Refused with a pointer to the `-file` keys: secrets stay out of
    /// the config file.
    access_key_id: Option<serde::de::IgnoredAny>,
    secret_access_key: Option<serde::de::IgnoredAny>,
    ca: Option<PathBuf>,
    redirect: Option<bool>,
    part_size_mib: Option<usize>,
}

/// Where images are kept, and how many uploads one user may keep open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageSettings {
    /// The backend.
    pub backend: StorageBackend,
    /// The most upload sessions one user (or all anonymous clients) may
    /// have open; past it, starting one is refused with 429.
    pub uploads_per_user: usize,
}

impl StorageSettings {
    /// `backend`, with the default bound on upload sessions.
    pub fn new(backend: StorageBackend) -> StorageSettings {
        StorageSettings {
            backend,
            uploads_per_user: crate::DEFAULT_UPLOADS_PER_USER,
        }
    }

    /// The directory storage lives in, when the backend has a fixed one.
    pub fn root(&self) -> Option<&Path> {
        match &self.backend {
            StorageBackend::Filesystem(fs) => fs.root.as_deref(),
            StorageBackend::Memory | StorageBackend::S3(_) => None,
        }
    }
}

impl std::fmt::Display for StorageSettings {
    /// The store in words, for messages: a directory or a bucket.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            StorageBackend::Filesystem(FilesystemStorage { root: Some(r), .. }) => {
                write!(f, "{}", r.display())
            }
            StorageBackend::Filesystem(_) => f.write_str("a temporary directory"),
            StorageBackend::Memory => f.write_str("memory"),
            StorageBackend::S3(s3) => write!(f, "bucket {}", s3.config.bucket),
        }
    }
}

/// The storage backend and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageBackend {
    /// Files under a directory.
    Filesystem(FilesystemStorage),
    /// Process memory: gone on exit (tests).
    Memory,
    /// A bucket of an S3-compatible object store, which several registry
    /// processes may share.
    S3(S3Storage),
}

/// The S3 backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Storage {
    /// The bucket, where, and the credentials (read from their files or
    /// the environment at load).
    pub config: S3Config,
    /// Send clients to a pre-signed URL of the store for blob GETs instead
    /// of streaming blobs through the registry.
    pub redirect: bool,
}

/// The filesystem backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemStorage {
    /// The directory (created at start if needed); `None`: a temporary
    /// directory made at start and removed on shutdown.
    pub root: Option<PathBuf>,
    /// Whether writes are flushed to the disk before they are acknowledged.
    pub durability: Durability,
}

/// Validate `storage` and `uploads-per-user`.
pub(super) fn validate(raw: &RawRegistry, at: &Source) -> Result<StorageSettings, ConfigError> {
    let storage = raw
        .storage
        .as_ref()
        .ok_or_else(|| at.err("registry.storage", "is required"))?;
    let backend = match storage.driver.as_str() {
        "filesystem" => filesystem(storage, at)?,
        "s3" => {
            if storage.root.is_some() {
                return Err(at.err("registry.storage.root", "is for driver filesystem only"));
            }
            StorageBackend::S3(s3::validate(storage, at)?)
        }
        other => {
            return Err(at.err(
                "registry.storage.driver",
                format!("unsupported driver {other:?} (speculum supports: filesystem, s3)"),
            ));
        }
    };
    let uploads_per_user = match raw.uploads_per_user {
        Some(0) => return Err(at.err("registry.uploads-per-user", "must be at least 1")),
        n => n.unwrap_or(crate::DEFAULT_UPLOADS_PER_USER),
    };
    Ok(StorageSettings {
        backend,
        uploads_per_user,
    })
}

fn filesystem(storage: &RawStorage, at: &Source) -> Result<StorageBackend, ConfigError> {
    if let Some(key) = s3::first_key(storage) {
        return Err(at.err(&format!("registry.storage.{key}"), "is for driver s3 only"));
    }
    let root = storage
        .root
        .as_ref()
        .map(|r| at.resolve(r))
        .ok_or_else(|| at.err("registry.storage.root", "is required"))?;
    // The intermediate registry's store outlives the machine's uptime.
    Ok(StorageBackend::Filesystem(FilesystemStorage {
        root: Some(root),
        durability: Durability::Flushed,
    }))
}
