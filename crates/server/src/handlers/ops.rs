//! `/healthz` and `/metrics`: for load balancers and Prometheus, without
//! auth (they reveal no image data).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// `GET /healthz`: 200 while serving.
pub(crate) fn healthz() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        "ok\n",
    )
        .into_response()
}

/// `GET /metrics`: the Prometheus text format, or 404 when disabled.
pub(crate) fn metrics(state: &AppState) -> Response {
    if !state.serve_metrics() {
        return crate::not_found();
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics().render(),
    )
        .into_response()
}
