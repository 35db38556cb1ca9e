//! The speculum registry client: references, auth, streaming copies between
//! registries and OCI layouts, manifest-only tag and promote, tag deletion
//! through the OCI, Docker Hub and Quay APIs, clean-up of stale tags, and the
//! Zuul intermediate-registry steps.
//!
//! Everything here is a library function so that the `speculum` binary stays
//! argument parsing and output. Blobs stream (memory does not grow with layer
//! size) and are verified on the way; manifests are moved as their exact
//! bytes, so digests never change.
//!
//! ```
//! use speculum_client::{ImageRef, Credentials};
//!
//! let r: ImageRef = "[::1]:5000/org/app:v1".parse().unwrap();
//! assert_eq!(r.to_string(), "[::1]:5000/org/app:v1");
//! let hub: ImageRef = "ubuntu".parse().unwrap();
//! assert_eq!(hub.to_string(), "docker.io/library/ubuntu");
//! let c = Credentials::parse("zuul:s3cret").unwrap();
//! assert!(!format!("{c:?}").contains("s3cret"));
//! ```
#![deny(missing_docs)]

mod auth;
mod copy;
mod error;
mod layout;
mod ops;
mod reference;
mod registry;
mod saas;
pub mod zuul;

pub use auth::{
    BearerToken, Challenge, Credentials, default_auth_files, lookup as lookup_credentials,
};
pub use copy::{
    BlobAction, BlobReport, CopyOptions, CopyReport, Endpoint, ManifestReport, NoProgress,
    PlatformSelection, PlatformSpec, Progress, copy,
};
pub use error::{Error, Result};
pub use layout::{Layout, REF_NAME};
pub use ops::{
    CleanEntry, CleanOptions, CleanReport, Deleted, InspectReport, TagApi, TagClients, clean,
    config_created, delete_tag, inspect, promote, tag,
};
pub use reference::{DOCKER_HUB, ImageRef, LayoutRef, RegistryRef, host_port, parse_repository};
pub use registry::{
    ByteStream, PullGrant, RawManifest, Registry, RegistryOptions, Scope, UploadStart,
    default_certs_dirs, http_client, install_crypto_provider, read_ca_file,
};
pub use saas::{DockerHub, HUB_URL, Quay, TagInfo};
