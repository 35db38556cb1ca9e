//! The in-memory backend: everything in maps behind one mutex.
//!
//! For tests and for short-lived registries whose content fits in memory.
//! Upload sessions hold their bytes in memory, so a blob costs its size here;
//! use the filesystem backend when that matters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use speculum_oci::{Digest, RepositoryName};

use crate::backend::{
    Backend, CollectorLock, Table, UploadId, UploadInfo, UploadWriter, check_key,
};
use crate::{BodyStream, Result};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TableKey {
    Blobs(RepositoryName),
    Manifests(RepositoryName),
    Tags(RepositoryName),
    Referrers(RepositoryName, Digest),
}

impl From<Table<'_>> for TableKey {
    fn from(t: Table<'_>) -> Self {
        match t {
            Table::Blobs(r) => TableKey::Blobs(r.clone()),
            Table::Manifests(r) => TableKey::Manifests(r.clone()),
            Table::Tags(r) => TableKey::Tags(r.clone()),
            Table::Referrers(r, d) => TableKey::Referrers(r.clone(), d.clone()),
        }
    }
}

impl TableKey {
    fn repo(&self) -> &RepositoryName {
        match self {
            TableKey::Blobs(r)
            | TableKey::Manifests(r)
            | TableKey::Tags(r)
            | TableKey::Referrers(r, _) => r,
        }
    }
}

struct Upload {
    repo: RepositoryName,
    data: Vec<u8>,
    started: SystemTime,
}

/// A stored blob and when it was stored (or last touched).
struct Blob {
    bytes: Bytes,
    modified: SystemTime,
}

impl Blob {
    fn new(bytes: Bytes) -> Blob {
        Blob {
            bytes,
            modified: SystemTime::now(),
        }
    }
}

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Blob>,
    uploads: HashMap<UploadId, Upload>,
    tables: BTreeMap<TableKey, BTreeMap<String, Bytes>>,
    /// Whether a garbage collector holds the collector lock.
    collecting: bool,
}

/// A backend that keeps everything in memory.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryBackend")
    }
}

// A panic while holding the lock cannot leave a map half-updated (every
// critical section is a single insert or remove), so a poisoned lock is safe
// to keep using.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn no_upload(id: &UploadId) -> crate::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no upload session {id}"),
    )
    .into()
}

fn reader(bytes: Bytes) -> BodyStream {
    Box::pin(futures_util::stream::once(async { Ok(bytes) }))
}

/// Clears the collector flag when the collector's lock is dropped.
struct Collecting(Arc<Mutex<State>>);

impl Drop for Collecting {
    fn drop(&mut self) {
        lock(&self.0).collecting = false;
    }
}

struct MemoryWriter {
    state: Arc<Mutex<State>>,
    id: UploadId,
}

#[async_trait]
impl UploadWriter for MemoryWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let mut s = lock(&self.state);
        let upload = s
            .uploads
            .get_mut(&self.id)
            .ok_or_else(|| no_upload(&self.id))?;
        upload.data.extend_from_slice(chunk);
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.lock().blobs.get(digest).map(|b| b.bytes.len() as u64))
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Option<BodyStream>> {
        let Some(blob) = self.lock().blobs.get(digest).map(|b| b.bytes.clone()) else {
            return Ok(None);
        };
        let size = blob.len() as u64;
        let start = offset.min(size);
        let end = start.saturating_add(len).min(size);
        // Both bounds are at most the blob's length, which is a usize.
        let (start, end) = (
            usize::try_from(start).unwrap_or(usize::MAX),
            usize::try_from(end).unwrap_or(usize::MAX),
        );
        Ok(Some(reader(blob.slice(start..end))))
    }

    async fn write_blob(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        self.lock()
            .blobs
            .entry(digest.clone())
            .or_insert_with(|| Blob::new(bytes));
        Ok(())
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.lock().blobs.remove(digest).is_some())
    }

    async fn blob_modified(&self, digest: &Digest) -> Result<Option<SystemTime>> {
        Ok(self.lock().blobs.get(digest).map(|b| b.modified))
    }

    async fn touch_blob(&self, digest: &Digest, time: SystemTime) -> Result<bool> {
        Ok(match self.lock().blobs.get_mut(digest) {
            Some(blob) => {
                blob.modified = time;
                true
            }
            None => false,
        })
    }

    async fn list_blobs(&self) -> Result<Vec<Digest>> {
        Ok(self.lock().blobs.keys().cloned().collect())
    }

    async fn create_upload(&self, id: &UploadId, repo: &RepositoryName) -> Result<()> {
        let upload = Upload {
            repo: repo.clone(),
            data: Vec::new(),
            started: SystemTime::now(),
        };
        self.lock().uploads.insert(id.clone(), upload);
        Ok(())
    }

    async fn upload_info(&self, id: &UploadId) -> Result<Option<UploadInfo>> {
        Ok(self.lock().uploads.get(id).map(|u| UploadInfo {
            repo: u.repo.clone(),
            size: u.data.len() as u64,
            started: u.started,
        }))
    }

    async fn upload_writer(&self, id: &UploadId) -> Result<Box<dyn UploadWriter>> {
        if !self.lock().uploads.contains_key(id) {
            return Err(no_upload(id));
        }
        Ok(Box::new(MemoryWriter {
            state: self.state.clone(),
            id: id.clone(),
        }))
    }

    async fn read_upload(&self, id: &UploadId) -> Result<BodyStream> {
        let s = self.lock();
        let upload = s.uploads.get(id).ok_or_else(|| no_upload(id))?;
        Ok(reader(Bytes::copy_from_slice(&upload.data)))
    }

    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> Result<u64> {
        let mut s = self.lock();
        let upload = s.uploads.remove(id).ok_or_else(|| no_upload(id))?;
        let size = upload.data.len() as u64;
        s.blobs
            .entry(digest.clone())
            .or_insert_with(|| Blob::new(Bytes::from(upload.data)));
        Ok(size)
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<bool> {
        Ok(self.lock().uploads.remove(id).is_some())
    }

    async fn list_uploads(&self) -> Result<Vec<UploadId>> {
        Ok(self.lock().uploads.keys().cloned().collect())
    }

    async fn get(&self, table: Table<'_>, key: &str) -> Result<Option<Bytes>> {
        check_key(key)?;
        Ok(self
            .lock()
            .tables
            .get(&TableKey::from(table))
            .and_then(|t| t.get(key))
            .cloned())
    }

    async fn put(&self, table: Table<'_>, key: &str, value: Bytes) -> Result<()> {
        check_key(key)?;
        self.lock()
            .tables
            .entry(table.into())
            .or_default()
            .insert(key.to_string(), value);
        Ok(())
    }

    async fn remove(&self, table: Table<'_>, key: &str) -> Result<bool> {
        check_key(key)?;
        let mut s = self.lock();
        let tk = TableKey::from(table);
        let Some(t) = s.tables.get_mut(&tk) else {
            return Ok(false);
        };
        let removed = t.remove(key).is_some();
        if t.is_empty() {
            s.tables.remove(&tk);
        }
        Ok(removed)
    }

    async fn keys(&self, table: Table<'_>) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .tables
            .get(&TableKey::from(table))
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn repositories(&self) -> Result<Vec<RepositoryName>> {
        let repos: BTreeSet<RepositoryName> = self
            .lock()
            .tables
            .keys()
            .map(|k| k.repo().clone())
            .collect();
        Ok(repos.into_iter().collect())
    }

    async fn scratch(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Nothing in memory outlives a crash.
    async fn remove_scratch(&self, _before: SystemTime, _dry_run: bool) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn try_lock_collector(&self) -> Result<Option<CollectorLock>> {
        let mut s = self.lock();
        if s.collecting {
            return Ok(None);
        }
        s.collecting = true;
        Ok(Some(CollectorLock::new(Collecting(self.state.clone()))))
    }
}

#[cfg(test)]
mod tests {
    crate::conformance_tests!(async { (crate::Registry::memory(), ()) });
}
