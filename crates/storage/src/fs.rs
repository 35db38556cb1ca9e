//! The filesystem backend.
//!
//! Everything lives under one root directory:
//!
//! ```text
//! <root>/
//! ├── blobs/
//! │   └── <algorithm>/<first 2 hex>/<hex>          blob bytes: layers, configs, manifests
//! ├── uploads/
//! │   └── <uuid>/                                  one upload session
//! │       ├── info                                 JSON {"repo", "started"}
//! │       └── data                                 the bytes received so far
//! ├── repositories/
//! │   └── <name component>/.../<name component>/  one directory per name component
//! │       ├── _blobs/<algorithm>:<hex>             the blob is linked here: when (Unix seconds)
//! │       ├── _manifests/<algorithm>:<hex>         JSON record: media type, size, subject, when pushed
//! │       ├── _tags/<tag>                          JSON: the digest the tag points at, when pushed
//! │       └── _referrers/<subject digest>/<digest> the referrer's descriptor, JSON
//! ├── tmp/<uuid>                                   a file or session being created
//! └── gc.lock                                      flock()ed by the one garbage collector
//! ```
//!
//! A blob's time (for garbage collection's grace period) is its file's
//! modification time, which the registry sets when it stores the blob.
//!
//! Why it is safe:
//! - Names that reach the filesystem are validated first: repository name
//!   components match the spec grammar (they start and end with a letter or
//!   digit, so never `.`, `..` or `_blobs`), digests are strict lowercase hex,
//!   tags have no `/` and no leading `.`, upload ids are canonical UUIDs.
//! - Every write that replaces something (a tag, a link, a blob) is written
//!   to `tmp/`, fsynced, renamed into place and its directory fsynced, so a
//!   reader or a crash sees the old value or the new one, never a torn file.
//! - An upload session is created complete in `tmp/` and renamed into
//!   `uploads/`; its `data` is renamed into `blobs/` when committed. `tmp/`
//!   and `uploads/` are therefore empty whenever nothing is in flight, and
//!   what a crash leaves there is garbage for GC.

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use speculum_oci::{Digest, RepositoryName};
use tokio::io::AsyncWriteExt;

use crate::backend::{
    Backend, CollectorLock, Table, UploadId, UploadInfo, UploadWriter, check_key,
};
use crate::{BodyStream, Result};

mod cached;

/// Blobs and uploads are read in chunks of this size: one system call, one
/// hand-off to the blocking pool and one `Bytes` per MiB.
const READ_CHUNK: u64 = 1024 * 1024;

/// How many chunks are read ahead of the one being consumed, so that the
/// disk read of the next chunk overlaps the sending of this one.
const READ_AHEAD: usize = 2;

/// A backend that stores everything under a root directory (see the module
/// docs for the layout).
#[derive(Debug, Clone)]
pub struct FsBackend {
    root: PathBuf,
    durability: Durability,
}

/// Whether a write is flushed to the disk before it is acknowledged.
///
/// Either way a write is atomic (temporary file, then rename), and a crash
/// of the process, even `kill -9`, loses nothing acknowledged: the data is
/// in the kernel's page cache. What the flush adds is surviving a power
/// loss or a kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync files and their directories before acknowledging: for a store
    /// that outlives its machine's uptime (the intermediate registry).
    #[default]
    Flushed,
    /// Leave the flush to the kernel: for a store that does not outlive
    /// its machine anyway (a buildset registry's temporary root, gone with
    /// the buildset), where a flush per blob, manifest and tag costs push
    /// time and buys nothing.
    PageCache,
}

impl Durability {
    fn sync_file(self, file: &std::fs::File) -> io::Result<()> {
        match self {
            Durability::Flushed => file.sync_all(),
            Durability::PageCache => Ok(()),
        }
    }

    /// fsync a directory, so that a rename or create in it is durable.
    fn sync_dir(self, dir: &Path) -> io::Result<()> {
        match self {
            Durability::Flushed => std::fs::File::open(dir)?.sync_all(),
            Durability::PageCache => Ok(()),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct InfoFile {
    repo: String,
    /// Seconds since the Unix epoch.
    started: u64,
}

/// `len` bytes of `file` from `offset`, as a stream of chunks read with
/// positional reads on the blocking pool. A file shorter than expected ends
/// the stream with an error rather than short.
fn file_chunks(file: std::fs::File, offset: u64, len: u64) -> BodyStream {
    use futures_util::StreamExt as _;

    let file = std::sync::Arc::new(file);
    let end = offset.saturating_add(len);
    let starts = std::iter::successors(Some(offset), |at| Some(at + READ_CHUNK))
        .take_while(move |at| *at < end);
    let chunks = futures_util::stream::iter(starts)
        .map(move |at| {
            let file = file.clone();
            // At most READ_CHUNK, so the cast cannot truncate.
            let n = (end - at).min(READ_CHUNK) as usize;
            async move {
                tokio::task::spawn_blocking(move || read_chunk(&file, at, n))
                    .await
                    .map_err(io::Error::other)?
            }
        })
        .buffered(READ_AHEAD);
    Box::pin(chunks)
}

/// `n` bytes of `file` from `at`, read into memory that is not zeroed first
/// (zeroing a chunk cost as much as a tenth of a TLS blob GET's CPU).
fn read_chunk(file: &std::fs::File, at: u64, n: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(n);
    while buf.len() < n {
        // `buf.len() < n`, so the offset stays within the range asked for.
        let pos = at + buf.len() as u64;
        let got = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), pos)?;
        if got == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("file ends before byte {pos}"),
            ));
        }
    }
    Ok(Bytes::from(buf))
}

async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)??)
}

fn not_found_is<T>(r: io::Result<T>, default: T) -> io::Result<T> {
    match r {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(default),
        other => other,
    }
}

/// Write `bytes` to `dest` atomically through a temporary file in `tmp`.
fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    use std::io::Write as _;
    let parent = dest
        .parent()
        .ok_or_else(|| io::Error::other("destination has no parent"))?;
    std::fs::create_dir_all(parent)?;
    let temp = tmp.join(UploadId::new().as_str());
    let result = (|| {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(bytes)?;
        durability.sync_file(&f)?;
        std::fs::rename(&temp, dest)?;
        durability.sync_dir(parent)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        r => r?,
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Ok(name) = entry?.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

impl FsBackend {
    /// Open (creating it if needed) a store rooted at `root`, flushing
    /// every write ([`Durability::Flushed`]).
    pub async fn open(root: impl Into<PathBuf>) -> Result<FsBackend> {
        FsBackend::open_with(root, Durability::Flushed).await
    }

    /// Open (creating it if needed) a store rooted at `root`.
    pub async fn open_with(root: impl Into<PathBuf>, durability: Durability) -> Result<FsBackend> {
        let root = root.into();
        let backend = FsBackend { root, durability };
        for dir in [
            backend.blobs_dir(),
            backend.uploads_dir(),
            backend.repos_dir(),
            backend.tmp_dir(),
        ] {
            tokio::fs::create_dir_all(dir).await?;
        }
        Ok(backend)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    fn repos_dir(&self) -> PathBuf {
        self.root.join("repositories")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn gc_lock_path(&self) -> PathBuf {
        self.root.join("gc.lock")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        // A digest's hex part is 64 or 128 characters, so `..2` is in range.
        let hex = digest.hex();
        self.blobs_dir()
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.uploads_dir().join(id.as_str())
    }

    fn table_dir(&self, table: Table<'_>) -> PathBuf {
        let mut p = self.repos_dir();
        for component in table.repo().components() {
            p.push(component);
        }
        match table {
            Table::Blobs(_) => p.push("_blobs"),
            Table::Manifests(_) => p.push("_manifests"),
            Table::Tags(_) => p.push("_tags"),
            Table::Referrers(_, subject) => {
                p.push("_referrers");
                p.push(subject.to_string());
            }
        }
        p
    }

    fn table_path(&self, table: Table<'_>, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.table_dir(table).join(key))
    }
}

/// Write buffer for uploads: request bodies arrive in chunks of a few KiB,
/// and each write to a `tokio::fs::File` is a trip to the blocking pool.
const WRITE_BUFFER: usize = 1024 * 1024;

struct FsWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
}

#[async_trait]
impl UploadWriter for FsWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        Ok(self.file.write_all(chunk).await?)
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        Ok(self.file.flush().await?)
    }
}

/// Remove `path` (a file, or a staging directory and what it holds) if it
/// was last written before `before`; whether it was (or, in a dry run,
/// would be). Gone meanwhile is not an error.
fn remove_if_older(path: &Path, before: SystemTime, dry_run: bool) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        r => r?,
    };
    if meta.modified()? >= before {
        return Ok(false);
    }
    if !dry_run {
        let r = if meta.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        not_found_is(r, ())?;
    }
    Ok(true)
}

fn walk_repos(dir: &Path, prefix: &str, out: &mut Vec<RepositoryName>) -> io::Result<()> {
    let names = list_dir(dir)?;
    if names.iter().any(|n| n.starts_with('_'))
        && let Ok(name) = prefix.parse()
    {
        out.push(name);
    }
    for name in names
        .iter()
        .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
    {
        let path = dir.join(name);
        if !path.is_dir() {
            continue;
        }
        let child = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        walk_repos(&path, &child, out)?;
    }
    Ok(())
}

#[async_trait]
impl Backend for FsBackend {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let r = tokio::fs::metadata(self.blob_path(digest))
            .await
            .map(|m| Some(m.len()));
        Ok(not_found_is(r, None)?)
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Option<BodyStream>> {
        let path = self.blob_path(digest);
        let file = blocking(move || match std::fs::File::open(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            r => r.map(Some),
        })
        .await?;
        Ok(file.map(|f| file_chunks(f, offset, len)))
    }

    async fn write_blob(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        let dest = self.blob_path(digest);
        let tmp = self.tmp_dir();
        let durability = self.durability;
        blocking(move || {
            if dest.exists() {
                return Ok(());
            }
            write_atomic(&tmp, &dest, &bytes, durability)
        })
        .await
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        let r = tokio::fs::remove_file(self.blob_path(digest))
            .await
            .map(|()| true);
        Ok(not_found_is(r, false)?)
    }

    async fn blob_modified(&self, digest: &Digest) -> Result<Option<SystemTime>> {
        let r = match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => m.modified().map(Some),
            Err(e) => Err(e),
        };
        Ok(not_found_is(r, None)?)
    }

    async fn touch_blob(&self, digest: &Digest, time: SystemTime) -> Result<bool> {
        let path = self.blob_path(digest);
        blocking(move || {
            // Setting an explicit time needs only ownership, not write
            // access: open for reading.
            let file = match std::fs::File::open(&path) {
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                r => r?,
            };
            file.set_modified(time)?;
            Ok(true)
        })
        .await
    }

    async fn list_blobs(&self) -> Result<Vec<Digest>> {
        let dir = self.blobs_dir();
        blocking(move || {
            let mut out = Vec::new();
            for alg in list_dir(&dir)? {
                for fan in list_dir(&dir.join(&alg))? {
                    for hex in list_dir(&dir.join(&alg).join(&fan))? {
                        if let Ok(d) = format!("{alg}:{hex}").parse() {
                            out.push(d);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn create_upload(&self, id: &UploadId, repo: &RepositoryName) -> Result<()> {
        let staging = self.tmp_dir().join(id.as_str());
        let dest = self.upload_dir(id);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let info = serde_json::to_vec(&InfoFile {
            repo: repo.to_string(),
            started,
        })
        .map_err(io::Error::other)?;
        let uploads = self.uploads_dir();
        let durability = self.durability;
        blocking(move || {
            let result = (|| {
                std::fs::create_dir(&staging)?;
                std::fs::write(staging.join("info"), &info)?;
                std::fs::File::create(staging.join("data"))?;
                std::fs::rename(&staging, &dest)?;
                durability.sync_dir(&uploads)
            })();
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            result
        })
        .await
    }

    async fn upload_info(&self, id: &UploadId) -> Result<Option<UploadInfo>> {
        let dir = self.upload_dir(id);
        let info = match tokio::fs::read(dir.join("info")).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            r => r?,
        };
        let info: InfoFile = serde_json::from_slice(&info).map_err(|e| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!("upload {id} has a corrupt info file: {e}"),
            )
        })?;
        let repo = info.repo.parse().map_err(|e| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!("upload {id} has a corrupt info file: {e}"),
            )
        })?;
        let size = match tokio::fs::metadata(dir.join("data")).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            r => r?.len(),
        };
        let started = UNIX_EPOCH + Duration::from_secs(info.started);
        Ok(Some(UploadInfo {
            repo,
            size,
            started,
        }))
    }

    async fn upload_writer(&self, id: &UploadId) -> Result<Box<dyn UploadWriter>> {
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.upload_dir(id).join("data"))
            .await?;
        Ok(Box::new(FsWriter {
            file: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file),
        }))
    }

    async fn read_upload(&self, id: &UploadId) -> Result<BodyStream> {
        let path = self.upload_dir(id).join("data");
        let (file, len) = blocking(move || {
            let file = std::fs::File::open(path)?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await?;
        Ok(file_chunks(file, 0, len))
    }

    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> Result<u64> {
        let dir = self.upload_dir(id);
        let dest = self.blob_path(digest);
        let durability = self.durability;
        blocking(move || {
            let data = dir.join("data");
            let file = std::fs::File::open(&data)?;
            let size = file.metadata()?.len();
            if !dest.exists() {
                durability.sync_file(&file)?;
                let parent = dest
                    .parent()
                    .ok_or_else(|| io::Error::other("blob path has no parent"))?;
                std::fs::create_dir_all(parent)?;
                // Another upload of the same blob may win the race; rename
                // replaces its identical file atomically.
                std::fs::rename(&data, &dest)?;
                durability.sync_dir(parent)?;
            }
            drop(file);
            std::fs::remove_dir_all(&dir)?;
            Ok(size)
        })
        .await
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<bool> {
        let r = tokio::fs::remove_dir_all(self.upload_dir(id))
            .await
            .map(|()| true);
        Ok(not_found_is(r, false)?)
    }

    async fn list_uploads(&self) -> Result<Vec<UploadId>> {
        let dir = self.uploads_dir();
        let names = blocking(move || list_dir(&dir)).await?;
        Ok(names.iter().filter_map(|n| UploadId::parse(n)).collect())
    }

    async fn get(&self, table: Table<'_>, key: &str) -> Result<Option<Bytes>> {
        let path = self.table_path(table, key)?;
        match cached::read(&path) {
            cached::Cached::Bytes(bytes) => return Ok(Some(bytes)),
            cached::Cached::Missing => return Ok(None),
            cached::Cached::Unknown => {}
        }
        blocking(move || not_found_is(std::fs::read(path).map(|v| Some(Bytes::from(v))), None))
            .await
    }

    async fn put(&self, table: Table<'_>, key: &str, value: Bytes) -> Result<()> {
        let path = self.table_path(table, key)?;
        let tmp = self.tmp_dir();
        let durability = self.durability;
        blocking(move || write_atomic(&tmp, &path, &value, durability)).await
    }

    async fn remove(&self, table: Table<'_>, key: &str) -> Result<bool> {
        let path = self.table_path(table, key)?;
        let r = tokio::fs::remove_file(path).await.map(|()| true);
        Ok(not_found_is(r, false)?)
    }

    async fn keys(&self, table: Table<'_>) -> Result<Vec<String>> {
        let dir = self.table_dir(table);
        let names = blocking(move || list_dir(&dir)).await?;
        Ok(names.into_iter().filter(|n| check_key(n).is_ok()).collect())
    }

    async fn repositories(&self) -> Result<Vec<RepositoryName>> {
        let dir = self.repos_dir();
        let mut repos = blocking(move || {
            let mut out = Vec::new();
            walk_repos(&dir, "", &mut out)?;
            Ok(out)
        })
        .await?;
        repos.sort();
        Ok(repos)
    }

    async fn scratch(&self) -> Result<Vec<String>> {
        let tmp = self.tmp_dir();
        let uploads = self.uploads_dir();
        blocking(move || {
            let mut out: Vec<String> = list_dir(&tmp)?
                .into_iter()
                .map(|n| format!("tmp/{n}"))
                .collect();
            out.extend(
                list_dir(&uploads)?
                    .into_iter()
                    .filter(|n| UploadId::parse(n).is_none())
                    .map(|n| format!("uploads/{n}")),
            );
            Ok(out)
        })
        .await
    }

    async fn remove_scratch(&self, before: SystemTime, dry_run: bool) -> Result<Vec<String>> {
        let root = self.root.clone();
        let names = self.scratch().await?;
        blocking(move || {
            let mut removed = Vec::new();
            for name in names {
                if remove_if_older(&root.join(&name), before, dry_run)? {
                    removed.push(name);
                }
            }
            Ok(removed)
        })
        .await
    }

    /// An exclusive `flock` on `<root>/gc.lock`: the kernel releases it when
    /// the file is closed, so a collector that crashes never leaves a stale
    /// lock behind.
    async fn try_lock_collector(&self) -> Result<Option<CollectorLock>> {
        let path = self.gc_lock_path();
        blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => Ok(Some(CollectorLock::new(file))),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
                Err(e) => Err(io::Error::from(e)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;
    use std::time::SystemTime;

    use bytes::Bytes;
    use speculum_oci::{Digest, Reference, media_type};

    use crate::Registry;
    use crate::conformance::{self, body, code, image_manifest, push_blob, reference, repo};

    crate::conformance_tests!(async {
        let dir = tempfile::tempdir().unwrap();
        let registry = crate::Registry::filesystem(dir.path()).await.unwrap();
        (registry, Root(dir))
    });

    /// The same suite on a store that leaves flushing to the kernel, as a
    /// buildset registry's does: only the fsyncs differ.
    mod page_cache {
        use super::Root;

        crate::conformance_tests!(async {
            let dir = tempfile::tempdir().unwrap();
            let registry =
                crate::Registry::filesystem_with(dir.path(), crate::Durability::PageCache)
                    .await
                    .unwrap();
            (registry, Root(dir))
        });
    }

    /// The store's root, where a test can leave what a crash leaves.
    struct Root(tempfile::TempDir);

    impl conformance::Fixture for Root {
        fn plant_scratch(&self, staging: bool, modified: SystemTime) -> Option<String> {
            let name = format!("tmp/{}", crate::UploadId::new());
            let path = self.0.path().join(&name);
            let file = if staging {
                std::fs::create_dir(&path).unwrap();
                path.join("info")
            } else {
                path.clone()
            };
            std::fs::write(&file, b"half written").unwrap();
            std::fs::File::open(&file)
                .unwrap()
                .set_modified(modified)
                .unwrap();
            std::fs::File::open(&path)
                .unwrap()
                .set_modified(modified)
                .unwrap();
            Some(name)
        }
    }

    /// Every file under `root`, relative, sorted.
    fn files(root: &Path) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(
                        path.strip_prefix(root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    /// The layout drawn in the module docs, file for file.
    #[tokio::test]
    async fn layout_matches_the_docs() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::filesystem(dir.path()).await.unwrap();
        let r = repo("quay.io/org/app");
        let c = push_blob(&registry, &r, b"{}").await;
        let m =
            serde_json::to_vec(&image_manifest(media_type::OCI_MANIFEST, (&c, 2), &[])).unwrap();
        let m = registry
            .put_manifest(&r, &reference("v1"), None, Bytes::from(m))
            .await
            .unwrap()
            .digest;
        let id = registry.start_upload(&r).await.unwrap();
        let blob = |d: &Digest| format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex());
        let mut expected = vec![
            blob(&c),
            blob(&m),
            format!("repositories/quay.io/org/app/_blobs/{c}"),
            format!("repositories/quay.io/org/app/_manifests/{m}"),
            "repositories/quay.io/org/app/_tags/v1".to_string(),
            format!("uploads/{id}/data"),
            format!("uploads/{id}/info"),
        ];
        expected.sort();
        assert_eq!(files(dir.path()), expected);
        let tag = std::fs::read_to_string(dir.path().join("repositories/quay.io/org/app/_tags/v1"))
            .unwrap();
        let tag: serde_json::Value = serde_json::from_str(&tag).unwrap();
        assert_eq!(tag["digest"], m.to_string());
        assert!(tag["pushed"].is_u64());
        registry.cancel_upload(&r, &id).await.unwrap();
    }

    /// Failed, cancelled and rejected operations leave no file behind.
    #[tokio::test]
    async fn failures_leave_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::filesystem(dir.path()).await.unwrap();
        let r = repo("org/app");
        let c = push_blob(&registry, &r, b"{}").await;
        let before = files(dir.path());

        let wrong = Digest::sha256(b"wrong");
        assert!(registry.put_blob(&r, &wrong, body("data")).await.is_err());
        let id = registry.start_upload(&r).await.unwrap();
        registry
            .append_upload(&r, &id, None, body("partial"))
            .await
            .unwrap();
        assert!(registry.finish_upload(&r, &id, &wrong, None).await.is_err());
        let id = registry.start_upload(&r).await.unwrap();
        registry
            .append_upload(&r, &id, None, body("partial"))
            .await
            .unwrap();
        registry.cancel_upload(&r, &id).await.unwrap();
        let missing = Digest::sha256(b"missing layer");
        let bad = image_manifest(media_type::OCI_MANIFEST, (&c, 2), &[(&missing, 13)]);
        let bad = Bytes::from(serde_json::to_vec(&bad).unwrap());
        assert!(
            registry
                .put_manifest(&r, &reference("t"), None, bad)
                .await
                .is_err()
        );
        assert!(
            registry
                .put_manifest(&r, &reference("t"), None, Bytes::from_static(b"{}"))
                .await
                .is_err()
        );
        for id in ["../../escape", "..", "00000000-0000-0000-0000-000000000000"] {
            assert!(
                registry
                    .append_upload(&r, id, None, body("x"))
                    .await
                    .is_err()
            );
        }

        assert_eq!(files(dir.path()), before);
        conformance::assert_clean(&registry).await;
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }

    /// Everything survives reopening the root (a restart).
    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo("org/app");
        let (manifest, id) = {
            let registry = Registry::filesystem(dir.path()).await.unwrap();
            let c = push_blob(&registry, &r, b"{}").await;
            let m = serde_json::to_vec(&image_manifest(media_type::OCI_MANIFEST, (&c, 2), &[]))
                .unwrap();
            registry
                .put_manifest(&r, &reference("v1"), None, Bytes::from(m.clone()))
                .await
                .unwrap();
            let id = registry.start_upload(&r).await.unwrap();
            registry
                .append_upload(&r, &id, None, body("half "))
                .await
                .unwrap();
            (m, id)
        };
        let registry = Registry::filesystem(dir.path()).await.unwrap();
        let got = registry.get_manifest(&r, &reference("v1")).await.unwrap();
        assert_eq!(got.bytes, manifest);
        assert_eq!(got.media_type, media_type::OCI_MANIFEST);
        assert_eq!(
            registry.catalog(None, None).await.unwrap().items,
            ["org/app"]
        );
        assert_eq!(registry.upload_status(&r, &id).await.unwrap(), 5);
        let d = Digest::sha256(b"half and half");
        registry
            .finish_upload(&r, &id, &d, Some(body("and half")))
            .await
            .unwrap();
        assert_eq!(registry.stat_blob(&r, &d).await.unwrap(), 13);
        let by_digest = Reference::Digest(got.digest);
        registry.delete_manifest(&r, &by_digest).await.unwrap();
        assert_eq!(
            code(registry.get_manifest(&r, &reference("v1")).await),
            speculum_oci::ErrorCode::ManifestUnknown
        );
        conformance::assert_clean(&registry).await;
    }
}
