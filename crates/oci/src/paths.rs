//! URL paths of the distribution API, built in one place for the server's
//! `Location` headers and the client's requests.

use crate::digest::Digest;
use crate::name::RepositoryName;

/// `/v2/`
pub fn base() -> &'static str {
    "/v2/"
}

/// `/v2/<name>/manifests/<reference>` (a tag or digest string).
pub fn manifest(name: &RepositoryName, reference: &str) -> String {
    format!("/v2/{name}/manifests/{reference}")
}

/// `/v2/<name>/blobs/<digest>`
pub fn blob(name: &RepositoryName, digest: &Digest) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

/// `/v2/<name>/blobs/uploads/` (start an upload)
pub fn uploads(name: &RepositoryName) -> String {
    format!("/v2/{name}/blobs/uploads/")
}

/// `/v2/<name>/blobs/uploads/<id>` (an upload session)
pub fn upload(name: &RepositoryName, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// `/v2/<name>/tags/list`
pub fn tags(name: &RepositoryName) -> String {
    format!("/v2/{name}/tags/list")
}

/// `/v2/<name>/referrers/<digest>`
pub fn referrers(name: &RepositoryName, digest: &Digest) -> String {
    format!("/v2/{name}/referrers/{digest}")
}

/// `/v2/_catalog`
pub fn catalog() -> &'static str {
    "/v2/_catalog"
}
