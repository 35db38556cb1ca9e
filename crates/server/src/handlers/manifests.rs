//! `/v2/<name>/manifests/<reference>`: push, pull and delete manifests.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use speculum_oci::manifest::MAX_MANIFEST_SIZE;
use speculum_oci::{ErrorCode, Reference, paths};

use super::{Ctx, DOCKER_CONTENT_DIGEST, OCI_SUBJECT, hv, read_limited};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::route::Repo;

fn parse_reference(reference: &str) -> ApiResult<Reference> {
    Ok(reference.parse::<Reference>()?)
}

fn too_large() -> ApiError {
    ApiError::new(ErrorCode::SizeTooLarge)
        .message(format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"))
}

/// `PUT /v2/<name>/manifests/<reference>`: store the exact bytes, answer 201
/// with the digest, and `OCI-Subject` when the manifest has a subject.
pub(crate) async fn put(
    ctx: &Ctx,
    repo: &Repo,
    reference: &str,
    body: Body,
) -> ApiResult<Response> {
    let identity = ctx.authorize(repo, Action::Push).await?;
    let reference = parse_reference(reference)?;
    if ctx
        .content_length()
        .is_some_and(|n| n > MAX_MANIFEST_SIZE as u64)
    {
        return Err(too_large());
    }
    let bytes = read_limited(body, MAX_MANIFEST_SIZE)
        .await?
        .ok_or_else(too_large)?;
    let size = bytes.len() as u64;
    let content_type = ctx.header(header::CONTENT_TYPE);
    let pushed = ctx
        .state
        .registry()
        .put_manifest(&repo.stored, &reference, content_type, bytes)
        .await?;
    let digest = pushed.digest.to_string();
    tracing::info!(repo = %repo.stored, reference = %reference, digest, "manifest pushed");
    let tag = match &reference {
        Reference::Tag(tag) => Some(tag.as_str()),
        Reference::Digest(_) => None,
    };
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
    Ok(response)
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`: the bytes and media type
/// that were pushed (or fetched from the namespace's upstream on a miss).
pub(crate) async fn get(ctx: &Ctx, repo: &Repo, reference: &str) -> ApiResult<Response> {
    ctx.authorize(repo, Action::Pull).await?;
    let reference = parse_reference(reference)?;
    let manifest = ctx
        .state
        .upstreams()
        .manifest(ctx.state.registry(), &repo.stored, &reference)
        .await?;
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
    ctx.state
        .registry()
        .delete_manifest(&repo.stored, &reference)
        .await?;
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
