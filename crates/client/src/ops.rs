//! Registry operations that move only manifests: tag, promote, delete-tag,
//! clean, inspect and tags.
//!
//! Tagging reads the manifest's exact bytes once and writes them under each
//! new tag with the same media type, so digests never change and a promote
//! costs the same few requests whatever the image's size.

use std::time::Duration;

use reqwest::StatusCode;
use speculum_oci::{Descriptor, Digest, ErrorBody, ManifestKind, Tag};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::reference::RegistryRef;
use crate::registry::{Registry, read_limited};
use crate::saas::{DockerHub, Quay, TagInfo};

/// Tag `src` (a tag or digest in a repository) as each of `tags` in the same
/// repository. Returns the digest.
pub async fn tag(registry: &Registry, src: &RegistryRef, tags: &[Tag]) -> Result<Digest> {
    let m = registry
        .get_manifest(&src.repository, &src.reference())
        .await?;
    for t in tags {
        registry
            .put_manifest(&src.repository, t.as_str(), m.bytes.clone(), &m.media_type)
            .await?;
        tracing::info!(repository = %src.repository, tag = %t, digest = %m.digest, "tagged");
    }
    Ok(m.digest)
}

/// Which API deletes tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TagApi {
    /// Docker Hub's API for `docker.io`, Quay's for `quay.io`, the OCI API elsewhere.
    #[default]
    Auto,
    /// `DELETE /v2/<name>/manifests/<tag>`.
    Oci,
    /// Docker Hub's REST API.
    DockerHub,
    /// Quay's REST API.
    Quay,
}

impl std::str::FromStr for TagApi {
    type Err = Error;
    fn from_str(s: &str) -> Result<TagApi> {
        match s {
            "auto" => Ok(TagApi::Auto),
            "oci" => Ok(TagApi::Oci),
            "dockerhub" | "docker" => Ok(TagApi::DockerHub),
            "quay" => Ok(TagApi::Quay),
            other => Err(Error::input(format!(
                "unknown tag API {other:?} (auto, oci, dockerhub, quay)"
            ))),
        }
    }
}

impl TagApi {
    /// The API to use for `r` once `auto` is resolved.
    pub fn resolve(self, r: &RegistryRef) -> TagApi {
        match self {
            TagApi::Auto if r.is_docker_hub() => TagApi::DockerHub,
            TagApi::Auto if r.registry == "quay.io" => TagApi::Quay,
            TagApi::Auto => TagApi::Oci,
            other => other,
        }
    }
}

/// The registry plus the SaaS clients a tag operation may need.
#[derive(Debug)]
pub struct TagClients<'a> {
    /// The registry itself.
    pub registry: &'a Registry,
    /// Docker Hub's API, when the repository is on Docker Hub.
    pub hub: Option<&'a DockerHub>,
    /// Quay's API, when the repository is on Quay.
    pub quay: Option<&'a Quay>,
    /// Which API to use.
    pub api: TagApi,
}

/// How a tag went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deleted {
    /// Through the tag API (OCI, Hub or Quay).
    Tag,
    /// By digest, after checking that no other tag shares or references it.
    DigestWithNoOtherTag,
}

fn is_unsupported(status: StatusCode, body: &[u8]) -> bool {
    if status == StatusCode::METHOD_NOT_ALLOWED {
        return true;
    }
    // distribution 2.8 answers a DELETE by tag with 400 DIGEST_INVALID (it
    // only deletes by digest); others say UNSUPPORTED.
    status == StatusCode::BAD_REQUEST
        && serde_json::from_slice::<ErrorBody>(body).is_ok_and(|b| {
            b.errors.iter().any(|e| {
                matches!(
                    e.code.as_str(),
                    "UNSUPPORTED" | "TAG_INVALID" | "DIGEST_INVALID"
                )
            })
        })
}

/// Delete one tag without touching other tags.
///
/// With the OCI API, the tag is deleted by tag. A registry that refuses tag
/// deletion (distribution answers `UNSUPPORTED`) gets a delete by digest only
/// when no other tag of the repository names that digest or an index listing
/// it; otherwise this fails and explains why.
pub async fn delete_tag(c: &TagClients<'_>, r: &RegistryRef, tag: &str) -> Result<Deleted> {
    match c.api.resolve(r) {
        TagApi::DockerHub => {
            let hub = c
                .hub
                .ok_or_else(|| Error::input("the Docker Hub API is not configured"))?;
            hub.delete_tag(r.repository.as_str(), tag).await?;
            Ok(Deleted::Tag)
        }
        TagApi::Quay => {
            let quay = c
                .quay
                .ok_or_else(|| Error::input("the Quay API is not configured"))?;
            quay.delete_tag(r.repository.as_str(), tag).await?;
            Ok(Deleted::Tag)
        }
        TagApi::Oci | TagApi::Auto => delete_tag_oci(c.registry, r, tag).await,
    }
}

async fn delete_tag_oci(registry: &Registry, r: &RegistryRef, tag: &str) -> Result<Deleted> {
    let repo = &r.repository;
    let resp = registry.delete_manifest(repo, tag).await?;
    let status = resp.status();
    if status.is_success() {
        return Ok(Deleted::Tag);
    }
    let url = resp.url().clone();
    let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
    if status == StatusCode::NOT_FOUND {
        return Err(Error::NotFound(format!(
            "tag {tag} of {}",
            r.repository_string()
        )));
    }
    if !is_unsupported(status, &body) {
        return Err(registry.registry_error(&reqwest::Method::DELETE, &url, status, &body));
    }
    tracing::info!(
        registry = registry.name(),
        "registry refuses tag deletion; checking whether deleting by digest is safe"
    );
    let (digest, _) = registry
        .head_manifest(repo, tag)
        .await?
        .ok_or_else(|| Error::NotFound(format!("tag {tag} of {}", r.repository_string())))?;
    let mut others = Vec::new();
    for t in registry.list_tags(repo).await? {
        if t == tag {
            continue;
        }
        let Some((d, media)) = registry.head_manifest(repo, &t).await? else {
            continue;
        };
        if d == digest {
            others.push(t);
        } else if speculum_oci::media_type::is_index(&media) {
            let m = registry.get_manifest(repo, &t).await?;
            let info = speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes)?;
            if info.manifests.iter().any(|c| c.digest == digest) {
                others.push(t);
            }
        }
    }
    if !others.is_empty() {
        others.sort();
        return Err(Error::Unsupported(format!(
            "{} refuses to delete tags, and deleting {digest} by digest would also remove tag(s) {}: not deleting",
            registry.name(),
            others.join(", ")
        )));
    }
    let resp = registry.delete_manifest(repo, &digest.to_string()).await?;
    registry.check(&reqwest::Method::DELETE, resp).await?;
    Ok(Deleted::DigestWithNoOtherTag)
}

/// Promote: tag `from` as each of `to`, then delete `from`.
pub async fn promote(
    c: &TagClients<'_>,
    repo: &RegistryRef,
    from: &Tag,
    to: &[Tag],
) -> Result<Digest> {
    let src = repo.with_tag(from.clone());
    let digest = tag(c.registry, &src, to).await?;
    delete_tag(c, repo, from.as_str()).await?;
    Ok(digest)
}

/// One tag's fate in a clean.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CleanEntry {
    /// The tag.
    pub tag: String,
    /// Its age in whole seconds, if known.
    pub age_seconds: Option<i64>,
    /// `removed`, `would-remove`, `kept` or `failed: <reason>`.
    pub result: String,
}

/// What a clean did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CleanReport {
    /// The repository.
    pub repository: String,
    /// Every tag that matched the pattern.
    pub tags: Vec<CleanEntry>,
    /// How many deletions failed.
    pub failed: usize,
}

/// Settings of a clean.
#[derive(Debug, Clone)]
pub struct CleanOptions {
    /// Tags to consider.
    pub pattern: regex::Regex,
    /// Remove tags whose age in whole seconds is greater than this.
    pub older_than: Duration,
    /// Only report.
    pub dry_run: bool,
    /// The current time (a parameter so that tests can fix it).
    pub now: OffsetDateTime,
}

async fn created_of(
    registry: &Registry,
    r: &RegistryRef,
    tag: &str,
) -> Result<Option<OffsetDateTime>> {
    let mut m = registry.get_manifest(&r.repository, tag).await?;
    let mut info = speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes)?;
    if info.kind == ManifestKind::Index {
        let Some(first) = info.manifests.first() else {
            return Ok(None);
        };
        m = registry
            .get_manifest(&r.repository, &first.digest.to_string())
            .await?;
        info = speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes)?;
    }
    let Some(config) = info.config else {
        return Ok(None);
    };
    let bytes = registry
        .get_blob_bytes(&r.repository, &config.digest, 4 << 20)
        .await?;
    Ok(config_created(&bytes))
}

/// The `created` time of an image config, if it has a valid one.
pub fn config_created(config: &[u8]) -> Option<OffsetDateTime> {
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let s = v.get("created")?.as_str()?;
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Remove the tags matching a pattern that are older than a threshold.
pub async fn clean(
    c: &TagClients<'_>,
    r: &RegistryRef,
    opts: &CleanOptions,
) -> Result<CleanReport> {
    let api = c.api.resolve(r);
    let infos: Vec<TagInfo> = match api {
        TagApi::DockerHub => {
            c.hub
                .ok_or_else(|| Error::input("the Docker Hub API is not configured"))?
                .list_tags(r.repository.as_str())
                .await?
        }
        TagApi::Quay => {
            c.quay
                .ok_or_else(|| Error::input("the Quay API is not configured"))?
                .list_tags(r.repository.as_str())
                .await?
        }
        TagApi::Oci | TagApi::Auto => {
            let mut v = Vec::new();
            for t in c.registry.list_tags(&r.repository).await? {
                if !opts.pattern.is_match(&t) {
                    continue;
                }
                let updated = created_of(c.registry, r, &t).await?;
                v.push(TagInfo { name: t, updated });
            }
            v
        }
    };
    let limit = i64::try_from(opts.older_than.as_secs()).unwrap_or(i64::MAX);
    let mut report = CleanReport {
        repository: r.repository_string(),
        tags: vec![],
        failed: 0,
    };
    let mut matched: Vec<TagInfo> = infos
        .into_iter()
        .filter(|t| opts.pattern.is_match(&t.name))
        .collect();
    matched.sort_by(|a, b| a.name.cmp(&b.name));
    for t in matched {
        // Whole elapsed seconds (zuul-jobs compared a timedelta's seconds field,
        // which never exceeds a day, so its cleanup never fired).
        let age = t.updated.map(|u| (opts.now - u).whole_seconds());
        let result = match age {
            None => {
                tracing::warn!(tag = %t.name, "age unknown (no created time): keeping");
                "kept (age unknown)".to_string()
            }
            Some(a) if a <= limit => "kept".to_string(),
            Some(_) if opts.dry_run => "would-remove".to_string(),
            Some(_) => match delete_tag(c, r, &t.name).await {
                Ok(_) => "removed".to_string(),
                Err(e) => {
                    report.failed += 1;
                    format!("failed: {e}")
                }
            },
        };
        report.tags.push(CleanEntry {
            tag: t.name,
            age_seconds: age,
            result,
        });
    }
    Ok(report)
}

/// What `inspect` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    /// The image.
    pub name: String,
    /// The manifest digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Children of an index.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
    /// Config of an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    /// Layers of an image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    /// Platform of an image (from its config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Creation time of an image (from its config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Config plus layers, in bytes.
    pub size: u64,
}

/// Describe an image or index; `raw` holds the manifest bytes.
pub async fn inspect(endpoint: &crate::copy::Endpoint) -> Result<(InspectReport, bytes::Bytes)> {
    let m = endpoint.root_manifest().await?;
    let info = speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes)?;
    let mut report = InspectReport {
        name: endpoint.image().to_string(),
        digest: m.digest.clone(),
        media_type: m.media_type.clone(),
        manifests: info.manifests.clone(),
        config: info.config.clone(),
        layers: info.layers.clone(),
        platform: None,
        created: None,
        size: info.blobs().map(|b| b.size).sum(),
    };
    if let Some(cfg) = &info.config
        && let Ok(bytes) = endpoint.blob_bytes(&cfg.digest, 4 << 20).await
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
    {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        if let (Some(os), Some(arch)) = (s("os"), s("architecture")) {
            report.platform = Some(match s("variant") {
                Some(var) => format!("{os}/{arch}/{var}"),
                None => format!("{os}/{arch}"),
            });
        }
        report.created = s("created");
    }
    Ok((report, m.bytes))
}
