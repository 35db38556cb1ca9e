//! `GET /v2/<name>/referrers/<digest>`: the manifests whose subject is a digest.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use speculum_oci::{ErrorCode, media_type};

use super::{Ctx, OCI_FILTERS_APPLIED, parse_digest};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::route::Repo;

/// `GET /v2/<name>/referrers/<digest>?artifactType=`: always an OCI index
/// (empty when nothing refers to the digest, even in an unknown repository).
pub(crate) async fn list(ctx: &Ctx, repo: &Repo, digest: &str) -> ApiResult<Response> {
    ctx.authorize(repo, Action::Pull).await?;
    let digest = parse_digest(digest)?;
    let artifact_type = ctx.query.get("artifactType").filter(|t| !t.is_empty());
    let manifests = match ctx
        .state
        .registry()
        .referrers(&repo.stored, &digest, artifact_type)
        .await
    {
        Ok(list) => list,
        Err(speculum_storage::Error::Client {
            code: ErrorCode::NameUnknown | ErrorCode::ManifestUnknown,
            ..
        }) => Vec::new(),
        Err(e) => return Err(ApiError::from(e)),
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    let body = serde_json::to_vec(&index).map_err(ApiError::internal)?;
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(media_type::OCI_INDEX),
        )],
        body,
    )
        .into_response();
    if artifact_type.is_some() {
        response.headers_mut().insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
