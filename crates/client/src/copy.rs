//! Copying images between registries and layouts.
//!
//! Blobs first, manifests last: every blob is verified (digest and size) on
//! its way through, child manifests are pushed by digest before the index
//! that lists them, and the tag is written only after everything it points
//! at is in place. So a failed copy never leaves a tag on an incomplete image.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use speculum_oci::{
    Descriptor, Digest, Digester, ManifestInfo, ManifestKind, Platform, RepositoryName,
};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::reference::{ImageRef, LayoutRef, RegistryRef};
use crate::registry::{ByteStream, RawManifest, Registry, Scope, UploadStart, backoff};

/// Where a copy reads from or writes to.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A repository in a registry.
    Registry {
        /// The registry client.
        registry: Arc<Registry>,
        /// The image.
        reference: RegistryRef,
    },
    /// An OCI layout.
    Layout {
        /// The layout.
        layout: Arc<Layout>,
        /// The image in it.
        reference: LayoutRef,
    },
}

impl Endpoint {
    /// A registry endpoint.
    pub fn registry(registry: Arc<Registry>, reference: RegistryRef) -> Endpoint {
        Endpoint::Registry {
            registry,
            reference,
        }
    }

    /// A layout endpoint.
    pub fn layout(reference: LayoutRef) -> Endpoint {
        Endpoint::Layout {
            layout: Arc::new(Layout::new(reference.dir.clone())),
            reference,
        }
    }

    /// The image this endpoint names.
    pub fn image(&self) -> ImageRef {
        match self {
            Endpoint::Registry { reference, .. } => ImageRef::Registry(reference.clone()),
            Endpoint::Layout { reference, .. } => ImageRef::Layout(reference.clone()),
        }
    }

    /// Fetch the manifest the reference names.
    pub async fn root_manifest(&self) -> Result<RawManifest> {
        match self {
            Endpoint::Registry {
                registry,
                reference,
            } => {
                registry
                    .get_manifest(&reference.repository, &reference.reference())
                    .await
            }
            Endpoint::Layout { layout, reference } => {
                let desc = layout.find(reference.tag.as_deref())?;
                layout.get_manifest(&desc).await
            }
        }
    }

    /// Fetch a manifest by digest.
    pub async fn manifest_by_digest(&self, digest: &Digest) -> Result<RawManifest> {
        match self {
            Endpoint::Registry {
                registry,
                reference,
            } => {
                registry
                    .get_manifest(&reference.repository, &digest.to_string())
                    .await
            }
            Endpoint::Layout { layout, .. } => layout.get_manifest_by_digest(digest).await,
        }
    }

    /// Read a small blob (an image config) fully, verified.
    pub async fn blob_bytes(&self, digest: &Digest, limit: u64) -> Result<Bytes> {
        match self {
            Endpoint::Registry {
                registry,
                reference,
            } => {
                registry
                    .get_blob_bytes(&reference.repository, digest, limit)
                    .await
            }
            Endpoint::Layout { layout, .. } => layout.read_small(digest, limit).await,
        }
    }

    async fn blob_stream(&self, digest: &Digest) -> Result<ByteStream> {
        match self {
            Endpoint::Registry {
                registry,
                reference,
            } => registry.get_blob(&reference.repository, digest).await,
            Endpoint::Layout { layout, .. } => layout.get_blob(digest).await,
        }
    }
}

/// Which images of an index to copy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlatformSelection {
    /// The platform of this machine (`linux/<arch>`), as docker and skopeo do.
    #[default]
    Native,
    /// Every image of the index, and the index itself.
    All,
    /// One platform, `os/arch[/variant]`.
    One(PlatformSpec),
}

/// `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    /// The OS.
    pub os: String,
    /// The architecture.
    pub architecture: String,
    /// The variant, if any.
    pub variant: Option<String>,
}

impl std::str::FromStr for PlatformSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<PlatformSpec> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(PlatformSpec {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(PlatformSpec {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(v.to_string()),
                })
            }
            _ => Err(Error::input(format!(
                "invalid platform {s:?}: expected os/arch[/variant]"
            ))),
        }
    }
}

impl PlatformSpec {
    /// This machine's platform.
    pub fn native() -> PlatformSpec {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        PlatformSpec {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    fn matches(&self, p: &Platform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && (self.variant.is_none() || self.variant == p.variant)
    }
}

/// Knobs of a copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Which images of an index to copy.
    pub platforms: PlatformSelection,
    /// How many blobs move at once.
    pub parallel: usize,
    /// Upload in PATCH chunks of this size instead of one streamed PUT.
    pub chunk_size: Option<usize>,
    /// Attempts per blob on retryable failures.
    pub attempts: u32,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platforms: PlatformSelection::Native,
            parallel: 6,
            chunk_size: None,
            attempts: 4,
        }
    }
}

/// What happened to a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobAction {
    /// Sent over the wire.
    Copied,
    /// The target had it already.
    Skipped,
    /// Mounted from another repository of the same registry.
    Mounted,
}

/// Progress callbacks for a copy; the binary draws bars with them.
pub trait Progress: Send + Sync {
    /// A blob starts (or restarts after a retry).
    fn start(&self, _digest: &Digest, _size: u64) {}
    /// `bytes` more bytes of a blob went through.
    fn advance(&self, _digest: &Digest, _bytes: u64) {}
    /// A blob is done.
    fn finish(&self, _digest: &Digest, _action: BlobAction) {}
}

/// Progress that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// One blob of a copy report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlobReport {
    /// The blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// What happened.
    pub action: BlobAction,
}

/// One manifest of a copy report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManifestReport {
    /// Its digest (unchanged by the copy).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its platform, for children of an index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// The summary of a copy (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    /// The source image.
    pub source: String,
    /// The destination image.
    pub destination: String,
    /// The digest of the manifest the destination tag now names.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Every manifest pushed, children first.
    pub manifests: Vec<ManifestReport>,
    /// Every blob.
    pub blobs: Vec<BlobReport>,
    /// Bytes sent over the wire.
    pub bytes_copied: u64,
    /// Bytes the target already had.
    pub bytes_skipped: u64,
    /// Bytes mounted from another repository.
    pub bytes_mounted: u64,
}

/// A stream wrapper that checks size and digest and reports progress.
struct Verify {
    inner: ByteStream,
    digester: Option<Digester>,
    digest: Digest,
    size: u64,
    seen: u64,
    progress: Arc<dyn Progress>,
    done: bool,
}

impl Stream for Verify {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(b))) => {
                self.seen += b.len() as u64;
                if self.seen > self.size {
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::SizeMismatch {
                        digest: self.digest.to_string(),
                        expected: self.size,
                        actual: self.seen,
                    })));
                }
                if let Some(d) = self.digester.as_mut() {
                    d.update(&b);
                }
                self.progress.advance(&self.digest, b.len() as u64);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                if self.seen != self.size {
                    return Poll::Ready(Some(Err(Error::SizeMismatch {
                        digest: self.digest.to_string(),
                        expected: self.size,
                        actual: self.seen,
                    })));
                }
                let actual = match self.digester.take() {
                    Some(d) => d.finish(),
                    None => return Poll::Ready(None),
                };
                if actual != self.digest {
                    return Poll::Ready(Some(Err(Error::DigestMismatch {
                        expected: self.digest.to_string(),
                        actual: actual.to_string(),
                    })));
                }
                Poll::Ready(None)
            }
        }
    }
}

fn verified(inner: ByteStream, desc: &Descriptor, progress: Arc<dyn Progress>) -> ByteStream {
    Box::pin(Verify {
        inner,
        digester: Some(desc.digest.algorithm().digester()),
        digest: desc.digest.clone(),
        size: desc.size,
        seen: 0,
        progress,
        done: false,
    })
}

/// The manifests and blobs a copy moves, in push order.
struct Plan {
    /// Manifests to push by digest before the root (children).
    children: Vec<(RawManifest, Option<Platform>)>,
    /// The manifest the destination tag will name.
    root: RawManifest,
    /// Unique blobs.
    blobs: BTreeMap<Digest, Descriptor>,
}

fn parse(m: &RawManifest) -> Result<ManifestInfo> {
    Ok(speculum_oci::manifest::parse(
        Some(&m.media_type),
        &m.bytes,
    )?)
}

async fn plan(src: &Endpoint, opts: &CopyOptions) -> Result<Plan> {
    let root = src.root_manifest().await?;
    let info = parse(&root)?;
    let mut blobs = BTreeMap::new();
    if info.kind == ManifestKind::Image {
        for b in info.required_blobs() {
            blobs.insert(b.digest.clone(), b.clone());
        }
        return Ok(Plan {
            children: vec![],
            root,
            blobs,
        });
    }
    let wanted = match &opts.platforms {
        PlatformSelection::All => None,
        PlatformSelection::Native => Some(PlatformSpec::native()),
        PlatformSelection::One(p) => Some(p.clone()),
    };
    if let Some(p) = wanted {
        let child = info
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|pl| p.matches(pl)))
            .ok_or_else(|| {
                let have: Vec<String> = info
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                    .collect();
                Error::NotFound(format!(
                    "platform {}/{} in the index (it has {}; use --all or --platform)",
                    p.os,
                    p.architecture,
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                ))
            })?;
        let m = src.manifest_by_digest(&child.digest).await?;
        let ci = parse(&m)?;
        if ci.kind != ManifestKind::Image {
            return Err(Error::Unsupported("nested indexes need --all".into()));
        }
        for b in ci.required_blobs() {
            blobs.insert(b.digest.clone(), b.clone());
        }
        return Ok(Plan {
            children: vec![],
            root: m,
            blobs,
        });
    }
    // Every child, depth first, so that nested indexes come after their children.
    let mut children = Vec::new();
    let mut stack: Vec<(Descriptor, u32)> = info
        .manifests
        .iter()
        .rev()
        .map(|d| (d.clone(), 1))
        .collect();
    let mut pending_indexes: Vec<(RawManifest, Option<Platform>, u32)> = Vec::new();
    while let Some((d, depth)) = stack.pop() {
        let m = src.manifest_by_digest(&d.digest).await?;
        let mi = parse(&m)?;
        match mi.kind {
            ManifestKind::Image => {
                for b in mi.required_blobs() {
                    blobs.insert(b.digest.clone(), b.clone());
                }
                children.push((m, d.platform.clone()));
            }
            ManifestKind::Index if depth < 4 => {
                stack.extend(mi.manifests.iter().rev().map(|c| (c.clone(), depth + 1)));
                pending_indexes.push((m, d.platform.clone(), depth));
            }
            ManifestKind::Index => {
                return Err(Error::Unsupported("indexes nested more than 4 deep".into()));
            }
        }
    }
    pending_indexes.sort_by_key(|p| std::cmp::Reverse(p.2));
    children.extend(pending_indexes.into_iter().map(|(m, p, _)| (m, p)));
    Ok(Plan {
        children,
        root,
        blobs,
    })
}

async fn copy_blob(
    src: &Endpoint,
    dst: &Endpoint,
    desc: &Descriptor,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<BlobReport> {
    let report = |action| BlobReport {
        digest: desc.digest.clone(),
        size: desc.size,
        action,
    };
    progress.start(&desc.digest, desc.size);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = copy_blob_once(src, dst, desc, opts, progress.clone()).await;
        match result {
            Ok(action) => {
                progress.finish(&desc.digest, action);
                return Ok(report(action));
            }
            Err(e) if e.is_retryable() && attempt < opts.attempts.max(1) => {
                tracing::warn!(digest = %desc.digest, error = %e, attempt, "blob copy failed, retrying");
                backoff(attempt, None).await;
                progress.start(&desc.digest, desc.size);
            }
            Err(e) => return Err(e),
        }
    }
}

async fn copy_blob_once(
    src: &Endpoint,
    dst: &Endpoint,
    desc: &Descriptor,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<BlobAction> {
    match dst {
        Endpoint::Layout { layout, .. } => {
            if layout.has_blob(&desc.digest, desc.size).await {
                return Ok(BlobAction::Skipped);
            }
            let s = verified(src.blob_stream(&desc.digest).await?, desc, progress);
            layout.put_blob(&desc.digest, s).await?;
            Ok(BlobAction::Copied)
        }
        Endpoint::Registry {
            registry,
            reference,
        } => {
            let repo = &reference.repository;
            if registry
                .has_blob(repo, &desc.digest, &[Scope::push(repo)])
                .await?
            {
                return Ok(BlobAction::Skipped);
            }
            let mount_from: Option<&RepositoryName> = match src {
                Endpoint::Registry {
                    registry: sreg,
                    reference: sref,
                } if sreg.name() == registry.name() && sref.repository != *repo => {
                    Some(&sref.repository)
                }
                _ => None,
            };
            let session = match registry
                .start_upload(repo, mount_from.map(|f| (f, &desc.digest)))
                .await?
            {
                UploadStart::Mounted => return Ok(BlobAction::Mounted),
                UploadStart::Session(url) => url,
            };
            if mount_from.is_some() {
                tracing::debug!(digest = %desc.digest, "mount refused (202), uploading");
            }
            let result = async {
                let s = verified(src.blob_stream(&desc.digest).await?, desc, progress);
                match opts.chunk_size {
                    Some(c) => {
                        registry
                            .put_blob_chunked(repo, session.clone(), &desc.digest, c, s)
                            .await
                    }
                    None => {
                        registry
                            .put_blob_monolithic(repo, session.clone(), &desc.digest, desc.size, s)
                            .await
                    }
                }
            }
            .await;
            if let Err(e) = result {
                registry.cancel_upload(repo, session).await;
                return Err(e);
            }
            Ok(BlobAction::Copied)
        }
    }
}

async fn put_manifest(
    dst: &Endpoint,
    m: &RawManifest,
    tag: Option<&str>,
    root: bool,
) -> Result<()> {
    match dst {
        Endpoint::Layout { layout, .. } => {
            layout.put_bytes(&m.digest, &m.bytes).await?;
            if root {
                let desc = Descriptor {
                    media_type: m.media_type.clone(),
                    digest: m.digest.clone(),
                    size: m.bytes.len() as u64,
                    urls: None,
                    annotations: None,
                    platform: None,
                    artifact_type: None,
                };
                layout.tag(&desc, tag).await?;
            }
            Ok(())
        }
        Endpoint::Registry {
            registry,
            reference,
        } => {
            let r = tag
                .map(str::to_string)
                .unwrap_or_else(|| m.digest.to_string());
            let got = registry
                .put_manifest(&reference.repository, &r, m.bytes.clone(), &m.media_type)
                .await?;
            if let Some(g) = got
                && g.algorithm() == m.digest.algorithm()
                && g != m.digest
            {
                return Err(Error::DigestMismatch {
                    expected: m.digest.to_string(),
                    actual: g.to_string(),
                });
            }
            Ok(())
        }
    }
}

/// The tag a destination will be written under (`None`: by digest only).
fn destination_tag(dst: &Endpoint, root: &Digest) -> Result<Option<String>> {
    match dst {
        Endpoint::Registry { reference, .. } => {
            if let Some(d) = &reference.digest
                && d != root
            {
                return Err(Error::input(format!(
                    "destination digest {d} does not match the image ({root})"
                )));
            }
            Ok(reference.tag_or_latest())
        }
        Endpoint::Layout { reference, .. } => Ok(reference.tag.clone()),
    }
}

/// Copy one image (or an index and its images) from `src` to `dst`.
pub async fn copy(
    src: &Endpoint,
    dst: &Endpoint,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<CopyReport> {
    let plan = plan(src, opts).await?;
    let tag = destination_tag(dst, &plan.root.digest)?;
    tracing::info!(source = %src.image(), destination = %dst.image(), digest = %plan.root.digest, blobs = plan.blobs.len(), "copying");

    let blobs: Vec<BlobReport> = futures_util::stream::iter(plan.blobs.values())
        .map(|d| copy_blob(src, dst, d, opts, progress.clone()))
        .buffer_unordered(opts.parallel.max(1))
        .try_collect()
        .await?;

    let mut manifests = Vec::new();
    for (m, platform) in &plan.children {
        put_manifest(dst, m, None, false).await?;
        manifests.push(ManifestReport {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            platform: platform.as_ref().map(|p| p.to_string()),
        });
    }
    put_manifest(dst, &plan.root, tag.as_deref(), true).await?;
    manifests.push(ManifestReport {
        digest: plan.root.digest.clone(),
        media_type: plan.root.media_type.clone(),
        platform: None,
    });

    let sum = |a: BlobAction| blobs.iter().filter(|b| b.action == a).map(|b| b.size).sum();
    Ok(CopyReport {
        source: src.image().to_string(),
        destination: dst.image().to_string(),
        digest: plan.root.digest.clone(),
        media_type: plan.root.media_type.clone(),
        bytes_copied: sum(BlobAction::Copied),
        bytes_skipped: sum(BlobAction::Skipped),
        bytes_mounted: sum(BlobAction::Mounted),
        manifests,
        blobs,
    })
}
