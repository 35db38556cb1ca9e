//! OCI image layouts on disk (`oci:DIR[:TAG]`).
//!
//! Blobs live at `blobs/<alg>/<hex>`, `index.json` lists the tagged manifests
//! with the `org.opencontainers.image.ref.name` annotation. Blobs are written
//! to a temporary file, verified, then renamed, so a layout never holds a
//! blob whose name lies; `index.json` is replaced atomically after the
//! manifest it names is in place.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use speculum_oci::{Descriptor, Digest, manifest::MAX_MANIFEST_SIZE};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::error::{Error, Result, verify_digest};
use crate::registry::{ByteStream, RawManifest};

/// The annotation that holds a manifest's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    index_lock: Mutex<()>,
}

impl Layout {
    /// A layout at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Layout {
        Layout {
            dir: dir.into(),
            index_lock: Mutex::new(()),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn read_index(&self) -> Result<serde_json::Value> {
        let p = self.dir.join("index.json");
        let text = std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("OCI layout {}", self.dir.display()))
            } else {
                Error::io(&p, e)
            }
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::input(format!("{}: invalid index.json: {e}", p.display())))
    }

    /// The descriptors listed in `index.json`.
    pub fn entries(&self) -> Result<Vec<Descriptor>> {
        let idx = self.read_index()?;
        let list = idx
            .get("manifests")
            .cloned()
            .unwrap_or(serde_json::Value::Array(vec![]));
        serde_json::from_value(list)
            .map_err(|e| Error::input(format!("{}: invalid index.json: {e}", self.dir.display())))
    }

    /// The manifest tagged `tag`, or the only one when no tag is given.
    pub fn find(&self, tag: Option<&str>) -> Result<Descriptor> {
        let entries = self.entries()?;
        match tag {
            Some(t) => entries
                .into_iter()
                .find(|d| {
                    d.annotations
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|n| n == t)
                })
                .ok_or_else(|| {
                    Error::NotFound(format!("tag {t:?} in OCI layout {}", self.dir.display()))
                }),
            None => {
                let n = entries.len();
                let mut it = entries.into_iter();
                match (it.next(), n) {
                    (Some(d), 1) => Ok(d),
                    (None, _) => Err(Error::NotFound(format!(
                        "any image in OCI layout {}",
                        self.dir.display()
                    ))),
                    _ => Err(Error::input(format!(
                        "OCI layout {} holds {n} images: name one with oci:DIR:TAG",
                        self.dir.display()
                    ))),
                }
            }
        }
    }

    /// Read a manifest by digest, verified.
    pub async fn get_manifest(&self, desc: &Descriptor) -> Result<RawManifest> {
        let bytes = self
            .read_small(&desc.digest, MAX_MANIFEST_SIZE as u64)
            .await?;
        let info = speculum_oci::manifest::parse(Some(&desc.media_type), &bytes)?;
        Ok(RawManifest {
            bytes,
            media_type: info.media_type,
            digest: desc.digest.clone(),
        })
    }

    /// Read a manifest by digest only (children of an index).
    pub async fn get_manifest_by_digest(&self, digest: &Digest) -> Result<RawManifest> {
        let bytes = self.read_small(digest, MAX_MANIFEST_SIZE as u64).await?;
        let info = speculum_oci::manifest::parse(None, &bytes)?;
        Ok(RawManifest {
            bytes,
            media_type: info.media_type,
            digest: digest.clone(),
        })
    }

    /// Read a small blob fully and verify it.
    pub async fn read_small(&self, digest: &Digest, limit: u64) -> Result<Bytes> {
        let p = self.blob_path(digest);
        let meta = tokio::fs::metadata(&p)
            .await
            .map_err(|e| Error::io(&p, e))?;
        if meta.len() > limit {
            return Err(Error::input(format!(
                "{} is larger than {limit} bytes",
                p.display()
            )));
        }
        let b = tokio::fs::read(&p).await.map_err(|e| Error::io(&p, e))?;
        verify_digest(digest, &b)?;
        Ok(Bytes::from(b))
    }

    /// Whether a blob is present with the right size.
    pub async fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        tokio::fs::metadata(self.blob_path(digest))
            .await
            .is_ok_and(|m| m.len() == size)
    }

    /// Open a blob as a stream (verified by the copy).
    pub async fn get_blob(&self, digest: &Digest) -> Result<ByteStream> {
        let p = self.blob_path(digest);
        let f = tokio::fs::File::open(&p)
            .await
            .map_err(|e| Error::io(&p, e))?;
        let s = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
        Ok(Box::pin(s.map(move |r| r.map_err(|e| Error::io(&p, e)))))
    }

    fn ensure_skeleton(&self) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("blobs")).map_err(|e| Error::io(&self.dir, e))?;
        let marker = self.dir.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(|e| Error::io(&marker, e))?;
        }
        Ok(())
    }

    /// Write a blob from a stream that the caller has already wrapped with
    /// digest and size verification; the file appears under its digest only
    /// once the stream ended cleanly.
    pub async fn put_blob(&self, digest: &Digest, mut body: ByteStream) -> Result<()> {
        self.ensure_skeleton()?;
        let final_path = self.blob_path(digest);
        let dir = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir.clone());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::io(&dir, e))?;
        let tmp = dir.join(format!(".tmp-{}-{}", digest.hex(), std::process::id()));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Error::io(&tmp, e))?;
        let result: Result<()> = async {
            while let Some(chunk) = body.next().await {
                f.write_all(&chunk?).await.map_err(|e| Error::io(&tmp, e))?;
            }
            f.flush().await.map_err(|e| Error::io(&tmp, e))?;
            Ok(())
        }
        .await;
        drop(f);
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, &final_path)
            .await
            .map_err(|e| Error::io(&final_path, e))
    }

    /// Write a small blob (a manifest) verified.
    pub async fn put_bytes(&self, digest: &Digest, bytes: &Bytes) -> Result<()> {
        verify_digest(digest, bytes)?;
        let b = bytes.clone();
        self.put_blob(
            digest,
            Box::pin(futures_util::stream::once(async move { Ok(b) })),
        )
        .await
    }

    /// Record `desc` in `index.json`, under `tag` if given (replacing the
    /// previous holder of the tag), else as an untagged entry.
    pub async fn tag(&self, desc: &Descriptor, tag: Option<&str>) -> Result<()> {
        let _guard = self.index_lock.lock().await;
        self.ensure_skeleton()?;
        let mut idx = match self.read_index() {
            Ok(v) => v,
            Err(Error::NotFound(_)) => serde_json::json!({"schemaVersion": 2, "manifests": []}),
            Err(e) => return Err(e),
        };
        let mut desc = desc.clone();
        desc.platform = None;
        let mut anns = desc.annotations.take().unwrap_or_default();
        anns.remove(REF_NAME);
        if let Some(t) = tag {
            anns.insert(REF_NAME.to_string(), t.to_string());
        }
        desc.annotations = (!anns.is_empty()).then_some(anns);
        let new = serde_json::to_value(&desc).map_err(|e| Error::input(e.to_string()))?;
        let list = idx
            .as_object_mut()
            .ok_or_else(|| Error::input("index.json is not an object"))?
            .entry("manifests")
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        let arr = list
            .as_array_mut()
            .ok_or_else(|| Error::input("index.json manifests is not a list"))?;
        arr.retain(|e| {
            let name = e
                .get("annotations")
                .and_then(|a| a.get(REF_NAME))
                .and_then(|n| n.as_str());
            match tag {
                Some(t) => name != Some(t),
                None => !(name.is_none() && e.get("digest") == new.get("digest")),
            }
        });
        arr.push(new);
        if idx.get("mediaType").is_none()
            && let Some(o) = idx.as_object_mut()
        {
            o.insert(
                "mediaType".into(),
                speculum_oci::media_type::OCI_INDEX.into(),
            );
        }
        let text = serde_json::to_vec_pretty(&idx).map_err(|e| Error::input(e.to_string()))?;
        let tmp = self.dir.join(".index.json.tmp");
        let dst = self.dir.join("index.json");
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))
    }
}
