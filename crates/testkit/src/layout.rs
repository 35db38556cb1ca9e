//! OCI image layouts on disk: blob files named by digest, `index.json` naming tagged
//! manifests with the `org.opencontainers.image.ref.name` annotation, as skopeo and umoci
//! write them.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use speculum_oci::{Algorithm, Digest, Digester};

/// The annotation that names a tag in a layout's `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Creates `dir` as an (empty) OCI image layout unless it already is one.
pub(crate) fn init(dir: &Path) {
    fs::create_dir_all(dir.join("blobs/sha256"))
        .unwrap_or_else(|e| panic!("cannot create layout {}: {e}", dir.display()));
    let marker = dir.join("oci-layout");
    if !marker.exists() {
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }
    let index = dir.join("index.json");
    if !index.exists() {
        fs::write(&index, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
    }
}

/// Path of the blob `digest` in the layout `dir`.
pub(crate) fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

/// Writes `data` as a blob and returns its digest and size.
pub(crate) fn write_blob(dir: &Path, data: &[u8]) -> (Digest, u64) {
    let digest = Digest::sha256(data);
    fs::write(blob_path(dir, &digest), data).unwrap();
    (digest, data.len() as u64)
}

/// A writer that hashes and counts what goes through it.
pub(crate) struct HashWriter<W> {
    inner: W,
    digester: Digester,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            digester: Algorithm::Sha256.digester(),
            len: 0,
        }
    }

    /// Returns the inner writer, the digest and the byte count.
    pub(crate) fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.digester.finish(), self.len)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Adds (or replaces) `tag` in the layout's `index.json`, pointing at a manifest.
pub(crate) fn set_tag(dir: &Path, tag: &str, media_type: &str, digest: &Digest, size: u64) {
    let path = dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).unwrap()).expect("index.json is JSON");
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("index.json has manifests");
    manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
    manifests.push(serde_json::json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
        "annotations": { REF_NAME: tag },
    }));
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The manifest (or index) a tag names in an OCI layout.
#[derive(Debug, Clone)]
pub struct LayoutManifest {
    /// Digest of the manifest bytes.
    pub digest: Digest,
    /// Media type recorded in `index.json`.
    pub media_type: String,
    /// The manifest bytes, read from the blob.
    pub bytes: Vec<u8>,
}

/// Reads the manifest that `tag` names in the OCI layout `dir` (for example one that
/// `skopeo copy docker://... oci:DIR:TAG` wrote), and checks that the blob matches its digest.
/// Panics when the layout, the tag or the blob is missing.
pub fn layout_manifest(dir: &Path, tag: &str) -> LayoutManifest {
    let path = dir.join("index.json");
    let raw = fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let index: serde_json::Value = serde_json::from_slice(&raw).expect("index.json is JSON");
    let entry = index["manifests"]
        .as_array()
        .and_then(|ms| {
            ms.iter()
                .find(|m| m["annotations"][REF_NAME].as_str() == Some(tag))
        })
        .unwrap_or_else(|| panic!("no tag {tag:?} in {}", path.display()));
    let digest: Digest = entry["digest"].as_str().unwrap().parse().unwrap();
    let bytes = fs::read(blob_path(dir, &digest)).unwrap();
    assert!(
        digest.verify(&bytes),
        "blob {digest} in {} does not match its digest",
        dir.display()
    );
    LayoutManifest {
        digest,
        media_type: entry["mediaType"].as_str().unwrap_or_default().to_owned(),
        bytes,
    }
}
