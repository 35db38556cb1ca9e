//! Manifest and index parsing and validation.
//!
//! The registry stores manifests as the exact bytes pushed; this module only
//! reads them to check that they are what their media type says and to find
//! what they reference (blobs, child manifests, a `subject`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, ErrorKind};
use crate::media_type::{self, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST};

/// The largest manifest a registry accepts (4 MiB, as in the spec's guidance).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// A platform, as found in index entries and image configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, such as `amd64`.
    pub architecture: String,
    /// Operating system, such as `linux`.
    pub os: String,
    /// CPU variant, such as `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A content descriptor: what a manifest says about something it references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The referenced content's media type.
    pub media_type: String,
    /// The referenced content's digest.
    pub digest: Digest,
    /// The referenced content's size in bytes.
    pub size: u64,
    /// Where else the content may be fetched from (non-distributable layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The platform of a child manifest (indexes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The artifact type (referrers and artifact manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// Whether a manifest is a single image or a list of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A Docker v2 schema 2 or OCI image manifest (config plus layers).
    Image,
    /// A Docker manifest list or OCI image index.
    Index,
}

/// What a validated manifest says, as far as a registry cares.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestInfo {
    /// The media type the manifest is stored and served with.
    pub media_type: String,
    /// Image or index.
    pub kind: ManifestKind,
    /// The config blob (image manifests only).
    pub config: Option<Descriptor>,
    /// The layer blobs (image manifests only).
    pub layers: Vec<Descriptor>,
    /// The child manifests (indexes only).
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 referrers).
    pub subject: Option<Descriptor>,
    /// The artifact type: `artifactType`, or the config media type of an OCI
    /// image manifest when `artifactType` is absent.
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ManifestInfo {
    /// The blobs that must exist for this manifest to be complete: the config
    /// and every layer that is distributable (has no `urls`).
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(
            self.layers
                .iter()
                .filter(|l| l.urls.as_ref().is_none_or(|u| u.is_empty())),
        )
    }

    /// Every blob the manifest references, distributable or not.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }

    /// This manifest as a descriptor for a referrers list.
    pub fn referrer_descriptor(&self, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest,
            size,
            urls: None,
            annotations: self.annotations.clone(),
            platform: None,
            artifact_type: self.artifact_type.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Decode a manifest's fields: in one pass straight from the bytes when
/// they are a JSON object that decodes cleanly, which is every manifest a
/// real client pushes. Anything else goes through a `serde_json::Value`,
/// which tells what is wrong, and accepts what the registry always accepted
/// (a repeated key, the last one winning).
fn decode(bytes: &[u8]) -> Result<Raw, Error> {
    // A JSON array would decode into the struct field by field.
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if object && let Ok(raw) = serde_json::from_slice::<Raw>(bytes) {
        return Ok(raw);
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("manifest is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(invalid("manifest is not a JSON object"));
    }
    serde_json::from_value(value)
        .map_err(|e| invalid(format!("manifest has an invalid field: {e}")))
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Manifest, msg)
}

/// Parse and validate a manifest.
///
/// `content_type` is the `Content-Type` it was pushed with, if any. When it
/// is absent or generic (`application/json`), the `mediaType` field decides,
/// and failing that the shape (`manifests` means an OCI index, `config` an
/// OCI manifest). When both are present they must agree.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ManifestInfo, Error> {
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(invalid(format!(
            "manifest is larger than {MAX_MANIFEST_SIZE} bytes"
        )));
    }
    let raw = decode(bytes)?;

    let header = content_type
        .map(media_type::essence)
        .filter(|t| !t.is_empty() && t != "application/json" && t != "application/octet-stream");
    let declared = raw.media_type.as_deref();
    let media_type = match (header.as_deref(), declared) {
        (Some(h), Some(d)) if h != d => {
            return Err(invalid(format!(
                "content type {h} does not match the manifest's mediaType {d}"
            )));
        }
        (Some(h), _) => h.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if raw.config.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => return Err(invalid("manifest has no media type")),
    };
    if media_type == media_type::DOCKER_MANIFEST_V1
        || media_type == media_type::DOCKER_MANIFEST_V1_SIGNED
    {
        return Err(Error::new(
            ErrorKind::MediaType,
            "docker schema 1 manifests are not supported",
        ));
    }
    if !media_type::is_manifest(&media_type) {
        return Err(Error::new(
            ErrorKind::MediaType,
            format!("unsupported manifest media type {media_type}"),
        ));
    }
    if raw.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }

    let kind = if media_type::is_index(&media_type) {
        ManifestKind::Index
    } else {
        ManifestKind::Image
    };
    match kind {
        ManifestKind::Image => {
            if raw.manifests.is_some() {
                return Err(invalid(format!("{media_type} must not have manifests")));
            }
            if raw.config.is_none() {
                return Err(invalid(format!("{media_type} must have a config")));
            }
            if raw.layers.is_none() {
                return Err(invalid(format!("{media_type} must have layers")));
            }
        }
        ManifestKind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid(format!(
                    "{media_type} must not have config or layers"
                )));
            }
            let Some(children) = &raw.manifests else {
                return Err(invalid(format!("{media_type} must have manifests")));
            };
            if let Some(bad) = children
                .iter()
                .find(|c| !media_type::is_manifest(&c.media_type))
            {
                // Nested artifacts of unknown manifest types are allowed by
                // OCI, but we store only what we can validate.
                return Err(Error::new(
                    ErrorKind::MediaType,
                    format!(
                        "index entry {} has unsupported media type {}",
                        bad.digest, bad.media_type
                    ),
                ));
            }
        }
    }
    if (media_type == DOCKER_MANIFEST_V2 || media_type == DOCKER_MANIFEST_LIST)
        && raw.subject.is_some()
    {
        return Err(invalid("docker manifests cannot have a subject"));
    }

    let artifact_type = raw.artifact_type.clone().or_else(|| {
        (media_type == OCI_MANIFEST)
            .then(|| raw.config.as_ref().map(|c| c.media_type.clone()))
            .flatten()
    });
    Ok(ManifestInfo {
        media_type,
        kind,
        config: raw.config,
        layers: raw.layers.unwrap_or_default(),
        manifests: raw.manifests.unwrap_or_default(),
        subject: raw.subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const D2: &str = "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

    fn image(media: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":3}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]}}"#
        )
    }

    #[test]
    fn image_manifest() {
        let m = parse(Some(OCI_MANIFEST), image(OCI_MANIFEST).as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.required_blobs().count(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some(crate::media_type::OCI_CONFIG)
        );
    }

    #[test]
    fn media_type_from_body_and_shape() {
        let m = parse(None, image(DOCKER_MANIFEST_V2).as_bytes()).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST_V2);
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":3}}]}}"#
        );
        let m = parse(Some("application/json"), body.as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_INDEX);
        assert_eq!(m.manifests.len(), 1);
    }

    #[test]
    fn the_one_pass_decode_changes_nothing_accepted_or_refused() {
        // A repeated key decodes as it always did: the last one wins.
        let repeated = image(OCI_MANIFEST).replacen(
            r#""schemaVersion":2,"#,
            r#""schemaVersion":2,"mediaType":"text/plain","#,
            1,
        );
        let m = parse(None, repeated.as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        // An array holding the fields in order is still not a manifest.
        let array = format!(r#"[2,"{OCI_MANIFEST}"]"#);
        let e = parse(None, array.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
        let e = parse(None, br#"{"layers": 3}"#).unwrap_err();
        assert!(e.to_string().contains("invalid field"), "{e}");
    }

    #[test]
    fn rejects() {
        assert!(parse(Some(OCI_MANIFEST), b"{").is_err());
        assert!(parse(Some(OCI_MANIFEST), b"[]").is_err());
        assert!(parse(Some(DOCKER_MANIFEST_V2), image(OCI_MANIFEST).as_bytes()).is_err());
        assert!(parse(Some("text/plain"), image(OCI_MANIFEST).as_bytes()).is_err());
        let bad_digest = image(OCI_MANIFEST).replace(D2, "sha256:abc");
        assert!(parse(Some(OCI_MANIFEST), bad_digest.as_bytes()).is_err());
        let no_layers = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D1}","size":1}}}}"#
        );
        assert!(parse(Some(OCI_MANIFEST), no_layers.as_bytes()).is_err());
        let v1 = image(OCI_MANIFEST).replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert!(parse(Some(OCI_MANIFEST), v1.as_bytes()).is_err());
        let negative = image(OCI_MANIFEST).replace("\"size\":3}]", "\"size\":-3}]");
        assert!(parse(Some(OCI_MANIFEST), negative.as_bytes()).is_err());
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert!(parse(Some(OCI_MANIFEST), &big).is_err());
    }
}
