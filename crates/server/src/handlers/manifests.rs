//! `/v2/<name>/manifests/<reference>`: push, pull and delete manifests.
//!
//! A reference that is neither a digest nor a valid tag is a client error
//! (400 `TAG_INVALID`) where the client names something to change (PUT,
//! DELETE), but on GET and HEAD it names a manifest that cannot exist, which
//! the distribution spec answers with 404 `MANIFEST_UNKNOWN` (the official
//! conformance tests pull such a reference and expect exactly that).

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use speculum_oci::manifest::MAX_MANIFEST_SIZE;
use speculum_oci::{ErrorCode, ErrorKind, Reference, Tag, paths};

use super::{Ctx, DOCKER_CONTENT_DIGEST, OCI_SUBJECT, hv, read_limited};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::route::Repo;

/// The header that lists the tags a push by digest applied (`?tag=`).
const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");

fn parse_reference(reference: &str) -> ApiResult<Reference> {
    Ok(reference.parse::<Reference>()?)
}

/// The `?tag=` parameters of a push by digest, each checked against the tag
/// grammar before anything is stored. A push by tag ignores them: the
/// parameter is defined for pushes by digest only.
fn query_tags(ctx: &Ctx, reference: &Reference) -> ApiResult<Vec<Tag>> {
    if matches!(reference, Reference::Tag(_)) {
        return Ok(Vec::new());
    }
    let mut tags: Vec<Tag> = Vec::new();
    for raw in ctx.query.all("tag") {
        let tag: Tag = raw.parse()?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

fn too_large() -> ApiError {
    ApiError::new(ErrorCode::SizeTooLarge)
        .message(format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"))
}

/// `PUT /v2/<name>/manifests/<reference>`: store the exact bytes, answer 201
/// with the digest, `OCI-Subject` when the manifest has a subject, and
/// `OCI-Tag` listing the tags a push by digest applied from `?tag=`.
pub(crate) async fn put(
    ctx: &Ctx,
    repo: &Repo,
    reference: &str,
    body: Body,
) -> ApiResult<Response> {
    let identity = ctx.authorize(repo, Action::Push).await?;
    let reference = parse_reference(reference)?;
    let tags = query_tags(ctx, &reference)?;
    let bytes = read_limited(ctx, body, MAX_MANIFEST_SIZE, too_large).await?;
    let size = bytes.len() as u64;
    let content_type = ctx.header(header::CONTENT_TYPE);
    // A push of a speculative tag replaces its registration.
    let mut changed: Vec<&str> = tags.iter().map(Tag::as_str).collect();
    if let Reference::Tag(t) = &reference {
        changed.push(t.as_str());
    }
    let _change = match ctx.state.speculative() {
        Some(s) => s.change_tags(&repo.stored, &changed).await,
        None => None,
    };
    let pushed = ctx
        .state
        .registry()
        .put_manifest_tagged(&repo.stored, &reference, &tags, content_type, bytes)
        .await?;
    let digest = pushed.digest.to_string();
    tracing::info!(repo = %repo.stored, reference = %reference, ?tags, digest, "manifest pushed");
    // One event per tag the push moved (webhook receivers act on tags), or
    // one untagged event for a bare push by digest.
    let mut event_tags: Vec<Option<&str>> = match &reference {
        Reference::Tag(tag) => vec![Some(tag.as_str())],
        Reference::Digest(_) => tags.iter().map(|t| Some(t.as_str())).collect(),
    };
    if event_tags.is_empty() {
        event_tags.push(None);
    }
    for tag in event_tags {
        ctx.state
            .notifier()
            .manifest_pushed(
                ctx.origin(&identity),
                repo.stored.as_str(),
                tag,
                &digest,
                &pushed.info.media_type,
                size,
            )
            .await;
    }
    let mut response = StatusCode::CREATED.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        hv(repo.with_ns(paths::manifest(&repo.sent, &digest)))?,
    );
    headers.insert(DOCKER_CONTENT_DIGEST, hv(&digest)?);
    if let Some(subject) = &pushed.info.subject {
        headers.insert(OCI_SUBJECT, hv(subject.digest.to_string())?);
    }
    if !tags.is_empty() {
        let list: Vec<&str> = tags.iter().map(Tag::as_str).collect();
        headers.insert(OCI_TAG, hv(list.join(", "))?);
    }
    Ok(response)
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`: the bytes and media type
/// that were pushed (or fetched from the namespace's upstream on a miss).
pub(crate) async fn get(ctx: &Ctx, repo: &Repo, reference: &str) -> ApiResult<Response> {
    ctx.authorize(repo, Action::Pull).await?;
    let reference = match reference.parse::<Reference>() {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::Tag => {
            return Err(ApiError::new(ErrorCode::ManifestUnknown).message(e.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let registered = ctx
        .state
        .speculative()
        .and_then(|s| s.manifest(&repo.stored, &reference));
    let manifest = match registered {
        Some(m) => m,
        None => {
            ctx.state
                .upstreams()
                .manifest(ctx.state.registry(), &repo.stored, &reference)
                .await?
        }
    };
    let length = manifest.bytes.len();
    let content_type = hv(&manifest.media_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let mut response = manifest.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(DOCKER_CONTENT_DIGEST, hv(manifest.digest.to_string())?);
    Ok(response)
}

/// `DELETE /v2/<name>/manifests/<reference>`: by digest deletes the manifest,
/// by tag deletes only that tag.
pub(crate) async fn delete(ctx: &Ctx, repo: &Repo, reference: &str) -> ApiResult<Response> {
    let identity = ctx.authorize(repo, Action::Delete).await?;
    let reference = parse_reference(reference)?;
    let change = match (&reference, ctx.state.speculative()) {
        (Reference::Tag(t), Some(s)) => s.change_tags(&repo.stored, &[t.as_str()]).await,
        _ => None,
    };
    let deleted = ctx
        .state
        .registry()
        .delete_manifest(&repo.stored, &reference)
        .await;
    // A registered tag not stored yet is deleted by forgetting it.
    let forgotten = change.as_ref().is_some_and(|c| c.forgotten);
    match deleted {
        Err(e) if !(forgotten && crate::upstream::held::is_unknown(&e)) => return Err(e.into()),
        _ => {}
    }
    tracing::info!(repo = %repo.stored, reference = %reference, "manifest deleted");
    let (tag, digest) = match &reference {
        Reference::Tag(tag) => (Some(tag.as_str()), None),
        Reference::Digest(digest) => (None, Some(digest.to_string())),
    };
    ctx.state
        .notifier()
        .manifest_deleted(
            ctx.origin(&identity),
            repo.stored.as_str(),
            tag,
            digest.as_deref(),
        )
        .await;
    Ok(StatusCode::ACCEPTED.into_response())
}
