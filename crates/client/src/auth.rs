//! Credentials, auth files and `WWW-Authenticate` challenges.
//!
//! Credentials come, in this order, from flags or environment variables
//! (handled by the caller), then from the auth files podman and docker write:
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. Passwords never
//! reach `Debug` or `Display` output.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, Result};

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl Credentials {
    /// Credentials from parts.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Parse `USER:PASSWORD` (the password may contain `:`). Trailing newlines
    /// (from files or secrets) are trimmed.
    pub fn parse(s: &str) -> Result<Credentials> {
        let s = s.trim_end_matches(['\n', '\r']);
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::new(u, p)),
            _ => Err(Error::input("credentials must be USER:PASSWORD")),
        }
    }

    /// The value of a Basic `Authorization` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A bearer token obtained by someone else, used as it is: the holder of
/// the credentials fetched it for the scopes the user of this token needs,
/// so that the credentials themselves never travel. Its `Debug` never shows
/// it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wrap a token.
    pub fn new(token: impl Into<String>) -> BearerToken {
        BearerToken(token.into())
    }

    /// The token itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// The auth files to consult, in order, from the environment.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(p).join("containers/auth.json"));
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG") {
        files.push(PathBuf::from(p).join("config.json"));
    } else if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".docker/config.json"));
    }
    files
}

/// The keys under which auth files may store a registry's entry.
fn candidate_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if registry == crate::reference::DOCKER_HUB {
        for k in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
        ] {
            keys.push(k.to_string());
        }
    }
    keys
}

fn entry_credentials(entry: &serde_json::Value) -> Option<Credentials> {
    if let Some(auth) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return Credentials::parse(&text).ok();
    }
    let user = entry.get("username")?.as_str()?;
    let pass = entry.get("password")?.as_str()?;
    Some(Credentials::new(user, pass))
}

/// Look up credentials for `registry` (and optionally a repository, for
/// podman's repository-scoped keys such as `quay.io/org`) in one auth file.
/// A missing file is not an error; an unreadable or malformed one is.
pub fn lookup_in_file(
    path: &Path,
    registry: &str,
    repository: Option<&str>,
) -> Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::input(format!("{}: not a valid auth file: {e}", path.display())))?;
    let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    // Most specific first: registry/namespace/... prefixes of the repository.
    if let Some(repo) = repository {
        let full = format!("{registry}/{repo}");
        let mut best: Option<(usize, Credentials)> = None;
        for (key, entry) in auths {
            let k = key.trim_end_matches('/');
            if full.starts_with(k)
                && full[k.len()..].starts_with('/')
                && best.as_ref().is_none_or(|(l, _)| k.len() > *l)
                && let Some(c) = entry_credentials(entry)
            {
                best = Some((k.len(), c));
            }
        }
        if let Some((_, c)) = best {
            return Ok(Some(c));
        }
    }
    for key in candidate_keys(registry) {
        if let Some(c) = auths.get(&key).and_then(entry_credentials) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// Look up credentials for `registry` in the given auth files, first match wins.
pub fn lookup(
    files: &[PathBuf],
    registry: &str,
    repository: Option<&str>,
) -> Result<Option<Credentials>> {
    for f in files {
        if let Some(c) = lookup_in_file(f, registry, repository)? {
            tracing::debug!(file = %f.display(), registry, "credentials from auth file");
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`
    Basic,
    /// `Bearer realm=...,service=...,scope=...`
    Bearer {
        /// Where to fetch tokens.
        realm: String,
        /// The `service` parameter to send back.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parse the parameters of a challenge: `k="v", k2=v2`, quoted strings may
/// contain commas and escaped quotes.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        if chars.peek().is_none() {
            break;
        }
    }
    out
}

impl Challenge {
    /// Parse a header value; `None` for schemes speculum does not speak.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let params = parse_params(rest);
                let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                Some(Challenge::Bearer {
                    realm: get("realm")?,
                    service: get("service"),
                    scope: get("scope"),
                })
            }
            _ => None,
        }
    }
}

/// A token server's answer (Docker's token spec; `access_token` is OAuth2's name).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse("bearer realm=http://x/t"),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn credentials_parse_and_redact() {
        let c = Credentials::parse("zuul:pa:ss\n").unwrap();
        assert_eq!(c.password, "pa:ss");
        assert!(!format!("{c:?}").contains("pa:ss"));
        assert!(Credentials::parse("nopass").is_err());
        assert!(Credentials::parse(":x").is_err());
    }

    #[test]
    fn auth_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("u1:p1");
        std::fs::write(
            &f,
            format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{b64}"}},
                "https://index.docker.io/v1/":{{"username":"hub","password":"hp"}},
                "quay.io/org":{{"username":"robot","password":"rp"}},
                "quay.io":{{"username":"q","password":"qp"}}}}}}"#
            ),
        )
        .unwrap();
        let files = vec![dir.path().join("missing.json"), f];
        let c = lookup(&files, "127.0.0.1:5000", None).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u1", "p1"));
        assert_eq!(
            lookup(&files, "docker.io", Some("a/b"))
                .unwrap()
                .unwrap()
                .username,
            "hub"
        );
        assert_eq!(
            lookup(&files, "quay.io", Some("org/app"))
                .unwrap()
                .unwrap()
                .username,
            "robot"
        );
        assert_eq!(
            lookup(&files, "quay.io", Some("other/app"))
                .unwrap()
                .unwrap()
                .username,
            "q"
        );
        assert_eq!(lookup(&files, "example.com", None).unwrap(), None);
    }
}
