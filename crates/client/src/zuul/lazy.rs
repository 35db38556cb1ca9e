//! The lazy pull step (issue 10): instead of copying every image of the
//! changes ahead into the buildset registry (BR) before the first job runs,
//! tell the BR which intermediate-registry (IR) image stands behind each
//! speculative name; the BR fetches a blob from the IR when a client pulls
//! it. The start no longer grows with the size of the images ahead, and
//! blobs nobody pulls never move.
//!
//! What runs here, on the executor, which holds the IR's credentials:
//!
//! 1. Per IR, a pull-only token for the source repositories, from the IR's
//!    token service. The BR runs on a node and gets only that token, never
//!    the password; an IR that speaks HTTP Basic only is refused
//!    ([`Error::NoTokenService`]), and the role copies instead.
//! 2. Per winning artifact (the plan of the copy method: the last in Zuul's
//!    order per destination), its manifest, and an index's child manifests,
//!    fetched from the IR *with that token*: a token that does not work
//!    fails here, before any job starts, not in a job's pull.
//! 3. One registration `PUT` to the BR with the tokens and the manifests.
//!    Every speculative tag is bound to its digest from then on, so a late
//!    failure can only fail a blob fetch (blobs are content-addressed), never
//!    let a client fall back to an upstream image of the same name.
//!
//! The token's lifetime (`registry.token-expiry` on a speculum IR) bounds how
//! long after this step the BR can still fetch blobs; after it, a pull of a
//! blob the BR does not hold yet fails.

use futures_util::{StreamExt, TryStreamExt};
use speculum_oci::manifest::{self, ManifestKind};
use speculum_oci::speculative::{
    EncodedManifest, ImageRegistration, REGISTRATION_PATH, Registration, RegistrationAnswer,
    SourceAccess, SourceImage,
};
use speculum_oci::{Digest, RepositoryName};

use super::{PullCopy, PullVars, StepFailure, StepReport, ir_info_for, plan_pull};
use crate::auth::BearerToken;
use crate::error::{Error, Result};
use crate::registry::{PullGrant, RawManifest, Registry, RegistryOptions};

/// How many manifests are fetched from the IR at once.
const PARALLEL_MANIFESTS: usize = 8;

/// How the BR reaches one IR, as reported (the token itself never is).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceGrant {
    /// `host:port` of the IR.
    pub registry: String,
    /// `token`, or `none` for an IR that lets anyone pull.
    pub auth: &'static str,
    /// The token's lifetime in seconds, as the IR's token service said:
    /// blobs the BR does not hold by then can no longer be fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires_in: Option<u64>,
}

/// One image the BR now serves lazily.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registered {
    /// `<repository>:<tag>` in the BR.
    pub destination: String,
    /// The artifact's `url`.
    pub url: String,
    /// The digest the tag is bound to.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// How many child manifests (an index) came with it.
    pub children: usize,
    /// The digest an earlier registration had bound the tag to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

/// One IR: what the BR is told, and a client that uses only that.
struct Source {
    grant: SourceGrant,
    access: SourceAccess,
    client: Registry,
}

/// Resolve the planned images and register them with the BR.
pub(super) async fn register(vars: &PullVars, copies: &[PullCopy]) -> Result<StepReport> {
    let (registration, mut report) = prepare(vars, copies).await?;
    if registration.images.is_empty() {
        return Ok(report);
    }
    let br = vars.buildset_registry.client()?;
    let body = serde_json::to_vec(&registration)
        .map_err(|e| Error::input(format!("cannot encode the registration: {e}")))?;
    let answer = br.put_json(REGISTRATION_PATH, body.into()).await?;
    let answer: RegistrationAnswer = serde_json::from_slice(&answer).map_err(|e| {
        Error::Unsupported(format!(
            "{} sent an invalid registration answer: {e}",
            br.name()
        ))
    })?;
    if answer.registered.len() != registration.images.len() {
        return Err(Error::Unsupported(format!(
            "{} registered {} images of {}",
            br.name(),
            answer.registered.len(),
            registration.images.len()
        )));
    }
    for (r, answered) in report.registered.iter_mut().zip(answer.registered) {
        tracing::info!(destination = %r.destination, digest = %r.digest, url = %r.url, held = answered.held, "registered");
        r.replaced = answered.replaced;
    }
    Ok(report)
}

/// What the lazy pull step would send the BR for `vars` (tokens and
/// manifests fetched, nothing sent): for tests that check what leaves the
/// executor.
pub async fn lazy_registration(vars: &PullVars) -> Result<Registration> {
    let plan = plan_pull(&vars.artifacts)?;
    Ok(prepare(vars, &plan.copies).await?.0)
}

/// Tokens and manifests for `copies`: the registration, and a report with
/// what will be registered and what failed.
async fn prepare(vars: &PullVars, copies: &[PullCopy]) -> Result<(Registration, StepReport)> {
    let sources = sources(vars, copies).await?;
    let resolved: Vec<Result<ImageRegistration>> = futures_util::stream::iter(copies)
        .map(|c| {
            let source = sources
                .iter()
                .find(|s| s.grant.registry == c.source.registry);
            async move {
                match source {
                    Some(s) => resolve(s, c).await,
                    None => Err(Error::input(format!("no source for {}", c.url))),
                }
            }
        })
        .buffered(PARALLEL_MANIFESTS)
        .collect()
        .await;
    let mut report = StepReport {
        sources: sources.iter().map(|s| s.grant.clone()).collect(),
        ..StepReport::default()
    };
    let mut images = Vec::new();
    for (c, r) in copies.iter().zip(resolved) {
        match r {
            Ok(image) => {
                report.registered.push(Registered {
                    destination: c.destination(),
                    url: c.url.clone(),
                    digest: image.manifest.digest.clone(),
                    media_type: image.manifest.media_type.clone(),
                    children: image.children.len(),
                    replaced: None,
                });
                images.push(image);
            }
            Err(e) => report.failures.push(StepFailure {
                image: c.url.clone(),
                error: e.to_string(),
            }),
        }
    }
    let registration = Registration {
        sources: sources.into_iter().map(|s| s.access).collect(),
        images,
    };
    Ok((registration, report))
}

/// One [`Source`] per IR the copies come from, their tokens fetched
/// concurrently. Fails if any IR cannot give a token.
async fn sources(vars: &PullVars, copies: &[PullCopy]) -> Result<Vec<Source>> {
    let mut wanted: Vec<(String, Vec<RepositoryName>)> = Vec::new();
    for c in copies {
        let repo = c.source.repository.clone();
        match wanted.iter_mut().find(|(r, _)| *r == c.source.registry) {
            Some((_, repos)) if repos.contains(&repo) => {}
            Some((_, repos)) => repos.push(repo),
            None => wanted.push((c.source.registry.clone(), vec![repo])),
        }
    }
    futures_util::future::try_join_all(
        wanted
            .into_iter()
            .map(|(registry, repos)| source(vars, registry, repos)),
    )
    .await
}

/// Ask one IR for a pull token for `repos`, with the IR's credentials.
async fn source(vars: &PullVars, registry: String, repos: Vec<RepositoryName>) -> Result<Source> {
    let info = ir_info_for(vars, &registry)?;
    let (token, auth, expires_in) = match info.client()?.pull_grant(&repos).await? {
        PullGrant::Token { token, expires_in } => (Some(token), "token", expires_in),
        PullGrant::Open => (None, "none", None),
        PullGrant::BasicOnly => return Err(Error::NoTokenService { registry }),
    };
    tracing::info!(%registry, repositories = repos.len(), ?expires_in, auth, "pull access for the buildset registry");
    let ca = info.cert.clone().filter(|c| !c.trim().is_empty());
    let insecure = info.insecure.unwrap_or(false);
    let client = Registry::new(
        &registry,
        RegistryOptions {
            credentials: None,
            ca_pems: ca.iter().map(|c| c.as_bytes().to_vec()).collect(),
            insecure,
            certs_dirs: None,
            attempts: None,
            token: token.clone(),
        },
    )?;
    Ok(Source {
        grant: SourceGrant {
            registry: registry.clone(),
            auth,
            token_expires_in: expires_in,
        },
        access: SourceAccess {
            registry,
            token: token.as_ref().map(BearerToken::as_str).map(str::to_string),
            ca,
            insecure,
        },
        client,
    })
}

/// Fetch one image's manifest, and an index's children, with the token.
async fn resolve(source: &Source, c: &PullCopy) -> Result<ImageRegistration> {
    let repo = &c.source.repository;
    let reference = c.source.reference();
    let top = source.client.get_manifest(repo, &reference).await?;
    let info = manifest::parse(Some(&top.media_type), &top.bytes)?;
    let digests: Vec<&Digest> = info.manifests.iter().map(|d| &d.digest).collect();
    let children: Vec<RawManifest> = futures_util::stream::iter(digests)
        .map(|d| {
            let d = d.to_string();
            async move { source.client.get_manifest(repo, &d).await }
        })
        .buffered(PARALLEL_MANIFESTS)
        .try_collect()
        .await?;
    for child in &children {
        if manifest::parse(Some(&child.media_type), &child.bytes)?.kind != ManifestKind::Image {
            return Err(Error::Unsupported(format!(
                "{} lists the index {}: nested indexes are not served lazily (the copy method works)",
                c.url, child.digest
            )));
        }
    }
    let encode = |m: &RawManifest| EncodedManifest::new(&m.media_type, &m.digest, &m.bytes);
    Ok(ImageRegistration {
        repository: c.repository.to_string(),
        tag: c.tag.to_string(),
        source: SourceImage {
            registry: c.source.registry.clone(),
            repository: repo.to_string(),
            reference,
        },
        manifest: encode(&top),
        children: children.iter().map(encode).collect(),
    })
}
