//! Parsing request paths and resolving namespaces.
//!
//! Repository names contain slashes, so the router cannot split them out with
//! a pattern. The raw path (never a percent-decoded one, which could differ
//! from what is checked) is split on its *last* endpoint marker, and the name
//! that precedes it is checked against the spec grammar before anything else
//! happens. `%2e%2e`, `..` and `//` all fail that grammar.
//!
//! Namespaces: images from docker.io are stored un-prefixed, images from any
//! other registry under their host. `docker.io/x` names the same repository
//! as `x`, and the `ns` query parameter that containerd sends (`?ns=quay.io`)
//! selects the namespace: `ns=quay.io` turns `org/app` into `quay.io/org/app`.
//! A name that already starts with the namespace (containerd configured with
//! `override_path` and a `/v2/quay.io` path prefix) is not prefixed twice.

use axum::http::{StatusCode, Uri};
use speculum_oci::{ErrorCode, RepositoryName};

use crate::error::{ApiError, ApiResult};

/// The endpoint a path names, with its raw (still unchecked) parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: &'a str },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: &'a str, reference: &'a str },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: &'a str, digest: &'a str },
    /// `/v2/<name>/blobs/uploads/`
    Uploads { name: &'a str },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: &'a str, id: &'a str },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: &'a str, digest: &'a str },
}

impl<'a> Route<'a> {
    /// Parse a raw request path. `None` means no such endpoint (404).
    pub(crate) fn parse(path: &'a str) -> Option<Route<'a>> {
        if path == "/v2" || path == "/v2/" {
            return Some(Route::Base);
        }
        let rest = path.strip_prefix("/v2/")?;
        if rest == "_catalog" {
            return Some(Route::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Route::Tags { name });
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Some(Route::Uploads { name });
        }
        let (head, last) = rest.rsplit_once('/')?;
        let (name, marker) = head.rsplit_once('/')?;
        match marker {
            "manifests" => Some(Route::Manifest {
                name,
                reference: last,
            }),
            "referrers" => Some(Route::Referrers { name, digest: last }),
            "blobs" => Some(Route::Blob { name, digest: last }),
            "uploads" => {
                let name = name.strip_suffix("/blobs")?;
                Some(Route::Upload { name, id: last })
            }
            _ => None,
        }
    }
}

/// The metrics label of a path: a fixed word per endpoint, never the
/// repository name (which would make the label set unbounded).
pub(crate) fn label(path: &str) -> &'static str {
    match path {
        "/auth/token" => return "token",
        "/healthz" => return "healthz",
        "/metrics" => return "metrics",
        speculum_oci::speculative::REGISTRATION_PATH => return "speculative",
        _ => {}
    }
    match Route::parse(path) {
        Some(Route::Base) => "base",
        Some(Route::Catalog) => "catalog",
        Some(Route::Tags { .. }) => "tags",
        Some(Route::Manifest { .. }) => "manifest",
        Some(Route::Blob { .. }) => "blob",
        Some(Route::Uploads { .. }) => "uploads",
        Some(Route::Upload { .. }) => "upload",
        Some(Route::Referrers { .. }) => "referrers",
        None => "other",
    }
}

/// The query parameters of a request: [`Query::get`] gives the last value
/// of a key, [`Query::all`] every value in order (a manifest push takes
/// several `tag`s).
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    /// Parse the query string of `uri`; a malformed one is a client error.
    pub(crate) fn from_uri(uri: &Uri) -> ApiResult<Query> {
        if uri.query().is_none() {
            return Ok(Query::default());
        }
        // axum's `Query` extractor decodes `application/x-www-form-urlencoded`.
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).map_err(|_| {
                ApiError::custom(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED",
                    "malformed query string",
                )
            })?;
        Ok(Query(pairs))
    }

    /// The value of `key`, if given (the last one when repeated).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in the order given.
    pub(crate) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every value of `key` in `uri`'s query string, in order (the token
/// endpoint takes several `scope`s). A malformed query gives none.
pub(crate) fn query_all(uri: &Uri, key: &str) -> Vec<String> {
    if uri.query().is_none() {
        return Vec::new();
    }
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|axum::extract::Query(pairs)| {
            pairs
                .into_iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default()
}

/// Registry hosts that mean Docker Hub.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A repository as the client named it and as it is stored.
#[derive(Debug, Clone)]
pub(crate) struct Repo {
    /// The name as it appeared in the path (valid against the grammar); used
    /// to build `Location` headers the client can follow.
    pub(crate) sent: RepositoryName,
    /// The repository in storage, after namespace resolution.
    pub(crate) stored: RepositoryName,
    /// The `ns` parameter as given (validated), echoed back in `Location`s.
    pub(crate) ns: Option<String>,
}

impl Repo {
    /// Check `raw` against the grammar and resolve it in the namespace that
    /// `ns` selects.
    pub(crate) fn resolve(raw: &str, ns: Option<&str>) -> ApiResult<Repo> {
        let sent: RepositoryName = raw.parse()?;
        let ns = match ns {
            None | Some("") => None,
            Some(ns) => Some(valid_namespace(ns)?),
        };
        let unprefixed = sent
            .as_str()
            .strip_prefix("docker.io/")
            .unwrap_or(sent.as_str());
        let stored = match ns.as_deref() {
            Some(host) if !DOCKER_HUB.contains(&host) => {
                let already = unprefixed
                    .strip_prefix(host)
                    .is_some_and(|r| r.starts_with('/'));
                if already {
                    unprefixed.to_string()
                } else {
                    format!("{host}/{unprefixed}")
                }
            }
            _ => unprefixed.to_string(),
        };
        let stored: RepositoryName = stored.parse()?;
        Ok(Repo { sent, stored, ns })
    }

    /// `path` with the `ns` parameter appended when the request had one, so a
    /// client following a `Location` stays in its namespace.
    pub(crate) fn with_ns(&self, path: String) -> String {
        match &self.ns {
            Some(ns) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}ns={ns}")
            }
            None => path,
        }
    }
}

/// A namespace is a registry host name: lowercase letters, digits, `.`, `-`.
/// (A host with a port cannot prefix a valid repository name anyway.)
fn valid_namespace(ns: &str) -> ApiResult<String> {
    let ns = ns.to_ascii_lowercase();
    let ok = !ns.is_empty()
        && ns.len() <= 253
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if ok {
        Ok(ns)
    } else {
        Err(ApiError::new(ErrorCode::NameInvalid).message(format!("invalid namespace {ns:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v2/"), Some(Route::Base));
        assert_eq!(Route::parse("/v2"), Some(Route::Base));
        assert_eq!(Route::parse("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(
            Route::parse("/v2/a/b/tags/list"),
            Some(Route::Tags { name: "a/b" })
        );
        assert_eq!(
            Route::parse("/v2/a/manifests/b/manifests/latest"),
            Some(Route::Manifest {
                name: "a/manifests/b",
                reference: "latest"
            })
        );
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/"),
            Some(Route::Uploads { name: "a/b" })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads"),
            Some(Route::Uploads { name: "a" })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/xyz"),
            Some(Route::Upload {
                name: "a",
                id: "xyz"
            })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/sha256:00"),
            Some(Route::Blob {
                name: "a",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            Route::parse("/v2/x/y/referrers/sha256:00"),
            Some(Route::Referrers {
                name: "x/y",
                digest: "sha256:00"
            })
        );
        assert_eq!(Route::parse("/v2/a"), None);
        assert_eq!(Route::parse("/v2/a/other/x"), None);
        assert_eq!(Route::parse("/v3/a/manifests/x"), None);
        assert_eq!(Route::parse("/"), None);
    }

    #[test]
    fn namespaces() {
        let r = Repo::resolve("library/x", None).unwrap();
        assert_eq!(r.stored.as_str(), "library/x");
        let r = Repo::resolve("docker.io/library/x", None).unwrap();
        assert_eq!(r.stored.as_str(), "library/x");
        assert_eq!(r.sent.as_str(), "docker.io/library/x");
        let r = Repo::resolve("org/app", Some("quay.io")).unwrap();
        assert_eq!(r.stored.as_str(), "quay.io/org/app");
        assert_eq!(
            r.with_ns("/v2/org/app/blobs/uploads/1".into()),
            "/v2/org/app/blobs/uploads/1?ns=quay.io"
        );
        let r = Repo::resolve("quay.io/org/app", Some("quay.io")).unwrap();
        assert_eq!(r.stored.as_str(), "quay.io/org/app");
        let r = Repo::resolve("library/x", Some("docker.io")).unwrap();
        assert_eq!(r.stored.as_str(), "library/x");
        let r = Repo::resolve("docker.io/library/x", Some("docker.io")).unwrap();
        assert_eq!(r.stored.as_str(), "library/x");
        for bad in ["%2e%2e/x", "../x", "a//b", "/a", "A"] {
            assert!(Repo::resolve(bad, None).is_err(), "{bad}");
        }
        assert!(Repo::resolve("x", Some("bad/ns")).is_err());
        assert!(Repo::resolve("x", Some("localhost:5000")).is_err());
    }
}
