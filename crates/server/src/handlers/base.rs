//! `GET /v2/`: the version check and the clients' auth probe.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Ctx;
use crate::error::ApiResult;

/// `GET /v2/`: 200 with `{}` for valid credentials (or an open policy), 401
/// with a Bearer challenge otherwise; see [`crate::AuthPolicy`] for why
/// anonymous clients get 401 here.
pub(crate) async fn get(ctx: &Ctx) -> ApiResult<Response> {
    ctx.state.auth().ping(&ctx.headers).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response())
}
