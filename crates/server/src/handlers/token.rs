//! `GET /auth/token`: the Bearer token endpoint that the challenges point to.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiResult;
use crate::route::query_all;

/// `GET /auth/token?service=&scope=...&scope=...&account=`: HTTP Basic
/// checked, a token granting the subset of the scopes the caller may have.
pub(crate) async fn get(state: &AppState, headers: &HeaderMap, uri: &Uri) -> ApiResult<Response> {
    let scopes = query_all(uri, "scope");
    let answer = state.auth().issue_token(headers, &scopes).await?;
    let mut response = Json(answer).into_response();
    // Tokens must not be cached by proxies.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
