//! `GET /v2/<name>/tags/list`: a repository's tags, paginated.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use speculum_oci::paths;

use super::{Ctx, hv};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::route::Repo;

/// `GET /v2/<name>/tags/list?n=&last=`
pub(crate) async fn list(ctx: &Ctx, repo: &Repo) -> ApiResult<Response> {
    ctx.authorize(repo, Action::Pull).await?;
    let (n, last) = pagination(ctx)?;
    let page = ctx
        .state
        .registry()
        .list_tags(&repo.stored, last, n)
        .await?;
    let link = if page.more {
        page.items.last().map(|l| {
            next_link(
                &paths::tags(&repo.sent),
                l,
                n.unwrap_or(page.items.len()),
                repo.ns.as_deref(),
            )
        })
    } else {
        None
    };
    let body = serde_json::json!({ "name": repo.sent.as_str(), "tags": page.items });
    let mut response = Json(body).into_response();
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, hv(link)?);
    }
    Ok(response)
}

/// The `n` and `last` parameters. A non-numeric `n` is a client error.
pub(crate) fn pagination(ctx: &Ctx) -> ApiResult<(Option<usize>, Option<&str>)> {
    let n = match ctx.query.get("n") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            ApiError::custom(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("invalid number of results requested: {v:?}"),
            )
        })?),
    };
    let last = ctx.query.get("last").filter(|l| !l.is_empty());
    Ok((n, last))
}

/// `<path?last=X&n=N>; rel="next"` (names and tags need no escaping in a
/// query: their grammar allows only `[A-Za-z0-9._/-]`).
pub(crate) fn next_link(path: &str, last: &str, n: usize, ns: Option<&str>) -> String {
    let ns = ns.map(|ns| format!("&ns={ns}")).unwrap_or_default();
    format!("<{path}?last={last}&n={n}{ns}>; rel=\"next\"")
}
