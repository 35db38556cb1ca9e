//! The `upstreams:` section of the serve config: raw keys as written, and
//! the validated [`UpstreamSettings`] the proxy runs with.
//!
//! ```yaml
//! upstreams:
//!   - namespace: docker.io
//!     url: https://registry-1.docker.io
//!     username: mirror
//!     password-file: /etc/speculum/hub-token
//!     tag-ttl: 5m
//!     repositories: "library/.*|myorg/.*"
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How long a tag fetched from an upstream is served before the upstream is
/// asked again whether it still points at the same digest.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);

/// Registry hosts that all mean Docker Hub; configs may use any of them as
/// a namespace, and they are normalized to `docker.io`.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// One upstream as written in the config file (kebab-case keys, unknown keys
/// refused).
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The namespace this upstream serves: `docker.io` (un-prefixed names),
    /// `quay.io`, or any registry host.
    pub namespace: String,
    /// The upstream's endpoint, such as `https://registry-1.docker.io`;
    /// `http://` needs `insecure: true`.
    pub url: String,
    /// User name for the upstream (HTTP Basic, or for its token service).
    #[serde(default)]
    pub username: Option<String>,
    /// Password or access token (prefer `password-file`).
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A PEM CA bundle to trust for this upstream besides the system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Talk plain HTTP (tests, loopback mirrors).
    #[serde(default)]
    pub insecure: bool,
    /// How long a proxied tag is served before it is re-checked upstream:
    /// seconds, or a human duration (`30s`, `5m`, `1h`); default 5 minutes.
    #[serde(default)]
    pub tag_ttl: Option<TtlValue>,
    /// A regular expression that upstream repository names (without the
    /// namespace, such as `library/python`) must match in full to be
    /// proxied; default: every repository.
    #[serde(default)]
    pub repositories: Option<String>,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("namespace", &self.namespace)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("ca", &self.ca)
            .field("insecure", &self.insecure)
            .field("tag_ttl", &self.tag_ttl)
            .field("repositories", &self.repositories)
            .finish()
    }
}

/// A duration as written: a number of seconds or text such as `5m`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TtlValue {
    /// Seconds.
    Seconds(u64),
    /// A human duration (`90s`, `5m`, `1h`).
    Text(String),
}

impl TtlValue {
    fn duration(&self) -> Result<Duration, String> {
        match self {
            TtlValue::Seconds(s) => Ok(Duration::from_secs(*s)),
            TtlValue::Text(text) => crate::value::parse_duration(text),
        }
    }
}

/// A config value that cannot be used; the message names the key
/// (`upstreams[1].url`), the caller adds the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct UpstreamConfigError {
    /// The offending key, such as `upstreams[0].tag-ttl`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// One upstream, validated: what [`Upstreams`](super::Upstreams) is built
/// from.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// `docker.io` or a registry host, lowercase.
    pub namespace: String,
    /// The upstream's `host[:port]`.
    pub host: String,
    /// Plain HTTP.
    pub insecure: bool,
    /// User name and password, if configured.
    pub credentials: Option<(String, String)>,
    /// Extra CA certificates (PEM) to trust.
    pub ca_pem: Option<Vec<u8>>,
    /// How long a proxied tag is trusted without asking the upstream.
    pub tag_ttl: Duration,
    /// Upstream repository names that are proxied (full match); `None`: all.
    pub repositories: Option<regex::Regex>,
}

impl fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("namespace", &self.namespace)
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .field("ca", &self.ca_pem.is_some())
            .field("tag_ttl", &self.tag_ttl)
            .field(
                "repositories",
                &self.repositories.as_ref().map(|r| r.as_str()),
            )
            .finish()
    }
}

impl UpstreamSettings {
    /// An upstream with defaults: no credentials, the default TTL, every
    /// repository. `url` is `http(s)://host[:port]`.
    pub fn new(namespace: &str, url: &str) -> Result<UpstreamSettings, UpstreamConfigError> {
        let raw = UpstreamConfig {
            namespace: namespace.to_string(),
            url: url.to_string(),
            insecure: url.starts_with("http://"),
            ..UpstreamConfig::default()
        };
        raw.validate("upstream", None)
    }

    /// Replace the tag TTL.
    pub fn tag_ttl(mut self, ttl: Duration) -> UpstreamSettings {
        self.tag_ttl = ttl;
        self
    }

    /// Proxy only upstream repositories whose name matches `pattern` in full.
    pub fn repositories(mut self, pattern: &str) -> Result<UpstreamSettings, UpstreamConfigError> {
        self.repositories =
            Some(
                repositories_regex(pattern).map_err(|message| UpstreamConfigError {
                    key: "repositories".to_string(),
                    message,
                })?,
            );
        Ok(self)
    }

    /// Set credentials.
    pub fn credentials(mut self, username: &str, password: &str) -> UpstreamSettings {
        self.credentials = Some((username.to_string(), password.to_string()));
        self
    }
}

impl UpstreamConfig {
    /// Check every value and read the files named (relative paths are
    /// resolved against `base_dir`, the config file's directory). `key` is
    /// how error messages name this entry, such as `upstreams[0]`.
    pub fn validate(
        &self,
        key: &str,
        base_dir: Option<&Path>,
    ) -> Result<UpstreamSettings, UpstreamConfigError> {
        let err = |field: &str, message: String| UpstreamConfigError {
            key: format!("{key}.{field}"),
            message,
        };
        let namespace = normalize_namespace(&self.namespace).map_err(|m| err("namespace", m))?;

        let url: http::Uri = self
            .url
            .parse()
            .map_err(|e| err("url", format!("invalid URL {:?}: {e}", self.url)))?;
        match (url.scheme_str(), self.insecure) {
            (Some("https"), false) | (Some("http"), true) => {}
            (Some("http"), false) => {
                return Err(err(
                    "url",
                    "plain http needs `insecure: true` on this upstream".to_string(),
                ));
            }
            (Some("https"), true) => {
                return Err(err(
                    "insecure",
                    "`insecure: true` means plain http, but the url is https".to_string(),
                ));
            }
            (other, _) => {
                return Err(err(
                    "url",
                    format!("needs an http:// or https:// URL, got scheme {other:?}"),
                ));
            }
        }
        let Some(authority) = url.authority().filter(|a| !a.host().is_empty()) else {
            return Err(err("url", "the URL has no host".to_string()));
        };
        if authority.as_str().contains('@')
            || !matches!(url.path(), "" | "/")
            || url.query().is_some()
        {
            return Err(err(
                "url",
                "give only scheme, host and port (credentials go in username/password)".to_string(),
            ));
        }
        let host = authority.as_str().to_ascii_lowercase();

        let resolve = |p: &Path| match base_dir {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        };
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "password-file",
                    "give either password or password-file, not both".to_string(),
                ));
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(file)) => {
                let path = resolve(file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| err("password-file", format!("{}: {e}", path.display())))?;
                Some(text.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, None) => None,
        };
        let credentials = match (&self.username, password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p)),
            (Some(_), Some(_)) => return Err(err("username", "is empty".to_string())),
            (Some(_), None) => {
                return Err(err(
                    "password",
                    "username given without password or password-file".to_string(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "username",
                    "password given without username".to_string(),
                ));
            }
            (None, None) => None,
        };

        let ca_pem = match &self.ca {
            Some(file) => {
                let path = resolve(file);
                let pem = std::fs::read(&path)
                    .map_err(|e| err("ca", format!("{}: {e}", path.display())))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(err(
                        "ca",
                        format!("{} holds no PEM certificate", path.display()),
                    ));
                }
                Some(pem)
            }
            None => None,
        };

        let tag_ttl = match &self.tag_ttl {
            Some(value) => value.duration().map_err(|m| err("tag-ttl", m))?,
            None => DEFAULT_TAG_TTL,
        };

        let repositories = match &self.repositories {
            Some(pattern) => Some(repositories_regex(pattern).map_err(|m| err("repositories", m))?),
            None => None,
        };

        Ok(UpstreamSettings {
            namespace,
            host,
            insecure: self.insecure,
            credentials,
            ca_pem,
            tag_ttl,
            repositories,
        })
    }
}

/// Validate a whole `upstreams:` list: every entry, and no namespace twice.
pub fn validate_upstreams(
    list: &[UpstreamConfig],
    base_dir: Option<&Path>,
) -> Result<Vec<UpstreamSettings>, UpstreamConfigError> {
    let mut out: Vec<UpstreamSettings> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let key = format!("upstreams[{i}]");
        let settings = raw.validate(&key, base_dir)?;
        if out.iter().any(|s| s.namespace == settings.namespace) {
            return Err(UpstreamConfigError {
                key: format!("{key}.namespace"),
                message: format!(
                    "namespace {} has more than one upstream",
                    settings.namespace
                ),
            });
        }
        out.push(settings);
    }
    Ok(out)
}

/// A full-match regex for repository names.
fn repositories_regex(pattern: &str) -> Result<regex::Regex, String> {
    crate::value::whole_match(pattern).map_err(|e| format!("invalid regex: {e}"))
}

/// `docker.io` for any Docker Hub alias, else a lowercase host name.
fn normalize_namespace(ns: &str) -> Result<String, String> {
    let ns = ns.trim().to_ascii_lowercase();
    if DOCKER_HUB.contains(&ns.as_str()) {
        return Ok("docker.io".to_string());
    }
    // Stored names are `<host>/<path>` and must pass the repository grammar,
    // so a namespace is a host name without a port.
    let ok = !ns.is_empty()
        && ns.len() <= 253
        && ns.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(ns)
    } else {
        Err(format!(
            "{ns:?} is not a registry host name (docker.io, quay.io, ghcr.io, ...; no port)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ns: &str, url: &str) -> UpstreamConfig {
        UpstreamConfig {
            namespace: ns.into(),
            url: url.into(),
            ..UpstreamConfig::default()
        }
    }

    #[test]
    fn parses_kebab_case_and_refuses_unknown_keys() {
        let list: Vec<UpstreamConfig> = serde_json::from_value(serde_json::json!([{
            "namespace": "quay.io",
            "url": "https://quay.io",
            "username": "u",
            "password": "p",
            "tag-ttl": "90s",
            "repositories": "org/.*",
        }]))
        .unwrap();
        let s = validate_upstreams(&list, None).unwrap();
        assert_eq!(s[0].namespace, "quay.io");
        assert_eq!(s[0].host, "quay.io");
        assert_eq!(s[0].tag_ttl, Duration::from_secs(90));
        let numeric: UpstreamConfig = serde_json::from_value(serde_json::json!({
            "namespace": "quay.io", "url": "https://quay.io", "tag-ttl": 30
        }))
        .unwrap();
        assert_eq!(
            numeric.validate("u", None).unwrap().tag_ttl,
            Duration::from_secs(30)
        );
        assert_eq!(s[0].credentials, Some(("u".into(), "p".into())));
        let re = s[0].repositories.as_ref().unwrap();
        assert!(re.is_match("org/app"));
        assert!(!re.is_match("other/org/app"));
        assert!(!format!("{:?}", s[0]).contains("\"p\""));
        assert!(!format!("{:?}", list[0]).contains("\"p\""));

        let bad = serde_json::from_value::<UpstreamConfig>(serde_json::json!({
            "namespace": "quay.io", "url": "https://quay.io", "tag_ttl": "5m"
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn defaults_and_aliases() {
        let s = raw("index.docker.io", "https://registry-1.docker.io")
            .validate("u", None)
            .unwrap();
        assert_eq!(s.namespace, "docker.io");
        assert_eq!(s.host, "registry-1.docker.io");
        assert_eq!(s.tag_ttl, DEFAULT_TAG_TTL);
        assert!(s.repositories.is_none() && s.credentials.is_none() && !s.insecure);
        let s = UpstreamSettings::new("localhost", "http://127.0.0.1:5000").unwrap();
        assert_eq!(s.host, "127.0.0.1:5000");
        assert!(s.insecure);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(UpstreamConfig, &str)> = vec![
            (raw("quay.io:443", "https://quay.io"), "u.namespace"),
            (raw("Bad/ns", "https://quay.io"), "u.namespace"),
            (raw("quay.io", "quay.io"), "u.url"),
            (raw("quay.io", "http://quay.io"), "u.url"),
            (raw("quay.io", "ftp://quay.io"), "u.url"),
            (raw("quay.io", "https://quay.io/v2/"), "u.url"),
            (raw("quay.io", "https://me:pw@quay.io"), "u.url"),
            (
                UpstreamConfig {
                    insecure: true,
                    ..raw("quay.io", "https://quay.io")
                },
                "u.insecure",
            ),
            (
                UpstreamConfig {
                    tag_ttl: Some(TtlValue::Text("soon".into())),
                    ..raw("quay.io", "https://quay.io")
                },
                "u.tag-ttl",
            ),
            (
                UpstreamConfig {
                    repositories: Some("(".into()),
                    ..raw("quay.io", "https://quay.io")
                },
                "u.repositories",
            ),
            (
                UpstreamConfig {
                    username: Some("u".into()),
                    ..raw("quay.io", "https://quay.io")
                },
                "u.password",
            ),
            (
                UpstreamConfig {
                    password: Some("p".into()),
                    ..raw("quay.io", "https://quay.io")
                },
                "u.username",
            ),
            (
                UpstreamConfig {
                    ca: Some("/nonexistent/ca.pem".into()),
                    ..raw("quay.io", "https://quay.io")
                },
                "u.ca",
            ),
            (
                UpstreamConfig {
                    username: Some("u".into()),
                    password_file: Some("missing-file".into()),
                    ..raw("quay.io", "https://quay.io")
                },
                "u.password-file",
            ),
        ];
        for (cfg, key) in cases {
            let e = cfg.validate("u", None).unwrap_err();
            assert_eq!(e.key, key, "{cfg:?}: {e}");
        }
        let dup = [
            raw("docker.io", "https://a.example"),
            raw("registry-1.docker.io", "https://b.example"),
        ];
        let e = validate_upstreams(&dup, None).unwrap_err();
        assert_eq!(e.key, "upstreams[1].namespace");
    }

    #[test]
    fn password_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let cfg = UpstreamConfig {
            username: Some("u".into()),
            password_file: Some("pw".into()),
            ..raw("ghcr.io", "https://ghcr.io")
        };
        let s = cfg.validate("u", Some(dir.path())).unwrap();
        assert_eq!(s.credentials, Some(("u".into(), "s3cret".into())));
    }
}
