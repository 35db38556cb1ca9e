//! The intermediate registry's configuration file, in two stages: the raw
//! YAML ([`RawRegistry`], serde with `deny_unknown_fields`) and the validated
//! [`Settings`] that build the server.
//!
//! The file keeps zuul-registry's keys under `registry:` so that an existing
//! zuul-registry config starts speculum unchanged, and adds speculum's own
//! keys (kebab-case) beside them. `%(ZUUL_NAME)` and `%(SPECULUM_NAME)` in the
//! raw text are replaced from the environment before parsing, as zuul-registry
//! does; a missing variable is an error that names it.
//!
//! Every error names the file and the key, so an operator can fix a typo
//! without reading the source.
//!
//! **Adding a section** (webhooks, upstreams, ...): give the section its own
//! serde type with `deny_unknown_fields` in its own module, add a
//! `#[serde(default)]` field of that type to [`RawRegistry`], validate it in
//! [`Settings::from_raw`], and add the validated value to [`Settings`].
//!
//! Dependency direction: `config` imports the sections' owners (`auth`,
//! `notify`, `upstream`, `limits`); none of them imports `config`. The value
//! helpers they share (durations, whole-match regexes) live in the leaf
//! module `value`, which imports nothing from the crate.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::auth::DEFAULT_TOKEN_EXPIRY;
use crate::auth::{Access, User};
pub use crate::value::parse_duration;
use crate::value::{DurationValue, trim_newline, whole_match};

/// A configuration error: which file, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    file: PathBuf,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    fn new(file: &Path, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            key: key.map(str::to_string),
            message: message.into(),
        }
    }

    /// An error about `key` in `file`.
    pub fn from_parts(file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(file, Some(key), message)
    }

    /// The configuration file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The key at fault (`registry.users[1].access`), when one is.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole file: everything sits under `registry:`, as in zuul-registry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    registry: RawRegistry,
}

/// The `registry:` section as written (stage one). Field names are the YAML
/// keys in kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRegistry {
    /// zuul-registry: the address to listen on (`'::'` for every address).
    address: Option<String>,
    /// zuul-registry: the port.
    port: Option<u16>,
    /// zuul-registry: the URL clients reach the registry at; builds the token
    /// realm.
    public_url: Option<String>,
    /// zuul-registry: the server certificate (PEM, chain allowed).
    tls_cert: Option<PathBuf>,
    /// zuul-registry: the server key (PEM). TLS is on when both are set.
    tls_key: Option<PathBuf>,
    /// zuul-registry: the token signing secret.
    secret: Option<String>,
    /// The token signing secret, read from a file.
    secret_file: Option<PathBuf>,
    /// zuul-registry: users with plain passwords.
    #[serde(default)]
    users: Vec<RawUser>,
    /// An htpasswd file of bcrypt entries: users with write access.
    htpasswd: Option<PathBuf>,
    /// An htpasswd file of bcrypt entries: users with read access.
    htpasswd_read: Option<PathBuf>,
    /// Whether pulls need no credentials.
    anonymous_read: Option<bool>,
    /// zuul-registry: `{driver: filesystem, root}`.
    storage: Option<RawStorage>,
    /// zuul-registry: the age after which intermediate-registry tags expire.
    expiration: Option<DurationValue>,
    /// Retention rules (instead of `expiration`).
    retention: Option<Vec<RawRetentionRule>>,
    /// Scheduled garbage collection.
    gc: Option<RawGc>,
    /// The most upload sessions one user may have open.
    uploads_per_user: Option<usize>,
    /// Serve `/metrics`.
    metrics: Option<bool>,
    /// `text` or `json`.
    log_format: Option<LogFormat>,
    /// How long issued tokens stay valid.
    token_expiry: Option<DurationValue>,
    /// Webhooks: endpoints told about pushes, deletes and mounts (see the
    /// `notify` module).
    #[serde(default)]
    webhooks: crate::notify::WebhooksConfig,
    /// Pull-through upstreams, one per namespace (see the `upstream` module).
    #[serde(default)]
    upstreams: Vec<crate::upstream::UpstreamConfig>,
    /// Connection timeouts and bound (see the `limits` module).
    #[serde(default)]
    connections: crate::limits::RawConnections,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    pass: String,
    access: RawAccess,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawAccess {
    Read,
    Write,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    driver: String,
    root: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRetentionRule {
    /// Repositories the rule applies to (a regular expression over the whole
    /// name; default: every repository).
    repositories: Option<String>,
    /// Tags the rule applies to (a regular expression over the whole tag;
    /// default: the intermediate registry's `<build>_<tag>`).
    tags: Option<String>,
    /// The age from which matching tags expire.
    older_than: DurationValue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGc {
    interval: Option<DurationValue>,
    grace: Option<DurationValue>,
    uploads: Option<DurationValue>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// TLS files: the certificate chain and the private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// The token signing secret. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    /// A secret from its bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> SigningSecret {
        SigningSecret(bytes.into())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// One validated retention rule: tags of repositories matching
/// `repositories` whose names match `tags`, last pushed at least
/// `older_than` ago, expire. Patterns are regular expressions over the
/// whole name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRuleSettings {
    /// The repository pattern.
    pub repositories: String,
    /// The tag pattern.
    pub tags: String,
    /// The age from which matching tags expire.
    pub older_than: Duration,
}

impl RetentionRuleSettings {
    /// Every repository.
    pub const ALL_REPOSITORIES: &'static str = ".*";
    /// The intermediate registry's tags: `<zuul.build>_<tag>`, as storage
    /// defines them.
    pub const INTERMEDIATE_TAGS: &'static str = speculum_storage::RetentionRule::INTERMEDIATE_TAGS;
}

/// Garbage collection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcSettings {
    /// Run a prune this often while serving (`None`: never; use
    /// `speculum-registry prune`).
    pub interval: Option<Duration>,
    /// How long untagged manifests and unreferenced blobs survive after
    /// their push (a push must finish within it).
    pub grace: Duration,
    /// How long an abandoned upload session survives.
    pub upload_max_age: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            interval: None,
            grace: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// The validated configuration of `speculum-registry serve` (stage two).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// The file it came from.
    pub source: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The URL clients use (no trailing slash), if configured.
    pub public_url: Option<String>,
    /// TLS files; plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
    /// The token signing secret; a random one per start when `None`.
    pub secret: Option<SigningSecret>,
    /// Every user, from `users` and the htpasswd files.
    pub users: Vec<User>,
    /// Whether pulls need no credentials.
    pub anonymous_read: bool,
    /// The filesystem storage root.
    pub storage_root: PathBuf,
    /// Which tags expire (empty: none).
    pub retention: Vec<RetentionRuleSettings>,
    /// Garbage collection.
    pub gc: GcSettings,
    /// The most upload sessions one user (or all anonymous clients) may
    /// have open; past it, starting one is refused with 429.
    pub uploads_per_user: usize,
    /// Whether `/metrics` is served.
    pub metrics: bool,
    /// The log format (the command line may override it).
    pub log_format: LogFormat,
    /// How long issued tokens stay valid.
    pub token_expiry: Duration,
    /// Webhook endpoints and their queue directory.
    pub webhooks: crate::notify::WebhookSettings,
    /// Pull-through upstreams (none: every miss is a 404).
    pub upstreams: Vec<crate::upstream::UpstreamSettings>,
    /// Connection timeouts and the bound on connections.
    pub connections: crate::limits::ConnectionLimits,
}

impl Settings {
    /// Read, substitute the environment into, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, None, format!("cannot read: {e}")))?;
        Settings::parse(&text, path, |name| std::env::var(name).ok())
    }

    /// Parse `text` as the contents of `path`, looking `%(NAME)` variables
    /// up with `env`. Relative paths in the file are relative to `path`'s
    /// directory.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let text = substitute_env(text, path, env)?;
        let file: ConfigFile = serde_norway::from_str(&text).map_err(|e| yaml_error(path, &e))?;
        Settings::from_raw(file.registry, path)
    }

    /// Validate the raw `registry:` section.
    fn from_raw(raw: RawRegistry, path: &Path) -> Result<Settings, ConfigError> {
        let err = |key: &str, message: String| ConfigError::new(path, Some(key), message);
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let address = raw
            .address
            .ok_or_else(|| err("registry.address", "is required".into()))?;
        let ip: IpAddr = address.trim().parse().map_err(|_| {
            err(
                "registry.address",
                format!(
                    "{address:?} is not an IP address (use '::' or '0.0.0.0' for every address)"
                ),
            )
        })?;
        let port = raw
            .port
            .ok_or_else(|| err("registry.port", "is required".into()))?;
        let listen = SocketAddr::new(ip, port);

        let public_url = match raw.public_url {
            None => None,
            Some(url) => {
                Some(validate_public_url(&url).map_err(|m| err("registry.public-url", m))?)
            }
        };

        let tls = match (raw.tls_cert, raw.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: resolve(&cert),
                key: resolve(&key),
            }),
            (Some(_), None) => {
                return Err(err("registry.tls-key", "is required with tls-cert".into()));
            }
            (None, Some(_)) => {
                return Err(err("registry.tls-cert", "is required with tls-key".into()));
            }
        };

        let secret = match (raw.secret, raw.secret_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "registry.secret-file",
                    "give either secret or secret-file, not both".into(),
                ));
            }
            (Some(s), None) => {
                if s.is_empty() {
                    return Err(err("registry.secret", "must not be empty".into()));
                }
                Some(SigningSecret::new(s.into_bytes()))
            }
            (None, Some(file)) => {
                let file = resolve(&file);
                let text = std::fs::read(&file).map_err(|e| {
                    err(
                        "registry.secret-file",
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                let trimmed = trim_newline(&text);
                if trimmed.is_empty() {
                    return Err(err(
                        "registry.secret-file",
                        format!("{} is empty", file.display()),
                    ));
                }
                Some(SigningSecret::new(trimmed.to_vec()))
            }
            (None, None) => None,
        };

        let mut users = Vec::new();
        let mut names = HashSet::new();
        for (i, u) in raw.users.iter().enumerate() {
            let key = format!("registry.users[{i}].name");
            if u.name.is_empty() || u.name.contains(':') {
                return Err(err(&key, "must be non-empty and contain no ':'".into()));
            }
            if !names.insert(u.name.clone()) {
                return Err(err(&key, format!("user {:?} is listed twice", u.name)));
            }
            if u.pass.is_empty() {
                return Err(err(
                    &format!("registry.users[{i}].pass"),
                    "must not be empty".into(),
                ));
            }
            let access = match u.access {
                RawAccess::Read => Access::Read,
                RawAccess::Write => Access::Write,
            };
            users.push(User::plain(u.name.clone(), u.pass.as_bytes(), access));
        }
        for (key, file, access) in [
            ("registry.htpasswd", &raw.htpasswd, Access::Write),
            ("registry.htpasswd-read", &raw.htpasswd_read, Access::Read),
        ] {
            let Some(file) = file else { continue };
            let file = resolve(file);
            for user in read_htpasswd(&file, access).map_err(|m| err(key, m))? {
                if !names.insert(user.name().to_string()) {
                    return Err(err(key, format!("user {:?} is defined twice", user.name())));
                }
                users.push(user);
            }
        }
        // zuul-registry's rule: a read user means reads need credentials.
        let anonymous_read = raw
            .anonymous_read
            .unwrap_or_else(|| !users.iter().any(|u| u.access() == Access::Read));

        let storage = raw
            .storage
            .ok_or_else(|| err("registry.storage", "is required".into()))?;
        if storage.driver != "filesystem" {
            return Err(err(
                "registry.storage.driver",
                format!(
                    "unsupported driver {:?} (speculum supports: filesystem)",
                    storage.driver
                ),
            ));
        }
        let storage_root = storage
            .root
            .map(|r| resolve(&r))
            .ok_or_else(|| err("registry.storage.root", "is required".into()))?;

        let retention = match (raw.expiration, raw.retention) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "registry.retention",
                    "give either expiration or retention, not both".into(),
                ));
            }
            (Some(DurationValue(age)), None) => vec![RetentionRuleSettings {
                repositories: RetentionRuleSettings::ALL_REPOSITORIES.to_string(),
                tags: RetentionRuleSettings::INTERMEDIATE_TAGS.to_string(),
                older_than: age,
            }],
            (None, Some(rules)) => rules
                .into_iter()
                .map(|r| RetentionRuleSettings {
                    repositories: r
                        .repositories
                        .unwrap_or_else(|| RetentionRuleSettings::ALL_REPOSITORIES.to_string()),
                    tags: r
                        .tags
                        .unwrap_or_else(|| RetentionRuleSettings::INTERMEDIATE_TAGS.to_string()),
                    older_than: r.older_than.0,
                })
                .collect(),
            (None, None) => Vec::new(),
        };
        for (i, rule) in retention.iter().enumerate() {
            for (what, pattern) in [("repositories", &rule.repositories), ("tags", &rule.tags)] {
                check_pattern(pattern)
                    .map_err(|m| err(&format!("registry.retention[{i}].{what}"), m))?;
            }
        }

        let mut gc = GcSettings::default();
        if let Some(raw_gc) = raw.gc {
            if let Some(DurationValue(d)) = raw_gc.interval {
                if d < Duration::from_secs(1) {
                    return Err(err("registry.gc.interval", "must be at least 1s".into()));
                }
                gc.interval = Some(d);
            }
            if let Some(DurationValue(d)) = raw_gc.grace {
                gc.grace = d;
            }
            if let Some(DurationValue(d)) = raw_gc.uploads {
                gc.upload_max_age = d;
            }
        }

        let token_expiry = match raw.token_expiry {
            None => DEFAULT_TOKEN_EXPIRY,
            Some(DurationValue(d)) if d >= Duration::from_secs(10) => d,
            Some(_) => {
                return Err(err("registry.token-expiry", "must be at least 10s".into()));
            }
        };

        let upstreams = crate::upstream::validate_upstreams(&raw.upstreams, Some(base))
            .map_err(|e| err(&format!("registry.{}", e.key), e.message))?;

        let connections = raw
            .connections
            .validate()
            .map_err(|(key, m)| err(&format!("registry.connections.{key}"), m))?;

        let webhooks = raw
            .webhooks
            .settings(&storage_root, base)
            .map_err(|e| match e {
                crate::notify::NotifyError::Config { key, message } => {
                    err(&format!("registry.{key}"), message)
                }
                other => err("registry.webhooks", other.to_string()),
            })?;

        Ok(Settings {
            source: path.to_path_buf(),
            listen,
            public_url,
            tls,
            secret,
            users,
            anonymous_read,
            storage_root,
            retention,
            gc,
            uploads_per_user: match raw.uploads_per_user {
                Some(0) => {
                    return Err(err(
                        "registry.uploads-per-user",
                        "must be at least 1".into(),
                    ));
                }
                n => n.unwrap_or(crate::DEFAULT_UPLOADS_PER_USER),
            },
            metrics: raw.metrics.unwrap_or(true),
            log_format: raw.log_format.unwrap_or_default(),
            token_expiry,
            webhooks,
            upstreams,
            connections,
        })
    }
}

/// A serde_norway error as a [`ConfigError`]: the key path (serde_norway
/// puts it before the first `: `) becomes the key, and the line is kept.
fn yaml_error(path: &Path, e: &serde_norway::Error) -> ConfigError {
    let text = e.to_string();
    let location = e
        .location()
        .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
        .unwrap_or_default();
    // serde_norway writes "registry.users[0]: unknown field `x`, ... at line 3 column 5".
    let (key, message) = match text.split_once(": ") {
        Some((key, rest)) if looks_like_key_path(key) => (Some(key.to_string()), rest.to_string()),
        _ => (None, text.clone()),
    };
    let message = match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    ConfigError::new(path, key.as_deref(), format!("{message}{location}"))
}

fn looks_like_key_path(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(' ')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-[]".contains(&b))
}

/// `http(s)://host[:port][/path]`, returned without a trailing slash.
fn validate_public_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with https:// or http://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let ok = !host.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]/~%".contains(&b));
    if ok {
        Ok(url.to_string())
    } else {
        Err(format!("{url:?} is not a valid URL"))
    }
}

/// Check that a retention pattern compiles as a regular expression.
fn check_pattern(pattern: &str) -> Result<(), String> {
    whole_match(pattern)
        .map(|_| ())
        .map_err(|e| format!("invalid pattern {pattern:?}: {e}"))
}

/// Replace `%(ZUUL_NAME)` and `%(SPECULUM_NAME)` with the environment's
/// values. Other `%(` text is left alone.
fn substitute_env(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("%(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = &after[..name_len];
        let closed = after[name_len..].starts_with(')');
        let ours = name.starts_with("ZUUL_") || name.starts_with("SPECULUM_");
        if closed && ours {
            let value = env(name).ok_or_else(|| {
                ConfigError::new(
                    path,
                    None,
                    format!("environment variable {name} is not set (used as %({name}))"),
                )
            })?;
            out.push_str(&value);
            rest = &after[name_len + 1..];
        } else {
            out.push_str("%(");
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Read an htpasswd file of bcrypt entries (`name:$2y$...`), as registry:2
/// accepts them. Blank lines and `#` comments are skipped; any other hash
/// format is refused, naming the line.
pub fn read_htpasswd(path: &Path, access: Access) -> Result<Vec<User>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("{at}: expected name:hash"))?;
        if name.is_empty() {
            return Err(format!("{at}: empty user name"));
        }
        let user = User::bcrypt(name, hash, access).map_err(|m| format!("{at}: {m}"))?;
        users.push(user);
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, Path::new("/etc/speculum/registry.yaml"), |name| {
            (name == "ZUUL_REGISTRY_SECRET").then(|| "s3cr3t".to_string())
        })
    }

    const ZUUL: &str = r#"
registry:
  address: '::'
  port: 5000
  public-url: https://registry.example.com:5000/
  tls-cert: /tls/cert.pem
  tls-key: /tls/cert.key
  secret: "%(ZUUL_REGISTRY_SECRET)"
  users:
    - name: zuul
      pass: pw
      access: write
    - name: reader
      pass: rpw
      access: read
  storage:
    driver: filesystem
    root: /storage
  expiration: 86400
"#;

    #[test]
    fn zuul_registry_config() {
        let s = parse(ZUUL).unwrap();
        assert_eq!(s.listen, "[::]:5000".parse().unwrap());
        assert_eq!(
            s.public_url.as_deref(),
            Some("https://registry.example.com:5000")
        );
        assert_eq!(s.secret, Some(SigningSecret::new(b"s3cr3t".to_vec())));
        assert_eq!(s.users.len(), 2);
        assert!(!s.anonymous_read, "a read user turns anonymous read off");
        assert_eq!(s.storage_root, PathBuf::from("/storage"));
        assert_eq!(s.retention.len(), 1);
        assert_eq!(s.retention[0].older_than, Duration::from_secs(86400));
        assert!(s.metrics);
        assert_eq!(s.token_expiry, DEFAULT_TOKEN_EXPIRY);
        let tls = s.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/tls/cert.pem"));
    }

    #[test]
    fn relative_paths_and_speculum_keys() {
        let s = parse(
            "registry:\n  address: 127.0.0.1\n  port: 0\n  storage: {driver: filesystem, root: data}\n  \
             anonymous-read: false\n  gc: {interval: 1h, grace: 30m, uploads: 2d}\n  uploads-per-user: 7\n  metrics: false\n  \
             log-format: json\n  token-expiry: 5m\n  retention:\n    - {tags: '.*', older-than: 7days}\n",
        )
        .unwrap();
        assert_eq!(s.storage_root, PathBuf::from("/etc/speculum/data"));
        assert!(!s.anonymous_read);
        assert_eq!(s.gc.interval, Some(Duration::from_secs(3600)));
        assert_eq!(s.gc.grace, Duration::from_secs(1800));
        assert_eq!(s.gc.upload_max_age, Duration::from_secs(2 * 86400));
        assert_eq!(s.uploads_per_user, 7);
        assert!(!s.metrics);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.token_expiry, Duration::from_secs(300));
        assert_eq!(s.retention[0].tags, ".*");
        assert_eq!(s.retention[0].repositories, ".*");
        assert_eq!(s.retention[0].older_than, Duration::from_secs(7 * 86400));
        assert!(s.secret.is_none());
        assert!(s.anonymous_read || s.users.is_empty());
        assert_eq!(s.connections, crate::limits::ConnectionLimits::default());
    }

    #[test]
    fn connection_limits() {
        let s = parse(&format!(
            "{BASE}  connections: {{header-timeout: 5s, body-idle-timeout: 1m, \
             keep-alive-timeout: 90, max: 500}}\n"
        ))
        .unwrap();
        assert_eq!(s.connections.header_timeout, Duration::from_secs(5));
        assert_eq!(s.connections.body_idle_timeout, Duration::from_secs(60));
        assert_eq!(s.connections.keep_alive_timeout, Duration::from_secs(90));
        assert_eq!(s.connections.max_connections, Some(500));
        let e = error(&format!("{BASE}  connections: {{header-timeout: 0}}\n"));
        assert!(e.contains("registry.connections.header-timeout"), "{e}");
        let e = error(&format!("{BASE}  connections: {{max: 0}}\n"));
        assert!(e.contains("registry.connections.max"), "{e}");
        let e = error(&format!("{BASE}  connections: {{idle: 1}}\n"));
        assert!(e.contains("idle"), "{e}");
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const BASE: &str = "registry:\n  address: 127.0.0.1\n  port: 5000\n  storage: {driver: filesystem, root: /s}\n";

    #[test]
    fn errors_name_the_key_and_the_file() {
        let e = error(&format!("{BASE}  colour: blue\n"));
        assert!(e.starts_with("/etc/speculum/registry.yaml: "), "{e}");
        assert!(e.contains("colour"), "{e}");
        let e = error(&format!(
            "{BASE}  users: [{{name: a, pass: b, access: admin}}]\n"
        ));
        assert!(e.contains("registry.users[0].access"), "{e}");
        assert!(e.contains("admin"), "{e}");
        let e = error(&format!("{BASE}  gc: {{interval: soon}}\n"));
        assert!(e.contains("registry.gc.interval"), "{e}");
        let e = error(&format!(
            "{BASE}  retention: [{{tags: '(', older-than: 1}}]\n"
        ));
        assert!(e.contains("registry.retention[0].tags"), "{e}");
        let e = error("registry:\n  address: localhost\n  port: 5000\n");
        assert!(e.contains("registry.address"), "{e}");
        let e = error("registry:\n  address: ::1\n  port: 99999\n");
        assert!(e.contains("registry.port"), "{e}");
        let e =
            error("registry:\n  address: ::1\n  port: 1\n  storage: {driver: swift, root: x}\n");
        assert!(e.contains("registry.storage.driver"), "{e}");
        let e = error(&format!("{BASE}  tls-cert: x\n"));
        assert!(e.contains("registry.tls-key"), "{e}");
        let e = error(&format!("{BASE}  public-url: registry.example.com\n"));
        assert!(e.contains("registry.public-url"), "{e}");
        let e = error(&format!("{BASE}  anonymous-read: maybe\n"));
        assert!(e.contains("registry.anonymous-read"), "{e}");
        let e = error("other: 1\n");
        assert!(e.contains("other"), "{e}");
    }

    #[test]
    fn environment_substitution() {
        let s = parse(&format!("{BASE}  secret: '%(ZUUL_REGISTRY_SECRET)'\n")).unwrap();
        assert_eq!(s.secret.unwrap().as_bytes(), b"s3cr3t");
        let e = error(&format!("{BASE}  secret: '%(ZUUL_MISSING)'\n"));
        assert!(e.contains("ZUUL_MISSING"), "{e}");
        assert!(e.starts_with("/etc/speculum/registry.yaml"), "{e}");
        // Not ours: left alone.
        let s = parse(&format!("{BASE}  secret: '%(HOME) %(ZUUL_x'\n")).unwrap();
        assert_eq!(s.secret.unwrap().as_bytes(), b"%(HOME) %(ZUUL_x");
    }

    #[test]
    fn explicit_anonymous_read_wins() {
        let s = parse(&format!(
            "{BASE}  anonymous-read: true\n  users: [{{name: r, pass: p, access: read}}]\n"
        ))
        .unwrap();
        assert!(s.anonymous_read);
        let s = parse(&format!(
            "{BASE}  users: [{{name: w, pass: p, access: write}}]\n"
        ))
        .unwrap();
        assert!(s.anonymous_read);
    }

    #[test]
    fn htpasswd_files() {
        let dir = tempfile::tempdir().unwrap();
        // Cost 4 keeps the test fast.
        let hash = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        std::fs::write(dir.path().join("w"), format!("# writers\n\nalice:{hash}\n")).unwrap();
        std::fs::write(dir.path().join("r"), format!("bob:{hash}\n")).unwrap();
        std::fs::write(dir.path().join("md5"), "carol:$apr1$abc$def\n").unwrap();
        let path = dir.path().join("registry.yaml");
        let text = format!("{BASE}  htpasswd: w\n  htpasswd-read: r\n");
        let s = Settings::parse(&text, &path, |_| None).unwrap();
        assert_eq!(s.users.len(), 2);
        assert_eq!(s.users[0].access(), Access::Write);
        assert_eq!(s.users[1].access(), Access::Read);
        assert!(!s.anonymous_read);
        let text = format!("{BASE}  htpasswd: md5\n");
        let e = Settings::parse(&text, &path, |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry.htpasswd"), "{e}");
        assert!(e.contains("md5:1"), "{e}");
        let text = format!("{BASE}  htpasswd: missing\n");
        let e = Settings::parse(&text, &path, |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry.htpasswd"), "{e}");
    }

    #[test]
    fn the_serve_config_takes_an_upstreams_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hub-token"), "tok\n").unwrap();
        let yaml = r#"
registry:
  address: 127.0.0.1
  port: 5000
  storage: {driver: filesystem, root: store}
  upstreams:
    - namespace: docker.io
      url: https://registry-1.docker.io
      username: mirror
      password-file: hub-token
      tag-ttl: 10m
      repositories: "library/.*"
    - namespace: quay.io
      url: https://quay.io
      tag-ttl: 60
"#;
        let path = dir.path().join("serve.yaml");
        let s = Settings::parse(yaml, &path, |_| None).unwrap();
        assert_eq!(s.upstreams.len(), 2);
        assert_eq!(s.upstreams[0].namespace, "docker.io");
        assert_eq!(
            s.upstreams[0].credentials,
            Some(("mirror".into(), "tok".into()))
        );
        assert_eq!(s.upstreams[0].tag_ttl, Duration::from_secs(600));
        assert_eq!(s.upstreams[1].tag_ttl, Duration::from_secs(60));

        // No upstreams: the default.
        let bare = yaml.split("  upstreams:").next().unwrap();
        let s = Settings::parse(bare, &path, |_| None).unwrap();
        assert!(s.upstreams.is_empty());

        // Errors name the key under `registry.`.
        let bad = yaml.replace("tag-ttl: 60", "tag-ttl: soon");
        let e = Settings::parse(&bad, &path, |_| None).unwrap_err();
        assert_eq!(e.key(), Some("registry.upstreams[1].tag-ttl"), "{e}");
        let bad = yaml.replace("tag-ttl: 60", "tagttl: 60");
        let e = Settings::parse(&bad, &path, |_| None).unwrap_err();
        assert!(e.to_string().contains("tagttl"), "{e}");
    }
}
