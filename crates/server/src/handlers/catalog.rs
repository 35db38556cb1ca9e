//! `GET /v2/_catalog`: the repositories, paginated.

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{Ctx, hv};
use crate::error::ApiResult;
use crate::handlers::tags::{next_link, pagination};

/// `GET /v2/_catalog?n=&last=`
pub(crate) async fn list(ctx: &Ctx) -> ApiResult<Response> {
    ctx.authorize_catalog().await?;
    let (n, last) = pagination(ctx)?;
    let page = ctx.state.registry().catalog(last, n).await?;
    let link = if page.more {
        page.items
            .last()
            .map(|l| next_link("/v2/_catalog", l, n.unwrap_or(page.items.len()), None))
    } else {
        None
    };
    let mut response = Json(serde_json::json!({ "repositories": page.items })).into_response();
    if let Some(link) = link {
        response.headers_mut().insert(header::LINK, hv(link)?);
    }
    Ok(response)
}
