//! `GET /v2/`: the version check and the clients' auth probe.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Ctx;
use crate::error::ApiResult;

/// `GET /v2/`: 200 with `{}` (401 for wrong credentials; see
/// [`crate::AuthPolicy`] for why a challenge may come with the 200).
pub(crate) fn get(ctx: &Ctx) -> ApiResult<Response> {
    let challenge = ctx.state.auth().ping(&ctx.headers)?;
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response();
    if let Some(challenge) = challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    Ok(response)
}
