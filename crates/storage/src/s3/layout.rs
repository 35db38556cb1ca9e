//! Where each thing lives in the bucket: the one place that names objects.
//!
//! Under the configured prefix `P`:
//!
//! ```text
//! P/data/<uuid>                          blob content (an upload's, or a small blob's)
//! P/blobs/<alg>/<hex>/<size>.<uuid>      empty: "blob <alg>:<hex> is data/<uuid>, <size> bytes"
//! P/stamps/<alg>/<hex>                   the blob's time (Unix seconds), set by touch_blob
//! P/uploads/<id>/info                    an upload session's state (JSON)
//! P/uploads/<id>/tail.<gen>              its bytes not yet in a multipart part (< 5 MiB)
//! P/repos/<repo>/_<table>/<key>          metadata: blobs, manifests, tags
//! P/repos/<repo>/_referrers/<digest>/<key>
//! P/repo-names/<repo>                    empty: the repository has (or had) metadata
//! P/collector                            the garbage collector's lease (JSON)
//! ```
//!
//! A blob is an *entry* naming its data object rather than the data
//! itself, because an upload's multipart target must be chosen before its
//! digest is known, and S3 has no cheap rename: committing writes an entry
//! instead of copying gigabytes. Two processes committing the same blob at
//! once leave two entries, both valid and deleted together, so no data
//! object is ever orphaned by the race. Listing `blobs/` enumerates every
//! blob and the data it owns in one paginated request.
//!
//! Repository name components start with a letter or digit, so the `_`
//! table directories never collide with a repository's own path.

use object_store::path::Path;
use speculum_oci::{Digest, RepositoryName};

use crate::backend::{Table, UploadId};

/// Object names under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    prefix: String,
}

/// A blob entry, parsed back from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub digest: Digest,
    pub size: u64,
    pub data: String,
}

impl Layout {
    /// `prefix` without leading or trailing slashes; empty for the bucket's root.
    pub fn new(prefix: &str) -> Layout {
        let prefix = prefix.trim_matches('/');
        Layout {
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        }
    }

    fn path(&self, rest: &str) -> Path {
        Path::from(format!("{}{rest}", self.prefix))
    }

    /// A name relative to the prefix (what listings are parsed from).
    pub fn relative<'a>(&self, path: &'a Path) -> Option<&'a str> {
        path.as_ref().strip_prefix(self.prefix.as_str())
    }

    pub fn data(&self, id: &str) -> Path {
        self.path(&format!("data/{id}"))
    }

    pub fn data_dir(&self) -> Path {
        self.path("data")
    }

    pub fn entries_dir(&self) -> Path {
        self.path("blobs")
    }

    pub fn entries_of(&self, digest: &Digest) -> Path {
        self.path(&format!(
            "blobs/{}/{}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    pub fn entry(&self, digest: &Digest, size: u64, data: &str) -> Path {
        self.path(&format!(
            "blobs/{}/{}/{size}.{data}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Parse `blobs/<alg>/<hex>/<size>.<uuid>` back into an [`Entry`].
    pub fn parse_entry(&self, path: &Path) -> Option<Entry> {
        let rest = self.relative(path)?.strip_prefix("blobs/")?;
        let mut parts = rest.split('/');
        let (alg, hex, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let digest: Digest = format!("{alg}:{hex}").parse().ok()?;
        let (size, data) = name.split_once('.')?;
        Some(Entry {
            digest,
            size: size.parse().ok()?,
            data: data.to_owned(),
        })
    }

    pub fn stamp(&self, digest: &Digest) -> Path {
        self.path(&format!(
            "stamps/{}/{}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    pub fn uploads_dir(&self) -> Path {
        self.path("uploads")
    }

    pub fn upload_info(&self, id: &UploadId) -> Path {
        self.path(&format!("uploads/{id}/info"))
    }

    pub fn upload_tail(&self, id: &UploadId, generation: u64) -> Path {
        self.path(&format!("uploads/{id}/tail.{generation}"))
    }

    pub fn table_dir(&self, table: Table<'_>) -> Path {
        let repo = table.repo();
        self.path(&match table {
            Table::Blobs(_) => format!("repos/{repo}/_blobs"),
            Table::Manifests(_) => format!("repos/{repo}/_manifests"),
            Table::Tags(_) => format!("repos/{repo}/_tags"),
            Table::Referrers(_, subject) => format!(
                "repos/{repo}/_referrers/{}-{}",
                subject.algorithm().as_str(),
                subject.hex()
            ),
        })
    }

    pub fn table_key(&self, table: Table<'_>, key: &str) -> Path {
        self.table_dir(table).join(key)
    }

    pub fn repo_names_dir(&self) -> Path {
        self.path("repo-names")
    }

    pub fn repo_name(&self, repo: &RepositoryName) -> Path {
        self.path(&format!("repo-names/{repo}"))
    }

    pub fn collector(&self) -> Path {
        self.path("collector")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let layout = Layout::new("/site/registry/");
        let d = Digest::sha256(b"x");
        let path = layout.entry(&d, 42, "0b9a");
        assert_eq!(
            path.as_ref(),
            format!("site/registry/blobs/sha256/{}/42.0b9a", d.hex())
        );
        let entry = layout.parse_entry(&path).expect("an entry");
        assert_eq!(entry.digest, d);
        assert_eq!(entry.size, 42);
        assert_eq!(entry.data, "0b9a");
        assert_eq!(layout.parse_entry(&layout.data("0b9a")), None);
    }

    #[test]
    fn empty_prefix_is_the_bucket_root() {
        let layout = Layout::new("");
        assert_eq!(layout.collector().as_ref(), "collector");
        assert_eq!(
            layout
                .repo_name(&"org/app".parse().expect("a name"))
                .as_ref(),
            "repo-names/org/app"
        );
    }
}
