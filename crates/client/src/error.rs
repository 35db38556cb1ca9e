//! The one error type of the client library.
//!
//! Every message is one lowercase line that names what failed; the binary
//! prefixes it with the image it was working on.

use std::path::PathBuf;

use speculum_oci::Digest;

/// Everything that can go wrong while talking to registries or layouts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image reference that cannot be parsed.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference {
        /// What was given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A value from a user (flag, vars file, credentials) that is unusable.
    #[error("{0}")]
    InvalidInput(String),
    /// A protocol value (digest, name, manifest) that failed validation.
    #[error(transparent)]
    Oci(#[from] speculum_oci::Error),
    /// The registry answered with an error status.
    #[error("{registry} answered {status} to {method} {path}: {detail}")]
    Registry {
        /// host[:port] of the registry.
        registry: String,
        /// The request method.
        method: String,
        /// The request path (no query string, so no secrets).
        path: String,
        /// The HTTP status.
        status: u16,
        /// The spec error codes and messages, or a summary of the body.
        detail: String,
    },
    /// Authentication failed or no credentials were available.
    #[error("authentication to {registry} failed: {reason}")]
    Auth {
        /// host[:port] of the registry or API.
        registry: String,
        /// Why.
        reason: String,
    },
    /// The connection failed (after retries).
    #[error("cannot reach {registry}: {source}")]
    Transport {
        /// host[:port] of the registry.
        registry: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// Content did not hash to the digest that names it.
    #[error("content of {expected} does not match its digest (got {actual})")]
    DigestMismatch {
        /// The digest the content should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// Content had another size than its descriptor says (a truncated stream).
    #[error("{digest} should be {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// The size in the descriptor.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// Something that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The registry refuses an operation that speculum will not work around.
    #[error("{0}")]
    Unsupported(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS setup (CA files) is unusable.
    #[error("tls setup: {0}")]
    Tls(String),
    /// A registry has no token service, so pull access cannot be handed to
    /// someone else without its password (the lazy pull refuses).
    #[error(
        "{registry} offers only HTTP Basic auth, no token service: the lazy method would have to give its password to the buildset registry, so it is refused (the copy method works)"
    )]
    NoTokenService {
        /// host[:port] of the registry.
        registry: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn input(msg: impl Into<String>) -> Error {
        Error::InvalidInput(msg.into())
    }

    /// Whether a retry may succeed: connection errors, 5xx and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Registry { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status, when the error is a registry answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Registry { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fail with [`Error::DigestMismatch`] unless `bytes` hash to `expected`.
pub(crate) fn verify_digest(expected: &Digest, bytes: &[u8]) -> Result<()> {
    let actual = Digest::of(expected.algorithm(), bytes);
    if actual != *expected {
        return Err(Error::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}
