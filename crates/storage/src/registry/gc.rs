//! Garbage collection: expiry of abandoned upload sessions and mark and
//! sweep of blobs nothing needs any more.
//!
//! Live blobs are every manifest of every repository, everything those
//! manifests reference (config, layers, child manifests) and every blob
//! linked into a repository. A link that no manifest of its repository
//! references is itself expired once older than
//! [`GcOptions::unreferenced_link_max_age`] (when set): that is how the layers
//! of deleted manifests become collectable, while the blobs of a push in
//! progress (uploaded, manifest not yet pushed) stay.
//!
//! Tags and manifests are never removed here: which images expire is
//! retention policy, applied by deleting manifests before collecting.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use speculum_oci::{Digest, Reference, manifest};

use super::{Registry, corrupt};
use crate::backend::{Table, UploadId};
use crate::{Error, Result};

/// What a garbage collection removes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcOptions {
    /// Remove upload sessions started at least this long ago.
    pub upload_max_age: Duration,
    /// Unlink blobs that no manifest of their repository references once
    /// they were linked at least this long ago (`Duration::ZERO`: all of
    /// them); `None` keeps every link.
    pub unreferenced_link_max_age: Option<Duration>,
    /// Only report what would be removed.
    pub dry_run: bool,
}

impl Default for GcOptions {
    /// Uploads expire after a day; links are kept; not a dry run.
    fn default() -> Self {
        GcOptions {
            upload_max_age: Duration::from_secs(24 * 3600),
            unreferenced_link_max_age: None,
            dry_run: false,
        }
    }
}

/// What a garbage collection removed (or would have, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Upload sessions removed.
    pub uploads_removed: Vec<UploadId>,
    /// Blob links removed, per repository.
    pub links_removed: Vec<(speculum_oci::RepositoryName, Digest)>,
    /// Blobs removed from storage.
    pub blobs_removed: Vec<Digest>,
    /// The bytes those blobs held.
    pub bytes_freed: u64,
}

/// The value stored in a blob link: when it was made, in Unix seconds.
pub(super) fn link_value(now: SystemTime) -> bytes::Bytes {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    bytes::Bytes::from(secs.to_string())
}

/// When a link was made; `None` if unknown.
fn link_time(value: &[u8]) -> Option<SystemTime> {
    let secs: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

impl Registry {
    /// Collect garbage (see the module docs). Writes that make blobs
    /// reachable wait while the mark and sweep run.
    pub async fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport> {
        let mut report = GcReport::default();
        let now = SystemTime::now();
        for (id, info) in self.uploads().await? {
            if now.duration_since(info.started).unwrap_or_default() >= options.upload_max_age {
                if !options.dry_run {
                    self.purge_upload(&id).await?;
                }
                report.uploads_removed.push(id);
            }
        }

        let _gc = self.inner.gc_lock.write().await;
        let be = self.backend_ref();
        let mut live = HashSet::new();
        for repo in self.repositories().await? {
            let mut referenced = HashSet::new();
            for digest in self.manifests(&repo).await? {
                let stored = match self
                    .get_manifest(&repo, &Reference::Digest(digest.clone()))
                    .await
                {
                    Ok(m) => m,
                    // Registered but its bytes are gone: nothing to mark.
                    Err(Error::Client { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let info = manifest::parse(Some(&stored.media_type), &stored.bytes)
                    .map_err(|e| corrupt(format!("stored manifest {repo}@{digest}: {e}")))?;
                referenced.extend(info.blobs().map(|d| d.digest.clone()));
                referenced.extend(info.manifests.iter().map(|d| d.digest.clone()));
                referenced.insert(digest);
            }
            for digest in self.linked_blobs(&repo).await? {
                let expired = match options.unreferenced_link_max_age {
                    Some(max_age) if !referenced.contains(&digest) => {
                        let value = be.get(Table::Blobs(&repo), &digest.to_string()).await?;
                        value.as_deref().and_then(link_time).is_some_and(|linked| {
                            now.duration_since(linked).unwrap_or_default() >= max_age
                        })
                    }
                    _ => false,
                };
                if expired {
                    if !options.dry_run {
                        be.remove(Table::Blobs(&repo), &digest.to_string()).await?;
                    }
                    report.links_removed.push((repo.clone(), digest));
                } else {
                    live.insert(digest);
                }
            }
            live.extend(referenced);
        }

        for digest in self.blobs().await? {
            if live.contains(&digest) {
                continue;
            }
            report.bytes_freed += be.blob_size(&digest).await?.unwrap_or(0);
            if !options.dry_run {
                be.delete_blob(&digest).await?;
            }
            report.blobs_removed.push(digest);
        }
        tracing::info!(
            dry_run = options.dry_run,
            uploads = report.uploads_removed.len(),
            links = report.links_removed.len(),
            blobs = report.blobs_removed.len(),
            bytes = report.bytes_freed,
            "garbage collected"
        );
        Ok(report)
    }
}
