//! Upload sessions on an object store.
//!
//! OCI chunks come in any size, but a multipart part other than the last
//! must be at least 5 MiB (Swift and Ceph refuse smaller ones), and the parts
//! of an unfinished multipart upload cannot be read. So a session is:
//!
//! - a multipart upload targeting `data/<id>`, created with the first full
//!   part, whose parts are sent while the body streams in (a few at once);
//! - a *tail* object with the bytes that do not fill a part yet (under
//!   5 MiB), replaced at the end of each request under a new generation name
//!   so that the state object never names a tail that is half written;
//! - the state object `info`, rewritten once per request: the one atomic
//!   step that makes the request's bytes part of the session.
//!
//! A request that fails part-way keeps what its state object says (parts
//! sent after a failed one are sent again under the same numbers). *Sealing*
//! completes the multipart upload (the tail as its last part) into
//! `data/<id>`: committing does it, and so does reading the session back
//! (the registry's digest check after a restart), after which the session
//! takes no more bytes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use object_store::multipart::{MultipartStore, PartId};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use speculum_oci::{Digest, ErrorCode, RepositoryName};
use tokio::task::JoinSet;

use super::{Bucket, found, store_error};
use crate::backend::{UploadId, UploadInfo, UploadWriter};
use crate::{Error, Result};

/// The smallest part a store accepts other than the last.
pub(super) const MIN_PART: usize = 5 << 20;
/// Parts sent at once by one request.
const PARTS_IN_FLIGHT: usize = 2;

/// The state object of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UploadState {
    pub repo: String,
    /// When it was created, in Unix nanoseconds.
    pub started: u64,
    /// Bytes received: those in `parts`, then those in the tail.
    pub size: u64,
    /// The multipart upload, once the first part was sent.
    pub multipart: Option<String>,
    /// The parts sent, in order (their content ids).
    pub parts: Vec<String>,
    /// Bytes in `parts`.
    pub parts_size: u64,
    /// The tail's generation; there is a tail if `size > parts_size`.
    pub generation: u64,
    /// `data/<id>` holds every byte; the session takes no more.
    pub sealed: bool,
    /// The digest being committed: from then on `data/<id>` may belong to
    /// a blob, and removing the session must not remove it.
    pub committing: Option<String>,
}

impl UploadState {
    pub fn new(repo: &RepositoryName) -> UploadState {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        UploadState {
            repo: repo.to_string(),
            started: u64::try_from(started).unwrap_or(u64::MAX),
            size: 0,
            multipart: None,
            parts: Vec::new(),
            parts_size: 0,
            generation: 0,
            sealed: false,
            committing: None,
        }
    }

    pub fn info(&self) -> Result<UploadInfo> {
        let repo = self
            .repo
            .parse()
            .map_err(|e| corrupt(format!("an upload names a bad repository: {e}")))?;
        Ok(UploadInfo {
            repo,
            size: self.size,
            started: UNIX_EPOCH + Duration::from_nanos(self.started),
        })
    }

    fn has_tail(&self) -> bool {
        self.size > self.parts_size
    }
}

fn corrupt(message: String) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        message,
    ))
}

fn no_upload(id: &UploadId) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no upload session {id}"),
    ))
}

impl Bucket {
    pub(super) async fn load_upload(&self, id: &UploadId) -> Result<Option<UploadState>> {
        let Some(bytes) = self.get_bytes(&self.layout.upload_info(id)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(format!("upload {id}: bad state object: {e}")))
    }

    pub(super) async fn expect_upload(&self, id: &UploadId) -> Result<UploadState> {
        self.load_upload(id).await?.ok_or_else(|| no_upload(id))
    }

    pub(super) async fn save_upload(&self, id: &UploadId, state: &UploadState) -> Result<()> {
        let json = serde_json::to_vec(state).map_err(|e| corrupt(e.to_string()))?;
        self.put_bytes(&self.layout.upload_info(id), Bytes::from(json))
            .await
    }

    async fn tail(&self, id: &UploadId, state: &UploadState) -> Result<Bytes> {
        if !state.has_tail() {
            return Ok(Bytes::new());
        }
        let path = self.layout.upload_tail(id, state.generation);
        self.get_bytes(&path)
            .await?
            .ok_or_else(|| corrupt(format!("upload {id}: its tail object is missing")))
    }

    pub(super) async fn writer(self: &Arc<Self>, id: &UploadId) -> Result<Box<dyn UploadWriter>> {
        let state = self.expect_upload(id).await?;
        if state.sealed {
            return Err(Error::client(
                ErrorCode::BlobUploadInvalid,
                "this upload was read back for its digest and takes no more data; start a new one",
            ));
        }
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&self.tail(id, &state).await?);
        Ok(Box::new(Writer {
            bucket: self.clone(),
            id: id.clone(),
            state,
            buf,
            sending: JoinSet::new(),
            sent: Vec::new(),
            failed: None,
        }))
    }

    /// Complete the session's data into `data/<id>` (see the module docs).
    /// A commit passes the digest it commits, recorded in the same write of
    /// the state: it must be there before an entry can name the data.
    pub(super) async fn seal(
        &self,
        id: &UploadId,
        state: &mut UploadState,
        committing: Option<&Digest>,
    ) -> Result<()> {
        let committing = committing.map(Digest::to_string);
        if state.sealed {
            // Sealed before (read back, or an earlier commit that failed):
            // only the digest may be new.
            if committing.is_none() || state.committing == committing {
                return Ok(());
            }
            state.committing = committing;
            return self.save_upload(id, state).await;
        }
        let tail = self.tail(id, state).await?;
        let data = self.layout.data(id.as_str());
        match state.multipart.clone() {
            None => self.put_bytes(&data, tail).await?,
            Some(multipart) => {
                let mut parts: Vec<PartId> = state
                    .parts
                    .iter()
                    .map(|p| PartId {
                        content_id: p.clone(),
                    })
                    .collect();
                if !tail.is_empty() {
                    let part = self
                        .s3
                        .put_part(&data, &multipart, parts.len(), PutPayload::from(tail))
                        .await
                        .map_err(store_error)?;
                    parts.push(part);
                }
                self.complete(&data, &multipart, parts, state.size).await?;
            }
        }
        let old_tail = state.has_tail().then_some(state.generation);
        state.sealed = true;
        state.multipart = None;
        state.parts.clear();
        state.parts_size = state.size;
        if committing.is_some() {
            state.committing = committing;
        }
        self.save_upload(id, state).await?;
        if let Some(generation) = old_tail {
            self.delete_quietly(&self.layout.upload_tail(id, generation))
                .await;
        }
        Ok(())
    }

    /// Complete a multipart upload; if the store says there is no such
    /// upload, an earlier completion whose state was not saved (a crash)
    /// counts when the object is there with the expected size.
    async fn complete(
        &self,
        data: &object_store::path::Path,
        multipart: &String,
        parts: Vec<PartId>,
        size: u64,
    ) -> Result<()> {
        match self.s3.complete_multipart(data, multipart, parts).await {
            Ok(_) => Ok(()),
            Err(e @ object_store::Error::NotFound { .. }) => {
                match found(self.s3.head(data).await)? {
                    Some(meta) if meta.size == size => Ok(()),
                    _ => Err(store_error(e)),
                }
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// Remove a session and whatever it holds, except data a blob owns.
    pub(super) async fn remove_upload(&self, id: &UploadId) -> Result<bool> {
        self.remove_upload_knowing(id, None).await
    }

    /// Remove a session just committed as `digest`, whose commit listed
    /// the blob's entries and learned whether one names the session's data
    /// (`owned`): they are not listed again.
    pub(super) async fn remove_committed(
        &self,
        id: &UploadId,
        digest: &Digest,
        owned: bool,
    ) -> Result<bool> {
        self.remove_upload_knowing(id, Some((digest, owned))).await
    }

    async fn remove_upload_knowing(
        &self,
        id: &UploadId,
        known: Option<(&Digest, bool)>,
    ) -> Result<bool> {
        let Some(state) = self.load_upload(id).await? else {
            return Ok(false);
        };
        if let Some(multipart) = &state.multipart {
            let data = self.layout.data(id.as_str());
            if let Err(e) = self.s3.abort_multipart(&data, multipart).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                return Err(store_error(e));
            }
        }
        if state.sealed && !self.data_is_owned(id, &state, known).await? {
            self.delete(&self.layout.data(id.as_str())).await?;
        }
        if state.has_tail() {
            self.delete_quietly(&self.layout.upload_tail(id, state.generation))
                .await;
        }
        self.delete(&self.layout.upload_info(id)).await?;
        Ok(true)
    }

    /// Whether a blob entry names this session's data (its commit got as far
    /// as writing the entry). `known` is the answer for one digest, which
    /// stands if that is the digest the state says is being committed.
    async fn data_is_owned(
        &self,
        id: &UploadId,
        state: &UploadState,
        known: Option<(&Digest, bool)>,
    ) -> Result<bool> {
        let Some(digest) = state.committing.as_deref() else {
            return Ok(false);
        };
        let digest: Digest = digest
            .parse()
            .map_err(|e| corrupt(format!("upload {id}: bad digest being committed: {e}")))?;
        if let Some((known, owned)) = known
            && *known == digest
        {
            return Ok(owned);
        }
        Ok(self
            .entries(&digest)
            .await?
            .iter()
            .any(|e| e.data == id.as_str()))
    }
}

/// Appends one request's bytes to a session.
struct Writer {
    bucket: Arc<Bucket>,
    id: UploadId,
    state: UploadState,
    /// Bytes not yet in a part (the old tail first).
    buf: BytesMut,
    sending: JoinSet<(usize, object_store::Result<PartId>)>,
    /// Parts sent by this request, in order: their sizes, and their ids
    /// once the store took them.
    sent: Vec<(u64, Option<PartId>)>,
    failed: Option<Error>,
}

impl Writer {
    async fn multipart(&mut self) -> Result<String> {
        if let Some(m) = &self.state.multipart {
            return Ok(m.clone());
        }
        let data = self.bucket.layout.data(self.id.as_str());
        let m = self
            .bucket
            .s3
            .create_multipart(&data)
            .await
            .map_err(store_error)?;
        self.state.multipart = Some(m.clone());
        // Saved at once, so that removing the session can abort it even if
        // this request never finishes.
        self.bucket.save_upload(&self.id, &self.state).await?;
        Ok(m)
    }

    async fn send(&mut self, part: Bytes) -> Result<()> {
        let multipart = self.multipart().await?;
        while self.sending.len() >= PARTS_IN_FLIGHT {
            self.reap_one().await;
        }
        let index = self.sent.len();
        self.sent.push((part.len() as u64, None));
        let s3 = self.bucket.s3.clone();
        let data = self.bucket.layout.data(self.id.as_str());
        let number = self.state.parts.len() + index;
        self.sending.spawn(async move {
            let result = s3
                .put_part(&data, &multipart, number, PutPayload::from(part))
                .await;
            (index, result)
        });
        Ok(())
    }

    async fn reap_one(&mut self) {
        match self.sending.join_next().await {
            Some(Ok((index, Ok(part)))) => self.sent[index].1 = Some(part),
            Some(Ok((_, Err(e)))) => {
                self.failed.get_or_insert(store_error(e));
            }
            Some(Err(e)) => {
                self.failed
                    .get_or_insert(Error::Io(std::io::Error::other(e)));
            }
            None => {}
        }
    }
}

#[async_trait]
impl UploadWriter for Writer {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.failed.is_some() {
            // The cause is kept for close(), which reports it.
            return Err(Error::Io(std::io::Error::other(
                "a part of this request failed",
            )));
        }
        self.buf.extend_from_slice(chunk);
        let part_size = self.bucket.part_size;
        while self.buf.len() >= part_size {
            let part = self.buf.split_to(part_size).freeze();
            self.send(part).await?;
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        if self.failed.is_none() && self.buf.len() >= MIN_PART {
            let part = self.buf.split().freeze();
            self.send(part).await?;
        }
        while !self.sending.is_empty() {
            self.reap_one().await;
        }
        self.commit_request().await
    }
}

impl Writer {
    /// Save the request's bytes into the state (the atomic step): every
    /// part and the new tail if all went well. After a failure, the parts
    /// sent in order up to the first failed one count if they cover at
    /// least what the session had (the old tail went into them); otherwise
    /// the session stays as it was, and its next request sends its parts
    /// again under the same numbers.
    async fn commit_request(mut self: Box<Self>) -> Result<()> {
        let whole = self.failed.is_none() && self.sent.iter().all(|(_, p)| p.is_some());
        let mut next = self.state.clone();
        for (size, part) in self.sent.iter().map_while(|(s, p)| Some((s, p.as_ref()?))) {
            next.parts.push(part.content_id.clone());
            next.parts_size += size;
        }
        let tail = if whole {
            self.buf.split().freeze()
        } else {
            Bytes::new()
        };
        next.size = next.parts_size + tail.len() as u64;
        if next.size < self.state.size {
            return Err(self
                .failed
                .take()
                .unwrap_or_else(|| corrupt(format!("upload {}: a part went missing", self.id))));
        }
        next.generation += 1;
        if !tail.is_empty() {
            let path = self.bucket.layout.upload_tail(&self.id, next.generation);
            self.bucket.put_bytes(&path, tail).await?;
        }
        self.bucket.save_upload(&self.id, &next).await?;
        if self.state.has_tail() {
            let path = self
                .bucket
                .layout
                .upload_tail(&self.id, self.state.generation);
            self.bucket.delete_quietly(&path).await;
        }
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
