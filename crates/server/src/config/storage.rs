//! Where images are kept: `storage: {driver, root}` and `uploads-per-user`.
//!
//! The backend is an enum with one variant per driver, each carrying its
//! own typed settings. A new driver (S3) is a new variant, a new arm in
//! [`validate`] and in the server's `open_storage`; no other section
//! changes.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use speculum_storage::Durability;

use super::{ConfigError, RawRegistry, Source};

/// `storage:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    driver: String,
    root: Option<PathBuf>,
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
            StorageBackend::Memory => None,
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
    if storage.driver != "filesystem" {
        return Err(at.err(
            "registry.storage.driver",
            format!(
                "unsupported driver {:?} (speculum supports: filesystem)",
                storage.driver
            ),
        ));
    }
    let root = storage
        .root
        .as_ref()
        .map(|r| at.resolve(r))
        .ok_or_else(|| at.err("registry.storage.root", "is required"))?;
    let uploads_per_user = match raw.uploads_per_user {
        Some(0) => return Err(at.err("registry.uploads-per-user", "must be at least 1")),
        n => n.unwrap_or(crate::DEFAULT_UPLOADS_PER_USER),
    };
    Ok(StorageSettings {
        // The intermediate registry's store outlives the machine's uptime.
        backend: StorageBackend::Filesystem(FilesystemStorage {
            root: Some(root),
            durability: Durability::Flushed,
        }),
        uploads_per_user,
    })
}
