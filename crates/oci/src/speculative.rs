//! The speculative-image registration: what the Zuul executor tells a
//! buildset registry about the images of the changes ahead, so that the
//! registry can serve them lazily (issue 10).
//!
//! The executor holds the intermediate registry's (IR) credentials; the
//! buildset registry (BR) runs on a node that must never see them. So the
//! executor resolves every speculative tag to its manifest in the IR, and
//! sends the BR, in one `PUT` to [`REGISTRATION_PATH`]:
//!
//! - per source registry, a pull-only bearer token (never the password),
//!   the CA certificate to trust, if any, and whether it speaks plain HTTP;
//! - per image, the destination `repository:tag` in the BR, where it comes
//!   from in the IR, and the exact manifest bytes (an index with its child
//!   manifests), base64-encoded so that the digests stay what they are.
//!
//! Why the manifests travel in the registration instead of being fetched by
//! the BR later: the tag → digest binding is then fixed before the first job
//! runs. A late manifest fetch that failed would answer 404, and a client
//! configured with mirrors would fall back to the upstream image of the same
//! name: a silent wrong image. Blobs are content-addressed, so fetching them
//! late can fail, but never yield anything else.
//!
//! The types here are the wire format, shared by the client that writes it
//! and the server that reads it; [`Registration::validate`] is the one place
//! that checks it.
//!
//! ```
//! use speculum_oci::speculative::{EncodedManifest, ImageRegistration, Registration, SourceAccess, SourceImage};
//! use speculum_oci::{Digest, media_type};
//!
//! let config = b"{}";
//! let manifest = format!(
//!     r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":2}},"layers":[]}}"#,
//!     media_type::OCI_MANIFEST, media_type::OCI_EMPTY, Digest::sha256(config),
//! );
//! let registration = Registration {
//!     sources: vec![SourceAccess { registry: "ir.example:5000".into(), token: Some("t".into()), ca: None, insecure: false }],
//!     images: vec![ImageRegistration {
//!         repository: "org/app".into(),
//!         tag: "latest".into(),
//!         source: SourceImage { registry: "ir.example:5000".into(), repository: "org/app".into(), reference: "abc_latest".into() },
//!         manifest: EncodedManifest::new(media_type::OCI_MANIFEST, &Digest::sha256(manifest.as_bytes()), manifest.as_bytes()),
//!         children: vec![],
//!     }],
//! };
//! let valid = registration.validate().unwrap();
//! assert_eq!(valid.images[0].manifest.info.required_blobs().count(), 1);
//! ```

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::manifest::{self, ManifestInfo, ManifestKind};
use crate::{Digest, RepositoryName, Tag};

/// Where a buildset registry takes registrations (outside `/v2/`, which
/// belongs to the distribution API).
pub const REGISTRATION_PATH: &str = "/speculum/v1/speculative";

/// The largest registration body a registry reads: room for a few hundred
/// manifests of ordinary size.
pub const MAX_REGISTRATION_SIZE: usize = 64 * 1024 * 1024;

/// The most images one registration may name.
pub const MAX_IMAGES: usize = 1024;

/// The most child manifests one index may bring.
pub const MAX_CHILDREN: usize = 256;

/// The longest token accepted (tokens are signed claims, a few KiB at most).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A registration as sent (unknown fields refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// How to reach each source registry.
    pub sources: Vec<SourceAccess>,
    /// The images, in Zuul's order: for one destination, the last wins.
    pub images: Vec<ImageRegistration>,
}

/// How the BR reaches one source registry.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAccess {
    /// `host[:port]` (IPv6 literals bracketed), as in the artifacts' URLs.
    pub registry: String,
    /// A bearer token that grants pull on the source repositories; `None`
    /// for a registry that lets anyone pull.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM CA certificate(s) to trust for this registry.
    #[serde(default)]
    pub ca: Option<String>,
    /// Plain HTTP (loopback tests).
    #[serde(default)]
    pub insecure: bool,
}

impl fmt::Debug for SourceAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceAccess")
            .field("registry", &self.registry)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// One speculative image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRegistration {
    /// The repository in the BR (stored name: no `docker.io/`).
    pub repository: String,
    /// The tag in the BR.
    pub tag: String,
    /// Where the image is in the source registry.
    pub source: SourceImage,
    /// The manifest the tag points at.
    pub manifest: EncodedManifest,
    /// For an index: every child manifest it lists.
    #[serde(default)]
    pub children: Vec<EncodedManifest>,
}

/// An image in a source registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceImage {
    /// `host[:port]`: one of the registration's sources.
    pub registry: String,
    /// The repository there.
    pub repository: String,
    /// The tag or digest it was resolved from (for logs and reports).
    pub reference: String,
}

/// A manifest's exact bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodedManifest {
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// The bytes, standard base64.
    pub data: String,
}

impl EncodedManifest {
    /// Encode manifest bytes.
    pub fn new(media_type: &str, digest: &Digest, bytes: &[u8]) -> EncodedManifest {
        EncodedManifest {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// The BR's answer to a registration: one entry per image, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrationAnswer {
    /// What each image became.
    pub registered: Vec<RegisteredImage>,
}

/// What one registered image became.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisteredImage {
    /// The repository in the BR.
    pub repository: String,
    /// The tag in the BR.
    pub tag: String,
    /// The digest the tag is now bound to.
    pub digest: String,
    /// The digest an earlier registration had bound the tag to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// Held in memory until its blobs are fetched (`false`: the BR held
    /// every blob already, and stored the manifest at once).
    pub held: bool,
}

/// A registration that failed validation: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RegistrationError {
    /// The offending field, such as `images[2].manifest.digest`.
    pub field: String,
    /// The spec error code that fits, when one does.
    pub code: Option<ErrorCode>,
    /// What is wrong.
    pub message: String,
}

fn invalid(
    field: impl Into<String>,
    code: Option<ErrorCode>,
    message: impl Into<String>,
) -> RegistrationError {
    RegistrationError {
        field: field.into(),
        code,
        message: message.into(),
    }
}

/// A checked registration.
#[derive(Debug)]
pub struct Validated {
    /// The sources, one per registry.
    pub sources: Vec<ValidSource>,
    /// The images, in the order given.
    pub images: Vec<ValidImage>,
}

/// A checked source.
#[derive(Clone)]
pub struct ValidSource {
    /// `host[:port]`.
    pub registry: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// PEM CA certificate(s), if any.
    pub ca: Option<String>,
    /// Plain HTTP.
    pub insecure: bool,
}

impl fmt::Debug for ValidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidSource")
            .field("registry", &self.registry)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// A checked image.
#[derive(Debug)]
pub struct ValidImage {
    /// The repository in the BR.
    pub repository: RepositoryName,
    /// The tag in the BR.
    pub tag: Tag,
    /// The source registry (one of [`Validated::sources`]).
    pub registry: String,
    /// The repository in the source registry.
    pub source_repository: RepositoryName,
    /// The reference it was resolved from.
    pub source_reference: String,
    /// The manifest.
    pub manifest: DecodedManifest,
    /// An index's children, in the index's order.
    pub children: Vec<DecodedManifest>,
}

/// A manifest whose bytes match its digest and parse as its media type.
#[derive(Debug)]
pub struct DecodedManifest {
    /// The digest.
    pub digest: Digest,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// What it says.
    pub info: ManifestInfo,
}

impl Registration {
    /// Check everything: names and tags against the grammar, every source
    /// used and described once, every manifest's bytes against its digest
    /// and media type, an index's children exactly those it lists, and the
    /// sizes within [`MAX_IMAGES`] and [`MAX_CHILDREN`].
    pub fn validate(self) -> Result<Validated, RegistrationError> {
        if self.images.len() > MAX_IMAGES {
            return Err(invalid(
                "images",
                None,
                format!("more than {MAX_IMAGES} images"),
            ));
        }
        let sources = validate_sources(self.sources)?;
        let known: HashSet<&str> = sources.iter().map(|s| s.registry.as_str()).collect();
        let mut images = Vec::with_capacity(self.images.len());
        for (i, image) in self.images.into_iter().enumerate() {
            images.push(validate_image(&format!("images[{i}]"), image, &known)?);
        }
        Ok(Validated { sources, images })
    }
}

fn validate_sources(sources: Vec<SourceAccess>) -> Result<Vec<ValidSource>, RegistrationError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(sources.len());
    for (i, s) in sources.into_iter().enumerate() {
        let field = format!("sources[{i}]");
        check_registry(&format!("{field}.registry"), &s.registry)?;
        if !seen.insert(s.registry.clone()) {
            return Err(invalid(
                format!("{field}.registry"),
                None,
                format!("{} is described twice", s.registry),
            ));
        }
        if let Some(token) = &s.token {
            check_token(&format!("{field}.token"), token)?;
        }
        if let Some(ca) = &s.ca
            && !ca.contains("-----BEGIN CERTIFICATE-----")
        {
            return Err(invalid(
                format!("{field}.ca"),
                None,
                "not a PEM certificate",
            ));
        }
        out.push(ValidSource {
            registry: s.registry,
            token: s.token,
            ca: s.ca.filter(|c| !c.trim().is_empty()),
            insecure: s.insecure,
        });
    }
    Ok(out)
}

/// `host[:port]`: letters, digits, `.`, `-`, `_`, `:` and IPv6 brackets.
/// (The server still builds a URL from it, which checks the rest.)
fn check_registry(field: &str, registry: &str) -> Result<(), RegistrationError> {
    let ok = !registry.is_empty()
        && registry.len() <= 255
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            None,
            format!("invalid registry {registry:?}"),
        ))
    }
}

/// A token goes into an `Authorization` header: visible ASCII only.
fn check_token(field: &str, token: &str) -> Result<(), RegistrationError> {
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(field, None, "invalid token"));
    }
    Ok(())
}

fn validate_image(
    field: &str,
    image: ImageRegistration,
    sources: &HashSet<&str>,
) -> Result<ValidImage, RegistrationError> {
    let repository: RepositoryName = image.repository.parse().map_err(|e: crate::Error| {
        invalid(format!("{field}.repository"), Some(e.code()), e.to_string())
    })?;
    let tag: Tag = image.tag.parse().map_err(|e: crate::Error| {
        invalid(format!("{field}.tag"), Some(e.code()), e.to_string())
    })?;
    if !sources.contains(image.source.registry.as_str()) {
        return Err(invalid(
            format!("{field}.source.registry"),
            None,
            format!("{:?} is not among the sources", image.source.registry),
        ));
    }
    let source_repository: RepositoryName =
        image.source.repository.parse().map_err(|e: crate::Error| {
            invalid(
                format!("{field}.source.repository"),
                Some(e.code()),
                e.to_string(),
            )
        })?;
    let manifest = decode(&format!("{field}.manifest"), &image.manifest)?;
    let children = validate_children(field, &manifest, &image.children)?;
    Ok(ValidImage {
        repository,
        tag,
        registry: image.source.registry,
        source_repository,
        source_reference: image.source.reference,
        manifest,
        children,
    })
}

/// An index must come with exactly the child manifests it lists (each an
/// image manifest: nested indexes are not served lazily); an image
/// manifest with none.
fn validate_children(
    field: &str,
    manifest: &DecodedManifest,
    children: &[EncodedManifest],
) -> Result<Vec<DecodedManifest>, RegistrationError> {
    if manifest.info.kind == ManifestKind::Image {
        if !children.is_empty() {
            return Err(invalid(
                format!("{field}.children"),
                None,
                "an image manifest has no children",
            ));
        }
        return Ok(Vec::new());
    }
    if children.len() > MAX_CHILDREN {
        return Err(invalid(
            format!("{field}.children"),
            None,
            format!("more than {MAX_CHILDREN} children"),
        ));
    }
    let mut decoded = Vec::with_capacity(children.len());
    for (i, c) in children.iter().enumerate() {
        let child = decode(&format!("{field}.children[{i}]"), c)?;
        if child.info.kind != ManifestKind::Image {
            return Err(invalid(
                format!("{field}.children[{i}]"),
                Some(ErrorCode::ManifestInvalid),
                "a child manifest must be an image manifest",
            ));
        }
        decoded.push(child);
    }
    let listed: HashSet<&Digest> = manifest.info.manifests.iter().map(|d| &d.digest).collect();
    let given: HashSet<&Digest> = decoded.iter().map(|d| &d.digest).collect();
    if let Some(missing) = listed.difference(&given).next() {
        return Err(invalid(
            format!("{field}.children"),
            Some(ErrorCode::ManifestInvalid),
            format!("the index lists {missing}, which is not given"),
        ));
    }
    if let Some(extra) = given.difference(&listed).next() {
        return Err(invalid(
            format!("{field}.children"),
            Some(ErrorCode::ManifestInvalid),
            format!("{extra} is not listed in the index"),
        ));
    }
    Ok(decoded)
}

/// Decode and check one manifest: base64, digest, media type.
fn decode(field: &str, m: &EncodedManifest) -> Result<DecodedManifest, RegistrationError> {
    let digest: Digest = m.digest.parse().map_err(|e: crate::Error| {
        invalid(format!("{field}.digest"), Some(e.code()), e.to_string())
    })?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(m.data.as_bytes())
        .map_err(|e| invalid(format!("{field}.data"), None, format!("not base64: {e}")))?;
    if bytes.len() > manifest::MAX_MANIFEST_SIZE {
        return Err(invalid(
            format!("{field}.data"),
            Some(ErrorCode::ManifestInvalid),
            format!("larger than {} bytes", manifest::MAX_MANIFEST_SIZE),
        ));
    }
    if !digest.verify(&bytes) {
        return Err(invalid(
            format!("{field}.digest"),
            Some(ErrorCode::DigestInvalid),
            format!("the data does not hash to {digest}"),
        ));
    }
    let info = manifest::parse(Some(&m.media_type), &bytes)
        .map_err(|e| invalid(format!("{field}.media_type"), Some(e.code()), e.to_string()))?;
    Ok(DecodedManifest {
        digest,
        bytes,
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_type;

    fn image_manifest(config: &[u8]) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[]}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_EMPTY,
            Digest::sha256(config),
            config.len()
        )
        .into_bytes()
    }

    fn index(children: &[&[u8]]) -> Vec<u8> {
        let entries: Vec<String> = children
            .iter()
            .map(|c| {
                format!(
                    r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}"#,
                    media_type::OCI_MANIFEST,
                    Digest::sha256(c),
                    c.len()
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
            media_type::OCI_INDEX,
            entries.join(",")
        )
        .into_bytes()
    }

    fn encoded(media_type: &str, bytes: &[u8]) -> EncodedManifest {
        EncodedManifest::new(media_type, &Digest::sha256(bytes), bytes)
    }

    fn registration(manifest: EncodedManifest, children: Vec<EncodedManifest>) -> Registration {
        Registration {
            sources: vec![SourceAccess {
                registry: "ir.example:5000".into(),
                token: Some("a.b.c".into()),
                ca: None,
                insecure: false,
            }],
            images: vec![ImageRegistration {
                repository: "org/app".into(),
                tag: "latest".into(),
                source: SourceImage {
                    registry: "ir.example:5000".into(),
                    repository: "docker.io/org/app".into(),
                    reference: "b_latest".into(),
                },
                manifest,
                children,
            }],
        }
    }

    fn field_of(r: Registration) -> String {
        r.validate().unwrap_err().field
    }

    #[test]
    fn a_valid_index_with_its_children() {
        let a = image_manifest(b"{\"a\":1}");
        let b = image_manifest(b"{\"b\":1}");
        let idx = index(&[&a, &b]);
        let r = registration(
            encoded(media_type::OCI_INDEX, &idx),
            vec![
                encoded(media_type::OCI_MANIFEST, &b),
                encoded(media_type::OCI_MANIFEST, &a),
            ],
        );
        let v = r.validate().unwrap();
        assert_eq!(v.images[0].children.len(), 2);
        assert_eq!(v.images[0].manifest.bytes, idx);
        assert_eq!(v.images[0].repository.as_str(), "org/app");
        assert!(!format!("{:?}", v.sources).contains("a.b.c"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let m = image_manifest(b"{}");
        let good = || registration(encoded(media_type::OCI_MANIFEST, &m), vec![]);

        let mut r = good();
        r.images[0].manifest.digest = Digest::sha256(b"other").to_string();
        let e = r.validate().unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.code),
            ("images[0].manifest.digest", Some(ErrorCode::DigestInvalid))
        );

        let mut r = good();
        r.images[0].manifest.data = "***".into();
        assert_eq!(field_of(r), "images[0].manifest.data");

        let mut r = good();
        r.images[0].manifest.media_type = media_type::OCI_INDEX.into();
        assert_eq!(field_of(r), "images[0].manifest.media_type");

        let mut r = good();
        r.images[0].repository = "Org/App".into();
        assert_eq!(field_of(r), "images[0].repository");

        let mut r = good();
        r.images[0].tag = "-bad".into();
        assert_eq!(field_of(r), "images[0].tag");

        let mut r = good();
        r.images[0].source.registry = "elsewhere:1".into();
        assert_eq!(field_of(r), "images[0].source.registry");

        let mut r = good();
        r.images[0].source.repository = "../x".into();
        assert_eq!(field_of(r), "images[0].source.repository");

        let mut r = good();
        r.sources[0].token = Some("two words".into());
        assert_eq!(field_of(r), "sources[0].token");

        let mut r = good();
        r.sources[0].registry = "ir/x".into();
        assert_eq!(field_of(r), "sources[0].registry");

        let mut r = good();
        r.sources.push(r.sources[0].clone());
        assert_eq!(field_of(r), "sources[1].registry");

        let mut r = good();
        r.sources[0].ca = Some("not pem".into());
        assert_eq!(field_of(r), "sources[0].ca");

        let mut r = good();
        r.images[0].children = vec![encoded(media_type::OCI_MANIFEST, &m)];
        assert_eq!(field_of(r), "images[0].children");
    }

    #[test]
    fn an_index_needs_exactly_its_children() {
        let a = image_manifest(b"{\"a\":1}");
        let b = image_manifest(b"{\"b\":1}");
        let idx = index(&[&a, &b]);
        let missing = registration(
            encoded(media_type::OCI_INDEX, &idx),
            vec![encoded(media_type::OCI_MANIFEST, &a)],
        );
        let e = missing.validate().unwrap_err();
        assert!(e.message.contains("not given"), "{e}");
        let c = image_manifest(b"{\"c\":1}");
        let extra = registration(
            encoded(media_type::OCI_INDEX, &idx),
            vec![
                encoded(media_type::OCI_MANIFEST, &a),
                encoded(media_type::OCI_MANIFEST, &b),
                encoded(media_type::OCI_MANIFEST, &c),
            ],
        );
        assert!(extra.validate().unwrap_err().message.contains("not listed"));
        let nested = registration(
            encoded(media_type::OCI_INDEX, &index(&[&idx])),
            vec![encoded(media_type::OCI_INDEX, &idx)],
        );
        assert_eq!(field_of(nested), "images[0].children[0]");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = r#"{"sources":[],"images":[],"password":"x"}"#;
        assert!(serde_json::from_str::<Registration>(text).is_err());
    }
}
