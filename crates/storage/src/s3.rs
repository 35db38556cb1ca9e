//! [`S3Backend`]: a store in a bucket of an S3-compatible object store
//! (OpenStack Swift's s3api, Ceph RGW, AWS), shared by every registry
//! process that opens it.
//!
//! Where things live is drawn in `s3/layout.rs`; upload sessions are in
//! `s3/upload.rs`; the collector's lease in `s3/lease.rs`. What the design
//! leans on, and what it avoids:
//!
//! - single-object PUT, GET (ranged), HEAD, DELETE, prefix listing and the
//!   multipart calls, which every S3 store has;
//! - not create-only PUT (`If-None-Match: *`, which Swift answers 501) nor
//!   the ETag a multipart completion returns (Ceph's is empty), nor any
//!   copy: nothing is ever moved, entries name data instead.
//!
//! Each single object write is atomic for readers, so each backend
//! operation is too: a blob is visible once its entry is written, after
//! its data; a tag once its object is written.

mod layout;
mod lease;
mod upload;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpConnector, ReqwestConnector};
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use speculum_oci::{Digest, RepositoryName};

use self::layout::{Entry, Layout};
use self::upload::UploadState;
use crate::backend::{
    Backend, CollectorLock, Table, UploadId, UploadInfo, UploadWriter, check_key,
};
use crate::{BodyStream, Error, Result};

/// Where an [`S3Backend`] stores, and how it signs in. Built by the server
/// from its `storage:` settings, which read secrets from the environment
/// or files.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket, which must exist.
    pub bucket: String,
    /// The service's URL (`http://127.0.0.1:8080`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region the signatures name (`us-east-1` for most other stores).
    pub region: String,
    /// Every object's name starts with this (no slashes at either end
    /// needed); empty for the bucket's root.
    pub prefix: String,
    /// Address the bucket in the path (`endpoint/bucket/key`) rather than
    /// the host name: what Swift, Ceph and most private stores expect.
    pub path_style: bool,
    /// The access key.
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: String,
    /// PEM certificates to trust besides the system's, for a store with a
    /// private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// The multipart part size, at least 5 MiB.
    pub part_size: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// The default part size: 8 MiB (at most 80 GB in 10,000 parts).
    pub const DEFAULT_PART_SIZE: usize = 8 << 20;
}

/// A store in an S3 bucket. See the module documentation.
pub struct S3Backend {
    bucket: Arc<Bucket>,
}

/// What every part of the backend shares: the client, the names, and what
/// this process remembers.
struct Bucket {
    s3: Arc<AmazonS3>,
    layout: Layout,
    part_size: usize,
    /// Blob entries seen, by digest. Entries never change, only go: a
    /// cached one whose data is gone is dropped and looked up again.
    entries: Mutex<HashMap<Digest, Entry>>,
    /// Repositories whose name object this process has written.
    named: Mutex<HashSet<RepositoryName>>,
    /// Who this backend is, in the collector's lease.
    instance: String,
    /// Leases this backend holds now.
    leases: Mutex<HashSet<String>>,
    /// Removals of leases let go of, not yet awaited.
    releases: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl S3Backend {
    /// Open the store `config` names and check that the bucket answers.
    pub async fn open(config: &S3Config) -> Result<S3Backend> {
        S3Backend::open_with(config, ReqwestConnector::default()).await
    }

    /// [`S3Backend::open`], making requests through the HTTP clients
    /// `connector` makes (a test's can watch them).
    async fn open_with(config: &S3Config, connector: impl HttpConnector) -> Result<S3Backend> {
        let part_size = config.part_size.max(upload::MIN_PART);
        let s3 = client(config, connector)?;
        let bucket = Arc::new(Bucket {
            s3: Arc::new(s3),
            layout: Layout::new(&config.prefix),
            part_size,
            entries: Mutex::default(),
            named: Mutex::default(),
            instance: uuid::Uuid::new_v4().to_string(),
            leases: Mutex::default(),
            releases: Mutex::default(),
        });
        // Fail at start, naming the bucket, rather than at the first push:
        // a listing fails for a missing bucket or refused credentials,
        // where a read of one key would just find nothing.
        let probe = bucket.layout.uploads_dir();
        bucket
            .s3
            .list_with_delimiter(Some(&probe))
            .await
            .map_err(|e| {
                Error::Io(std::io::Error::other(format!(
                    "cannot list bucket {:?} at {}: {e}",
                    config.bucket,
                    config.endpoint.as_deref().unwrap_or("AWS")
                )))
            })?;
        Ok(S3Backend { bucket })
    }
}

fn client(config: &S3Config, connector: impl HttpConnector) -> Result<AmazonS3> {
    // reqwest is built without a crypto provider; the tree's one is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = ClientOptions::new()
        .with_timeout(Duration::from_secs(300))
        .with_connect_timeout(Duration::from_secs(10));
    if let Some(pem) = &config.ca_pem {
        for cert in object_store::Certificate::from_pem_bundle(pem).map_err(store_error)? {
            options = options.with_root_certificate(cert);
        }
    }
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_access_key_id(&config.access_key_id)
        .with_secret_access_key(&config.secret_access_key)
        .with_virtual_hosted_style_request(!config.path_style)
        .with_client_options(options)
        .with_http_connector(connector);
    if let Some(endpoint) = &config.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    builder.build().map_err(store_error)
}

/// A store failure as a storage error (the server answers 500 and logs it).
fn store_error(e: object_store::Error) -> Error {
    Error::Io(std::io::Error::other(e))
}

/// Whether a PUT failed only for want of an ETag in the answer: what
/// OpenStack Swift answers (202 Accepted, no ETag) to a PUT that a newer
/// write of the same object, landed first, supersedes (see "Object PUT
/// returning 202 for 409" in swift/proxy/controllers/obj.py). object_store
/// has no error kind for it, only this message; were it to change, such a
/// PUT would fail again, as before.
fn superseded(e: &object_store::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        if c.to_string() == "ETag Header missing from response" {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `NotFound` as `None`.
fn found<T>(r: object_store::Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(store_error(e)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The entry reads go by when a blob has several: the same in every process.
fn first(entries: &[Entry]) -> Option<&Entry> {
    entries.iter().min_by(|a, b| a.data.cmp(&b.data))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Bucket {
    async fn get_bytes(&self, path: &Path) -> Result<Option<Bytes>> {
        match found(self.s3.get(path).await)? {
            Some(r) => Ok(Some(r.bytes().await.map_err(store_error)?)),
            None => Ok(None),
        }
    }

    async fn put_bytes(&self, path: &Path, bytes: Bytes) -> Result<()> {
        match self.s3.put(path, PutPayload::from(bytes)).await {
            Ok(_) => Ok(()),
            // Every object written here more than once is last-writer-wins:
            // one superseded by a newer write is as if overwritten at once.
            Err(e) if superseded(&e) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Delete; `false` if it was not there. (S3 answers a DELETE of a
    /// missing key with success, so existence is asked first.)
    async fn delete_existing(&self, path: &Path) -> Result<bool> {
        if found(self.s3.head(path).await)?.is_none() {
            return Ok(false);
        }
        self.delete(path).await?;
        Ok(true)
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        found(self.s3.delete(path).await).map(drop)
    }

    /// Delete what only takes space if left: failures are logged.
    async fn delete_quietly(&self, path: &Path) {
        if let Err(e) = self.delete(path).await {
            tracing::warn!(object = %path, error = %e, "cannot delete a leftover object");
        }
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        self.s3
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(store_error)
    }

    /// The entries of a blob, from the store.
    async fn entries(&self, digest: &Digest) -> Result<Vec<Entry>> {
        let listed = self.list(&self.layout.entries_of(digest)).await?;
        Ok(listed
            .iter()
            .filter_map(|m| self.layout.parse_entry(&m.location))
            .filter(|e| e.digest == *digest)
            .collect())
    }

    /// One entry of a blob, from memory if seen before.
    async fn entry(&self, digest: &Digest) -> Result<Option<Entry>> {
        if let Some(e) = lock(&self.entries).get(digest) {
            return Ok(Some(e.clone()));
        }
        Ok(first(&self.stored_entries(digest).await?).cloned())
    }

    /// The entries of a blob, from the store itself, one of them kept in
    /// memory for reads: what deciding whether to store a blob goes by,
    /// since another process may have removed one this process remembers.
    async fn stored_entries(&self, digest: &Digest) -> Result<Vec<Entry>> {
        let entries = self.entries(digest).await?;
        let mut seen = lock(&self.entries);
        match first(&entries) {
            Some(e) => seen.insert(digest.clone(), e.clone()),
            None => seen.remove(digest),
        };
        Ok(entries)
    }

    fn forget_entry(&self, digest: &Digest) {
        lock(&self.entries).remove(digest);
    }

    /// Record a repository's name, once per process.
    async fn name_repo(&self, repo: &RepositoryName) -> Result<()> {
        if lock(&self.named).contains(repo) {
            return Ok(());
        }
        self.put_bytes(&self.layout.repo_name(repo), Bytes::new())
            .await?;
        lock(&self.named).insert(repo.clone());
        Ok(())
    }

    /// Make `data/<data>` (already written) the blob `digest` unless it is
    /// stored already, listing its entries once. Returns the blob's size
    /// and whether an entry names `data` now: the one written here, or one
    /// an earlier attempt wrote before it crashed.
    async fn add_entry(&self, digest: &Digest, size: u64, data: &str) -> Result<(u64, bool)> {
        let entries = self.stored_entries(digest).await?;
        if let Some(existing) = first(&entries) {
            return Ok((existing.size, entries.iter().any(|e| e.data == data)));
        }
        self.put_entry(digest, size, data).await?;
        Ok((size, true))
    }

    /// Write the entry making `data/<data>` the blob `digest`, for a caller
    /// that found none. Another process storing the same blob meanwhile
    /// writes its own: two entries, both valid (see `s3/layout.rs`).
    async fn put_entry(&self, digest: &Digest, size: u64, data: &str) -> Result<()> {
        self.put_bytes(&self.layout.entry(digest, size, data), Bytes::new())
            .await
    }

    async fn read(&self, digest: &Digest, offset: u64, len: u64) -> Result<Option<BodyStream>> {
        // Twice at most: a cached entry whose data another process removed
        // is dropped and the store asked again.
        for _ in 0..2 {
            let Some(entry) = self.entry(digest).await? else {
                return Ok(None);
            };
            if len == 0 {
                return Ok(Some(Box::pin(futures_util::stream::empty())));
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(offset..offset + len)),
                ..GetOptions::default()
            };
            match found(
                self.s3
                    .get_opts(&self.layout.data(&entry.data), options)
                    .await,
            )? {
                Some(r) => {
                    let stream = r.into_stream().map_err(std::io::Error::other);
                    return Ok(Some(Box::pin(stream)));
                }
                None => self.forget_entry(digest),
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Backend for S3Backend {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.bucket.entry(digest).await?.map(|e| e.size))
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Option<BodyStream>> {
        self.bucket.read(digest, offset, len).await
    }

    async fn blob_url(&self, digest: &Digest, valid_for: Duration) -> Result<Option<String>> {
        use object_store::signer::{Method, Signer as _};
        let b = &self.bucket;
        let Some(entry) = b.entry(digest).await? else {
            return Ok(None);
        };
        let url =
            b.s3.signed_url(Method::GET, &b.layout.data(&entry.data), valid_for)
                .await
                .map_err(store_error)?;
        Ok(Some(url.to_string()))
    }

    async fn write_blob(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        let b = &self.bucket;
        // Asked before the data is sent, so that storing a blob again sends
        // nothing; asked only then (see `put_entry`).
        if !b.stored_entries(digest).await?.is_empty() {
            return Ok(());
        }
        let data = uuid::Uuid::new_v4().to_string();
        let size = bytes.len() as u64;
        b.put_bytes(&b.layout.data(&data), bytes).await?;
        b.put_entry(digest, size, &data).await
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        let b = &self.bucket;
        b.forget_entry(digest);
        let entries = b.entries(digest).await?;
        // Entries first: a blob without data is never visible.
        for e in &entries {
            b.delete(&b.layout.entry(digest, e.size, &e.data)).await?;
        }
        for e in &entries {
            b.delete(&b.layout.data(&e.data)).await?;
        }
        b.delete(&b.layout.stamp(digest)).await?;
        Ok(!entries.is_empty())
    }

    async fn blob_modified(&self, digest: &Digest) -> Result<Option<SystemTime>> {
        let b = &self.bucket;
        let listed = b.list(&b.layout.entries_of(digest)).await?;
        let Some(written) = listed
            .iter()
            .map(|m| SystemTime::from(m.last_modified))
            .max()
        else {
            return Ok(None);
        };
        match b.get_bytes(&b.layout.stamp(digest)).await? {
            Some(stamp) => {
                let secs = std::str::from_utf8(&stamp)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                Ok(Some(
                    secs.map_or(written, |s| UNIX_EPOCH + Duration::from_secs(s)),
                ))
            }
            None => Ok(Some(written)),
        }
    }

    async fn touch_blob(&self, digest: &Digest, time: SystemTime) -> Result<bool> {
        let b = &self.bucket;
        if b.entries(digest).await?.is_empty() {
            return Ok(false);
        }
        let secs = unix_secs(time).to_string();
        b.put_bytes(&b.layout.stamp(digest), Bytes::from(secs))
            .await?;
        Ok(true)
    }

    async fn list_blobs(&self) -> Result<Vec<Digest>> {
        let b = &self.bucket;
        let mut digests: Vec<Digest> = b
            .list(&b.layout.entries_dir())
            .await?
            .iter()
            .filter_map(|m| b.layout.parse_entry(&m.location))
            .map(|e| e.digest)
            .collect();
        digests.sort();
        digests.dedup();
        Ok(digests)
    }

    async fn create_upload(&self, id: &UploadId, repo: &RepositoryName) -> Result<()> {
        self.bucket.save_upload(id, &UploadState::new(repo)).await
    }

    async fn upload_info(&self, id: &UploadId) -> Result<Option<UploadInfo>> {
        self.bucket
            .load_upload(id)
            .await?
            .map(|s| s.info())
            .transpose()
    }

    async fn upload_writer(&self, id: &UploadId) -> Result<Box<dyn UploadWriter>> {
        self.bucket.writer(id).await
    }

    async fn read_upload(&self, id: &UploadId) -> Result<BodyStream> {
        let b = &self.bucket;
        let mut state = b.expect_upload(id).await?;
        b.seal(id, &mut state, None).await?;
        if state.size == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let data =
            b.s3.get(&b.layout.data(id.as_str()))
                .await
                .map_err(store_error)?;
        Ok(Box::pin(data.into_stream().map_err(std::io::Error::other)))
    }

    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> Result<u64> {
        let b = &self.bucket;
        let mut state = b.expect_upload(id).await?;
        // Sealed first and the entries asked after, as late as can be: the
        // later, the less likely a second entry for a blob another process
        // is committing at the same time.
        b.seal(id, &mut state, Some(digest)).await?;
        let (size, owned) = b.add_entry(digest, state.size, id.as_str()).await?;
        // The session goes; its data stays if an entry names it.
        b.remove_committed(id, digest, owned).await?;
        Ok(size)
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<bool> {
        self.bucket.remove_upload(id).await
    }

    async fn list_uploads(&self) -> Result<Vec<UploadId>> {
        let b = &self.bucket;
        let listed =
            b.s3.list_with_delimiter(Some(&b.layout.uploads_dir()))
                .await
                .map_err(store_error)?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(UploadId::parse))
            .collect())
    }

    async fn get(&self, table: Table<'_>, key: &str) -> Result<Option<Bytes>> {
        check_key(key)?;
        let b = &self.bucket;
        b.get_bytes(&b.layout.table_key(table, key)).await
    }

    async fn put(&self, table: Table<'_>, key: &str, value: Bytes) -> Result<()> {
        check_key(key)?;
        let b = &self.bucket;
        b.name_repo(table.repo()).await?;
        b.put_bytes(&b.layout.table_key(table, key), value).await
    }

    async fn remove(&self, table: Table<'_>, key: &str) -> Result<bool> {
        check_key(key)?;
        let b = &self.bucket;
        b.delete_existing(&b.layout.table_key(table, key)).await
    }

    async fn keys(&self, table: Table<'_>) -> Result<Vec<String>> {
        let b = &self.bucket;
        let listed =
            b.s3.list_with_delimiter(Some(&b.layout.table_dir(table)))
                .await
                .map_err(store_error)?;
        let mut keys: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn repositories(&self) -> Result<Vec<RepositoryName>> {
        let b = &self.bucket;
        let dir = b.layout.repo_names_dir();
        let mut repos: Vec<RepositoryName> = b
            .list(&dir)
            .await?
            .iter()
            .filter_map(|m| {
                let rel = b.layout.relative(&m.location)?;
                rel.strip_prefix("repo-names/")?.parse().ok()
            })
            .collect();
        repos.sort();
        Ok(repos)
    }

    async fn scratch(&self) -> Result<Vec<String>> {
        Ok(self
            .bucket
            .orphans()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    async fn remove_scratch(&self, before: SystemTime, dry_run: bool) -> Result<Vec<String>> {
        let b = &self.bucket;
        let mut removed = Vec::new();
        for (name, modified) in b.orphans().await? {
            if modified >= before {
                continue;
            }
            if !dry_run {
                b.delete(&b.layout.data(name.trim_start_matches("data/")))
                    .await?;
            }
            removed.push(name);
        }
        Ok(removed)
    }

    async fn try_lock_collector(&self) -> Result<Option<CollectorLock>> {
        lease::acquire(&self.bucket).await
    }
}

impl Bucket {
    /// Data objects that no blob entry and no upload session names: what a
    /// crash between writing a small blob's data and its entry leaves.
    async fn orphans(&self) -> Result<Vec<(String, SystemTime)>> {
        let data = self.list(&self.layout.data_dir()).await?;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let mut owned: HashSet<String> = self
            .list(&self.layout.entries_dir())
            .await?
            .iter()
            .filter_map(|m| self.layout.parse_entry(&m.location))
            .map(|e| e.data)
            .collect();
        let uploads = self
            .s3
            .list_with_delimiter(Some(&self.layout.uploads_dir()))
            .await
            .map_err(store_error)?;
        owned.extend(
            uploads
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_owned)),
        );
        Ok(data
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                (!owned.contains(name)).then(|| (format!("data/{name}"), m.last_modified.into()))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use object_store::ClientOptions;
    use object_store::client::{
        HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService,
        ReqwestConnector,
    };
    use speculum_oci::Digest;
    use speculum_testkit::S3Store;

    use super::{S3Backend, S3Config};
    use crate::backend::UploadId;
    use crate::{Backend as _, Registry};

    /// A registry in a fresh bucket of a real store (started once per test
    /// process by the testkit), under a prefix as a site would use.
    pub(crate) async fn open(store: &S3Store) -> (Registry, ()) {
        let backend = S3Backend::open(&config(store))
            .await
            .expect("the bucket answers");
        (Registry::new(backend), ())
    }

    /// A fresh bucket of `store`, under a prefix as a site would use.
    fn config(store: &S3Store) -> S3Config {
        S3Config {
            bucket: store.fresh_bucket("conformance"),
            endpoint: Some(store.endpoint().to_owned()),
            region: store.region().to_owned(),
            prefix: "site/registry".into(),
            path_style: true,
            access_key_id: store.access_key_id().to_owned(),
            secret_access_key: store.secret_access_key().to_owned(),
            ca_pem: None,
            part_size: S3Config::DEFAULT_PART_SIZE,
        }
    }

    /// A missing bucket or wrong credentials stop the start, naming the
    /// bucket.
    pub(crate) async fn refused_at_open(store: &S3Store) {
        let good = S3Config {
            bucket: store.fresh_bucket("refused"),
            endpoint: Some(store.endpoint().to_owned()),
            region: store.region().to_owned(),
            prefix: String::new(),
            path_style: true,
            access_key_id: store.access_key_id().to_owned(),
            secret_access_key: store.secret_access_key().to_owned(),
            ca_pem: None,
            part_size: S3Config::DEFAULT_PART_SIZE,
        };
        assert!(S3Backend::open(&good).await.is_ok());
        let missing = S3Config {
            bucket: "no-such-bucket-here".into(),
            ..good.clone()
        };
        let e = S3Backend::open(&missing).await.err().expect("refused");
        assert!(e.to_string().contains("no-such-bucket-here"), "{e}");
        let wrong = S3Config {
            secret_access_key: "not-the-secret".into(),
            ..good
        };
        let e = S3Backend::open(&wrong).await.err().expect("refused");
        assert!(e.to_string().contains("cannot list bucket"), "{e}");
    }

    /// Another process (another backend over the bucket) can collect as
    /// soon as a collection returns: the lease is gone, not left to expire.
    pub(crate) async fn lease_released_on_return(store: &S3Store) {
        let config = config(store);
        let registry = Registry::new(S3Backend::open(&config).await.unwrap());
        let other = S3Backend::open(&config).await.unwrap();
        registry
            .prune(&crate::PruneOptions::default())
            .await
            .unwrap();
        let lock = crate::Backend::try_lock_collector(&other).await.unwrap();
        assert!(
            lock.is_some(),
            "the first collection's lease is still there"
        );
        // And while one holds it, the other process is refused at once.
        assert!(matches!(
            registry.prune(&crate::PruneOptions::default()).await,
            Err(crate::Error::CollectionRunning)
        ));
        lock.unwrap().release().await;
        registry
            .prune(&crate::PruneOptions::default())
            .await
            .unwrap();
    }

    /// A blob another process removed is stored again when pushed again,
    /// even by a process that remembers it.
    pub(crate) async fn blob_removed_by_another_process(store: &S3Store) {
        use crate::Backend as _;

        let config = config(store);
        let one = S3Backend::open(&config).await.unwrap();
        let other = S3Backend::open(&config).await.unwrap();
        let data = bytes::Bytes::from_static(b"removed elsewhere, pushed again");
        let d = speculum_oci::Digest::sha256(&data);
        one.write_blob(&d, data.clone()).await.unwrap();
        assert_eq!(one.blob_size(&d).await.unwrap(), Some(data.len() as u64));
        assert!(other.delete_blob(&d).await.unwrap());
        one.write_blob(&d, data.clone()).await.unwrap();
        assert_eq!(other.blob_size(&d).await.unwrap(), Some(data.len() as u64));
        let read = other
            .read_blob(&d, 0, data.len() as u64)
            .await
            .unwrap()
            .unwrap();
        let bytes: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(read).await.unwrap();
        assert_eq!(bytes.concat(), data);
    }

    /// A pre-signed URL serves the blob, and only it, to a client without
    /// credentials.
    pub(crate) async fn blob_urls(store: &S3Store) {
        use std::time::Duration;

        let (registry, ()) = open(store).await;
        let be = registry.backend();
        let data = bytes::Bytes::from_static(b"fetched straight from the store");
        let d = speculum_oci::Digest::sha256(&data);
        let hour = Duration::from_secs(3600);
        assert_eq!(be.blob_url(&d, hour).await.unwrap(), None);
        be.write_blob(&d, data.clone()).await.unwrap();
        let url = be.blob_url(&d, hour).await.unwrap().expect("a URL");
        let got = std::process::Command::new("curl")
            .args(["-sSf", "--max-time", "30", &url])
            .output()
            .unwrap();
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert_eq!(got.stdout, data);
        // The signature covers the object: another key is refused.
        let other = url.replacen("/data/", "/data/x", 1);
        let refused = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &other])
            .output()
            .unwrap();
        assert_eq!(refused.stdout, b"403");
    }

    /// Many writes of one object at once all succeed, one of them last.
    /// (Swift answers those another write superseded with 202 and no
    /// ETag.)
    pub(crate) async fn concurrent_writes_of_one_object(store: &S3Store) {
        let (registry, ()) = open(store).await;
        let be = registry.backend();
        let repo: speculum_oci::RepositoryName = "org/app".parse().unwrap();
        let table = crate::Table::Tags(&repo);
        let values: Vec<String> = (0..16).map(|i| format!("value {i}")).collect();
        let writes = values
            .iter()
            .map(|v| be.put(table, "latest", bytes::Bytes::from(v.clone())));
        for result in futures_util::future::join_all(writes).await {
            result.unwrap();
        }
        let got = be.get(table, "latest").await.unwrap().unwrap();
        assert!(values.iter().any(|v| v.as_bytes() == got), "{got:?}");
    }

    /// Every request a backend makes, as `METHOD url`.
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Recorder {
        /// The requests made since the last call.
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *super::lock(&self.0))
        }
    }

    impl HttpConnector for Recorder {
        fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
            Ok(HttpClient::new(Recording {
                client: ReqwestConnector::default().connect(options)?,
                seen: self.clone(),
            }))
        }
    }

    #[derive(Debug)]
    struct Recording {
        client: HttpClient,
        seen: Recorder,
    }

    #[async_trait::async_trait]
    impl HttpService for Recording {
        async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
            super::lock(&self.seen.0).push(format!("{} {}", req.method(), req.uri()));
            self.client.execute(req).await
        }
    }

    /// Listings of a blob's entries among `requests`.
    fn listings(requests: &[String], digest: &Digest) -> usize {
        requests
            .iter()
            .filter(|r| {
                r.starts_with("GET ") && r.contains("list-type=2") && r.contains(digest.hex())
            })
            .count()
    }

    /// Writes of an upload session's state among `requests`.
    fn state_saves(requests: &[String], id: &UploadId) -> usize {
        let info = format!("/uploads/{id}/info");
        requests
            .iter()
            .filter(|r| r.starts_with("PUT ") && r.ends_with(&info))
            .count()
    }

    /// Storing a blob lists its entries once; committing an upload lists
    /// them once and saves the session's state once, whether the blob is
    /// new or stored already.
    pub(crate) async fn requests_per_blob(store: &S3Store) {
        let seen = Recorder::default();
        let be = S3Backend::open_with(&config(store), seen.clone())
            .await
            .unwrap();
        let data = Bytes::from_static(b"listed once");
        let d = Digest::sha256(&data);
        seen.take();
        be.write_blob(&d, data.clone()).await.unwrap();
        // Stored again: listed, and nothing sent.
        be.write_blob(&d, data.clone()).await.unwrap();
        let made = seen.take();
        assert_eq!(listings(&made, &d), 2, "{made:#?}");
        assert_eq!(made.len(), 4, "{made:#?}");

        let repo = "org/app".parse().unwrap();
        let data = Bytes::from_static(b"committed once");
        let d = Digest::sha256(&data);
        for _ in 0..2 {
            let id = UploadId::new();
            be.create_upload(&id, &repo).await.unwrap();
            let mut writer = be.upload_writer(&id).await.unwrap();
            writer.write(&data).await.unwrap();
            writer.close().await.unwrap();
            seen.take();
            let size = be.commit_upload(&id, &d).await.unwrap();
            assert_eq!(size, data.len() as u64);
            let made = seen.take();
            assert_eq!(listings(&made, &d), 1, "{made:#?}");
            assert_eq!(state_saves(&made, &id), 1, "{made:#?}");
        }
        // The second session's data went with it.
        assert_eq!(be.scratch().await.unwrap(), Vec::<String>::new());
    }

    /// The conformance suite and the cases above on one store.
    macro_rules! on_store {
        ($module:ident, $store:ident, $($case:ident),* $(,)?) => {
            mod $module {
                crate::conformance_tests!(super::open(speculum_testkit::S3Store::$store()));

                $(
                    #[tokio::test]
                    async fn $case() {
                        super::$case(speculum_testkit::S3Store::$store()).await;
                    }
                )*
            }
        };
    }

    macro_rules! on_both_stores {
        ($($case:ident),* $(,)?) => {
            // OpenStack Swift through its s3api, three replicas.
            on_store!(swift, swift, $($case),*);
            // Ceph RGW: strict S3.
            on_store!(ceph, ceph, $($case),*);
        };
    }

    on_both_stores!(
        blob_urls,
        refused_at_open,
        blob_removed_by_another_process,
        lease_released_on_return,
        concurrent_writes_of_one_object,
        requests_per_blob,
    );
}
