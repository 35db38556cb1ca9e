use std::fmt;

/// An error from parsing or validating protocol values.
///
/// The message is human text for logs and error details; the wire format of
/// registry errors is [`ErrorCode`] plus a message, built by the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// What kind of value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A digest that is malformed or uses an unsupported algorithm.
    Digest,
    /// A repository name that does not match the spec grammar.
    Name,
    /// A tag that does not match the spec grammar.
    Tag,
    /// A manifest that is not valid JSON or breaks its media type's rules.
    Manifest,
    /// A media type that the registry does not accept for manifests.
    MediaType,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// What kind of value was rejected.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The spec error code a registry answers with for this error.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            ErrorKind::Digest => ErrorCode::DigestInvalid,
            ErrorKind::Name => ErrorCode::NameInvalid,
            ErrorKind::Tag => ErrorCode::TagInvalid,
            ErrorKind::Manifest | ErrorKind::MediaType => ErrorCode::ManifestInvalid,
        }
    }
}

/// The error codes of the OCI distribution spec (and the two Docker extensions
/// that clients know), each with the HTTP status a registry answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Manifest references a manifest or blob unknown to registry.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown to registry.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// A tag that does not match the tag grammar (distribution's code, kept
    /// by the spec's error table for manifest pushes).
    TagInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// A range that cannot be satisfied (Docker's extension for uploads).
    RangeInvalid,
    /// Payload too large (used for manifests over the size limit).
    SizeTooLarge,
}

impl ErrorCode {
    /// The code as it appears in `{"errors":[{"code": ...}]}`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::SizeTooLarge => "SIZE_INVALID",
        }
    }

    /// The HTTP status code that goes with this error code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 404,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::TagInvalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::SizeTooLarge => 413,
        }
    }

    /// The default human message for this code.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::ManifestBlobUnknown => {
                "manifest references a manifest or blob unknown to registry"
            }
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnknown => "manifest unknown to registry",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::TagInvalid => "invalid tag",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::RangeInvalid => "requested range not satisfiable",
            ErrorCode::SizeTooLarge => "payload too large",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a spec error body.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorEntry {
    /// The spec error code, such as `BLOB_UNKNOWN`.
    pub code: String,
    /// A human message.
    #[serde(default)]
    pub message: String,
    /// Optional structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// The JSON body of a registry error: `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// The errors, usually one.
    pub errors: Vec<ErrorEntry>,
}

impl ErrorBody {
    /// A body with one error.
    pub fn new(
        code: ErrorCode,
        message: impl Into<String>,
        detail: Option<serde_json::Value>,
    ) -> Self {
        ErrorBody {
            errors: vec![ErrorEntry {
                code: code.as_str().to_string(),
                message: message.into(),
                detail,
            }],
        }
    }
}
