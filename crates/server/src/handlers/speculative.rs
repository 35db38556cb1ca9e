//! `PUT /speculum/v1/speculative`: register speculative images (buildset
//! registries only; see the `speculative` module). Outside `/v2/`, which
//! belongs to the distribution API.
//!
//! Only the push user may register (HTTP Basic, or a token issued to it),
//! since a registration decides what every pull of those names gets. The
//! body is checked whole before anything changes; a bad one is a 400 with a
//! spec-style error naming the field, never a 500.

use axum::Json;
use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use speculum_oci::speculative::{MAX_REGISTRATION_SIZE, Registration, RegistrationError};

use super::{Ctx, read_limited, refuse_body, unsupported};
use crate::error::{ApiError, ApiResult};

/// The error code of a registration that cannot be used, when no spec code
/// fits better.
pub(crate) const REGISTRATION_INVALID: &str = "REGISTRATION_INVALID";

/// `PUT`: check who asks, read and validate the body, register.
pub(crate) async fn put(ctx: &Ctx, body: Body) -> ApiResult<Response> {
    let Some(speculative) = ctx.state.speculative() else {
        refuse_body(ctx, body).await;
        return Ok(crate::not_found());
    };
    if ctx.method != Method::PUT {
        refuse_body(ctx, body).await;
        return Err(unsupported(&ctx.method));
    }
    if let Err(e) = ctx.state.auth().authorize_writer(&ctx.headers).await {
        refuse_body(ctx, body).await;
        return Err(e);
    }
    let bytes = read_limited(ctx, body, MAX_REGISTRATION_SIZE, too_large).await?;
    let registration: Registration = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::custom(
            StatusCode::BAD_REQUEST,
            REGISTRATION_INVALID,
            format!("the body is not a registration: {e}"),
        )
    })?;
    let valid = registration.validate().map_err(invalid)?;
    let answer = speculative.register(ctx.state.registry(), valid).await?;
    Ok(Json(answer).into_response())
}

fn too_large() -> ApiError {
    ApiError::custom(
        StatusCode::PAYLOAD_TOO_LARGE,
        "SIZE_INVALID",
        format!("a registration is at most {MAX_REGISTRATION_SIZE} bytes"),
    )
}

/// A validation failure: always a 400, with the spec code that fits.
fn invalid(e: RegistrationError) -> ApiError {
    let code = e.code.map_or(REGISTRATION_INVALID, |c| c.as_str());
    ApiError::custom(StatusCode::BAD_REQUEST, code, e.to_string())
        .detail(json!({ "field": e.field }))
}
