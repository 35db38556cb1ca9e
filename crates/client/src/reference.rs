//! Image references as users type them.
//!
//! A registry reference follows Docker's normalisation, so that `ubuntu`,
//! `docker.io/ubuntu` and `docker.io/library/ubuntu:latest` all name the same
//! image, and a first component that looks like a host (`a.b`, `a:5000`,
//! `localhost`, `[::1]:5000`) names the registry. `oci:DIR[:TAG]` names an OCI
//! image layout on disk, so images move in and out of registries with no
//! daemon. A `docker://` prefix is accepted and ignored.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use speculum_oci::{Digest, RepositoryName, Tag};

use crate::error::{Error, Result};

/// The registry that unqualified names belong to.
pub const DOCKER_HUB: &str = "docker.io";

/// Transports other tools know and speculum does not, named in errors.
const OTHER_TRANSPORTS: [&str; 6] = [
    "docker-archive",
    "oci-archive",
    "containers-storage",
    "dir",
    "docker-daemon",
    "sif",
];

/// An image (or repository) in a registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// `host`, `host:port` or `[v6]:port`, normalised (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository inside the registry.
    pub repository: RepositoryName,
    /// The tag, if one was given.
    pub tag: Option<Tag>,
    /// The digest, if one was given.
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// A reference from parts.
    pub fn new(registry: &str, repository: RepositoryName, tag: Option<Tag>) -> RegistryRef {
        RegistryRef {
            registry: registry.to_string(),
            repository,
            tag,
            digest: None,
        }
    }

    /// What goes after `/manifests/`: the digest if given, else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The tag, or `latest` when none (and no digest) was given.
    pub fn tag_or_latest(&self) -> Option<String> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: Tag) -> RegistryRef {
        RegistryRef {
            tag: Some(tag),
            digest: None,
            ..self.clone()
        }
    }

    /// Whether this names Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// The repository as the registry's `tags`/`manifests` paths spell it, with
    /// the registry in front: `host:port/repo`.
    pub fn repository_string(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An OCI image layout directory, with an optional tag
/// (`org.opencontainers.image.ref.name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayoutRef {
    /// The layout directory.
    pub dir: PathBuf,
    /// The tag inside the layout.
    pub tag: Option<String>,
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display().to_string();
        write!(f, "oci:{dir}")?;
        match &self.tag {
            Some(t) => write!(f, ":{t}"),
            // `oci:a:b` reads as directory `a`, tag `b`: a directory with a
            // colon is printed with an empty tag (`oci:a:b:`), which parses
            // back to the same directory.
            None if dir.contains(':') => f.write_str(":"),
            None => Ok(()),
        }
    }
}

/// Where an image lives: a registry or a layout on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// In a registry.
    Registry(RegistryRef),
    /// In an OCI image layout.
    Layout(LayoutRef),
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::Layout(l) => l.fmt(f),
        }
    }
}

fn bad(input: &str, reason: impl Into<String>) -> Error {
    Error::InvalidReference {
        input: input.to_string(),
        reason: reason.into(),
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(input: &str) -> Result<ImageRef> {
        if let Some(rest) = input.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(bad(input, "an oci: reference needs a directory"));
            }
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => {
                    if t.is_empty() {
                        (d, None)
                    } else {
                        t.parse::<Tag>().map_err(|e| bad(input, e.to_string()))?;
                        (d, Some(t.to_string()))
                    }
                }
                _ => (rest, None),
            };
            return Ok(ImageRef::Layout(LayoutRef {
                dir: PathBuf::from(dir),
                tag,
            }));
        }
        Ok(ImageRef::Registry(input.parse()?))
    }
}

/// Whether the first path component names a registry host.
fn looks_like_host(c: &str) -> bool {
    c.contains('.') || c.contains(':') || c == "localhost" || c.starts_with('[')
}

fn validate_host(input: &str, host: &str) -> Result<()> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(input, "unterminated IPv6 literal"))?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad(input, format!("invalid IPv6 address {v6:?}")))?;
        match after {
            "" => (v6, None),
            p => (
                v6,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(input, "junk after IPv6 literal"))?,
                ),
            ),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        p.parse::<u16>()
            .map_err(|_| bad(input, format!("invalid port {p:?}")))?;
    }
    if !host.starts_with('[')
        && (name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
    {
        return Err(bad(input, format!("invalid registry host {name:?}")));
    }
    Ok(())
}

impl FromStr for RegistryRef {
    type Err = Error;

    fn from_str(input: &str) -> Result<RegistryRef> {
        let s = input.strip_prefix("docker://").unwrap_or(input);
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(bad(input, format!("unknown transport {scheme:?}")));
        }
        if let Some((t, _)) = s.split_once(':')
            && OTHER_TRANSPORTS.contains(&t)
        {
            return Err(bad(
                input,
                format!("unsupported transport {t:?} (use docker:// or oci:)"),
            ));
        }
        if s.is_empty() {
            return Err(bad(input, "empty reference"));
        }
        let (name_tag, digest) = match s.rsplit_once('@') {
            Some((n, d)) => (
                n,
                Some(d.parse::<Digest>().map_err(|e| bad(input, e.to_string()))?),
            ),
            None => (s, None),
        };
        let (registry, rest) = match name_tag.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => {
                validate_host(input, first)?;
                (first.to_string(), rest)
            }
            _ => (DOCKER_HUB.to_string(), name_tag),
        };
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (
                r,
                Some(t.parse::<Tag>().map_err(|e| bad(input, e.to_string()))?),
            ),
            _ => (rest, None),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                DOCKER_HUB.to_string()
            }
            _ => registry,
        };
        let repo = if registry == DOCKER_HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        };
        let repository: RepositoryName = repo
            .parse()
            .map_err(|e: speculum_oci::Error| bad(input, e.to_string()))?;
        Ok(RegistryRef {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Parse a repository (no tag, no digest), as `tags`, `clean` and `promote` take.
pub fn parse_repository(input: &str) -> Result<RegistryRef> {
    let r: RegistryRef = input.parse()?;
    if r.tag.is_some() || r.digest.is_some() {
        return Err(bad(input, "expected a repository without a tag or digest"));
    }
    Ok(r)
}

/// `host:port` for a URL authority, bracketing a bare IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match s.parse::<ImageRef>().unwrap() {
            ImageRef::Registry(r) => r,
            ImageRef::Layout(l) => panic!("{l} is a layout"),
        }
    }

    #[test]
    fn docker_normalisation() {
        let r = reg("ubuntu");
        assert_eq!(r.to_string(), "docker.io/library/ubuntu");
        assert_eq!(r.reference(), "latest");
        assert_eq!(
            reg("docker.io/ubuntu:22.04").to_string(),
            "docker.io/library/ubuntu:22.04"
        );
        assert_eq!(
            reg("index.docker.io/myorg/app").to_string(),
            "docker.io/myorg/app"
        );
        assert_eq!(
            reg("docker://myorg/app:1").to_string(),
            "docker.io/myorg/app:1"
        );
        assert_eq!(reg("quay.io/org/app:v1").registry, "quay.io");
        assert_eq!(reg("localhost/app").registry, "localhost");
    }

    #[test]
    fn hosts_ports_digests_ipv6() {
        let d = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
        let r = reg(&format!("127.0.0.1:5000/a/b:t@{d}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository.as_str(), "a/b");
        assert_eq!(r.tag.as_ref().map(|t| t.as_str()), Some("t"));
        assert_eq!(r.reference(), d);
        let r = reg("[::1]:5000/repo:tag");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.repository.as_str(), "repo");
        assert_eq!(r.to_string(), "[::1]:5000/repo:tag");
        let r = reg("[fe80::1]/x");
        assert_eq!(r.registry, "[fe80::1]");
        assert_eq!(reg("host:5000/app").tag, None);
        assert_eq!(host_port("::1", 5000), "[::1]:5000");
        assert_eq!(host_port("10.0.0.1", 5000), "10.0.0.1:5000");
    }

    #[test]
    fn layouts() {
        let ImageRef::Layout(l) = "oci:/tmp/x:v1".parse().unwrap() else {
            panic!()
        };
        assert_eq!(l.dir, PathBuf::from("/tmp/x"));
        assert_eq!(l.tag.as_deref(), Some("v1"));
        let ImageRef::Layout(l) = "oci:rel/dir".parse().unwrap() else {
            panic!()
        };
        assert_eq!(l.tag, None);
        assert_eq!(l.dir, PathBuf::from("rel/dir"));
        // Found by tests/props.rs: a directory with a colon and no tag must
        // print as something that parses back to it, not to a tag.
        let layout: ImageRef = "oci:dir:5000:".parse().unwrap();
        assert_eq!(layout.to_string(), "oci:dir:5000:");
        assert_eq!(layout.to_string().parse::<ImageRef>().unwrap(), layout);
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "Upper/case",
            "http://x/y",
            "docker-archive:/tmp/x.tar",
            "[::1:5000/x",
            "[zz]:5000/x",
            "host:port/x",
            "a/b:bad/tag",
            "x@sha256:abc",
            "oci:",
            "a:b:c",
        ] {
            assert!(
                bad.parse::<ImageRef>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(parse_repository("a/b:t").is_err());
        assert!(parse_repository("localhost:5000/a/b").is_ok());
    }
}
