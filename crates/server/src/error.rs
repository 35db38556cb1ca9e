//! The one place where failures become HTTP responses.
//!
//! Every handler returns [`ApiError`] on failure. A client's mistake carries a
//! spec error code and its status; an internal failure is logged here with its
//! cause and answered with a bare 500 whose body says nothing about the cause.

use std::fmt;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use speculum_oci::{ErrorBody, ErrorCode, ErrorEntry};

/// What a client is told when the registry's storage is full.
pub(crate) const STORAGE_FULL_MESSAGE: &str =
    "the registry's storage is full; retry once the operator has freed space";

/// An error answered to a client as a spec error body:
/// `{"errors":[{"code","message","detail"}]}`.
///
/// Boxed: it travels through every handler's `Result`, which stays small.
#[derive(Debug)]
pub struct ApiError(Box<Parts>);

#[derive(Debug)]
struct Parts {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: Option<serde_json::Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The internal cause, logged and never sent.
    cause: Option<String>,
}

impl ApiError {
    /// An error with a spec code, its status and its default message.
    pub fn new(code: ErrorCode) -> ApiError {
        ApiError(Box::new(Parts {
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST),
            code: code.as_str(),
            message: code.default_message().to_string(),
            detail: None,
            headers: Vec::new(),
            cause: None,
        }))
    }

    /// An error with a code string that [`ErrorCode`] does not list (such as
    /// `PAGINATION_NUMBER_INVALID`) and an explicit status.
    pub(crate) fn custom(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError(Box::new(Parts {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
            cause: None,
        }))
    }

    /// An internal failure: logged with `cause`, answered with a bare 500.
    pub fn internal(cause: impl fmt::Display) -> ApiError {
        ApiError(Box::new(Parts {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "UNKNOWN",
            message: "internal server error".to_string(),
            detail: None,
            headers: Vec::new(),
            cause: Some(cause.to_string()),
        }))
    }

    /// The storage is out of space: 507 Insufficient Storage (RFC 4918),
    /// logged for the operator with `cause`, who must free space; the
    /// client is told plainly, since it cannot fix it and should not blame
    /// its image.
    ///
    /// The code is `UNKNOWN`, distribution's code for a failure on the
    /// registry's side. The spec's table has no code for this (every code in
    /// it names a client mistake, and none fits: `SIZE_INVALID` or `DENIED`
    /// would send clients and operators looking at the wrong thing); a new
    /// code would buy nothing, since Docker and containers/image read any
    /// code they do not know as `UNKNOWN` anyway, and could trip strict
    /// parsers. The status and the message carry the meaning.
    pub fn storage_full(cause: impl fmt::Display) -> ApiError {
        ApiError(Box::new(Parts {
            status: StatusCode::INSUFFICIENT_STORAGE,
            code: "UNKNOWN",
            message: STORAGE_FULL_MESSAGE.to_string(),
            detail: None,
            headers: Vec::new(),
            cause: Some(cause.to_string()),
        }))
    }

    /// Replace the human message.
    pub fn message(mut self, message: impl Into<String>) -> ApiError {
        self.0.message = message.into();
        self
    }

    /// Attach structured detail.
    pub fn detail(mut self, detail: serde_json::Value) -> ApiError {
        self.0.detail = Some(detail);
        self
    }

    /// Add a response header (a challenge, a `Content-Range`).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.0.headers.push((name, value));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The spec error code string.
    pub fn code(&self) -> &'static str {
        self.0.code
    }

    /// The structured detail, if any.
    #[cfg(test)]
    pub(crate) fn detail_value(&self) -> Option<&serde_json::Value> {
        self.0.detail.as_ref()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.0.code,
            self.0.status.as_u16(),
            self.0.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<speculum_storage::Error> for ApiError {
    fn from(err: speculum_storage::Error) -> ApiError {
        match err {
            speculum_storage::Error::Client {
                code,
                message,
                detail,
            } => {
                let mut e = ApiError::new(code).message(message);
                e.0.detail = detail;
                e
            }
            speculum_storage::Error::StorageFull(cause) => ApiError::storage_full(cause),
            other => ApiError::internal(other),
        }
    }
}

impl From<speculum_oci::Error> for ApiError {
    fn from(err: speculum_oci::Error) -> ApiError {
        ApiError::new(err.code()).message(err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        if let Some(cause) = &this.cause
            && this.status == StatusCode::INSUFFICIENT_STORAGE
        {
            // The one line for the operator; the storage layer logs nothing.
            tracing::error!(cause = %cause, "storage is full: push refused; free space to recover");
        } else if let Some(cause) = &this.cause {
            tracing::error!(cause = %cause, "internal error");
        } else if this.status.is_client_error() {
            tracing::debug!(code = this.code, status = this.status.as_u16(), message = %this.message, "client error");
        }
        let body = ErrorBody {
            errors: vec![ErrorEntry {
                code: this.code.to_string(),
                message: this.message,
                detail: this.detail,
            }],
        };
        // Serializing a struct of strings and JSON values cannot fail; fall
        // back to an empty object rather than panic if it ever did.
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (this.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in this.headers {
            headers.append(name, value);
        }
        response
    }
}

/// A result whose error is an [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_full_is_507_with_a_plain_message() {
        let cause = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let e = ApiError::from(speculum_storage::Error::from(cause));
        assert_eq!(e.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.code(), "UNKNOWN");
        assert!(e.to_string().contains("storage is full"), "{e}");
        let other = ApiError::from(speculum_storage::Error::from(std::io::Error::other("x")));
        assert_eq!(other.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
