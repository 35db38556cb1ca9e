//! The OCI distribution protocol model shared by speculum's registry and
//! helper: digests, repository names and tags, media types, manifest
//! validation, spec error codes, URL paths, and the speculative-image
//! registration a buildset registry takes from the Zuul executor. It does no
//! I/O.
//!
//! ```
//! use speculum_oci::{Digest, RepositoryName, manifest, media_type};
//!
//! let name: RepositoryName = "quay.io/org/app".parse().unwrap();
//! assert!("../etc".parse::<RepositoryName>().is_err());
//!
//! let config = b"{}";
//! let body = format!(
//!     r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":2}},"layers":[]}}"#,
//!     media_type::OCI_MANIFEST,
//!     media_type::OCI_EMPTY,
//!     Digest::sha256(config),
//! );
//! let info = manifest::parse(None, body.as_bytes()).unwrap();
//! assert_eq!(info.required_blobs().count(), 1);
//! assert_eq!(speculum_oci::paths::tags(&name), "/v2/quay.io/org/app/tags/list");
//! ```

mod digest;
mod error;
pub mod manifest;
pub mod media_type;
mod name;
pub mod paths;
pub mod speculative;

pub use digest::{Algorithm, Digest, Digester};
pub use error::{Error, ErrorBody, ErrorCode, ErrorEntry, ErrorKind};
pub use manifest::{Descriptor, ManifestInfo, ManifestKind, Platform};
pub use name::{MAX_NAME_LEN, MAX_TAG_LEN, Reference, RepositoryName, Tag};
