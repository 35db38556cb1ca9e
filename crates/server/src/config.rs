//! The registry's configuration, in two stages: the raw YAML of the
//! intermediate registry's file ([`RawRegistry`], serde with
//! `deny_unknown_fields`) and the validated, fully typed [`Settings`] that
//! start a server. [`Settings`] is the one input of
//! [`RegistryServer::start`](crate::RegistryServer::start); the buildset
//! profile builds one with `Settings::buildset` instead of reading a file.
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
//! Each section validates in its own submodule, into its own typed value:
//! `listen` (address, port, public URL, TLS, connections), `auth` (users,
//! htpasswd, anonymous read, token secret and expiry), `storage` (the backend
//! enum, uploads per user), `retention` (expiration, retention, gc),
//! `webhooks`, `upstreams` and `observe` (metrics, log format); `file` reads
//! the text. Patterns are compiled and durations parsed there, once.
//!
//! Dependency direction: `config` imports the sections' owners (`auth`,
//! `notify`, `upstream`, `limits`) for their types and validators; none of
//! them imports `config`. The value helpers they share (durations,
//! whole-match regexes) live in the leaf module `value`, which imports
//! nothing from the crate.
//!
//! **Adding a section** (webhooks, upstreams, ...): give the section its own
//! serde type with `deny_unknown_fields` in its owner's module, add a
//! `#[serde(default)]` field of that type to [`RawRegistry`], validate it in
//! a submodule of its own called from [`Settings::from_raw`], and add the
//! validated value to [`Settings`].

mod auth;
mod file;
mod listen;
mod observe;
mod profile;
mod retention;
mod storage;
mod upstreams;
mod webhooks;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::auth::{AuthSettings, SigningSecret, read_htpasswd};
pub use self::listen::{ListenSettings, TlsFiles, TlsSettings};
pub use self::observe::{LogFormat, MetricsSettings};
pub use self::profile::{InfoSettings, Profile};
pub use self::retention::{GcSettings, RetentionRuleSettings};
pub use self::storage::{FilesystemStorage, StorageBackend, StorageSettings};
pub use crate::auth::DEFAULT_TOKEN_EXPIRY;
use crate::notify::WebhookSettings;
use crate::upstream::UpstreamSettings;
use crate::value::DurationValue;
pub use crate::value::parse_duration;

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
struct RawRegistry {
    /// zuul-registry: the address to listen on (`'::'` for every address).
    pub(super) address: Option<String>,
    /// zuul-registry: the port.
    pub(super) port: Option<u16>,
    /// zuul-registry: the URL clients reach the registry at; builds the token
    /// realm.
    pub(super) public_url: Option<String>,
    /// zuul-registry: the server certificate (PEM, chain allowed).
    pub(super) tls_cert: Option<PathBuf>,
    /// zuul-registry: the server key (PEM). TLS is on when both are set.
    pub(super) tls_key: Option<PathBuf>,
    /// zuul-registry: the token signing secret.
    pub(super) secret: Option<String>,
    /// The token signing secret, read from a file.
    pub(super) secret_file: Option<PathBuf>,
    /// zuul-registry: users with plain passwords.
    #[serde(default)]
    pub(super) users: Vec<auth::RawUser>,
    /// An htpasswd file of bcrypt entries: users with write access.
    pub(super) htpasswd: Option<PathBuf>,
    /// An htpasswd file of bcrypt entries: users with read access.
    pub(super) htpasswd_read: Option<PathBuf>,
    /// Whether pulls need no credentials.
    pub(super) anonymous_read: Option<bool>,
    /// zuul-registry: `{driver: filesystem, root}`.
    pub(super) storage: Option<storage::RawStorage>,
    /// zuul-registry: the age after which intermediate-registry tags expire.
    pub(super) expiration: Option<DurationValue>,
    /// Retention rules (instead of `expiration`).
    pub(super) retention: Option<Vec<retention::RawRetentionRule>>,
    /// Scheduled garbage collection.
    pub(super) gc: Option<retention::RawGc>,
    /// The most upload sessions one user may have open.
    pub(super) uploads_per_user: Option<usize>,
    /// Serve `/metrics`.
    pub(super) metrics: Option<bool>,
    /// `text` or `json`.
    pub(super) log_format: Option<LogFormat>,
    /// How long issued tokens stay valid.
    pub(super) token_expiry: Option<DurationValue>,
    /// Webhooks: endpoints told about pushes, deletes and mounts (see the
    /// `notify` module).
    #[serde(default)]
    pub(super) webhooks: crate::notify::WebhooksConfig,
    /// Pull-through upstreams, one per namespace (see the `upstream` module).
    #[serde(default)]
    pub(super) upstreams: Vec<crate::upstream::UpstreamConfig>,
    /// Connection timeouts and bound (see the `limits` module).
    #[serde(default)]
    pub(super) connections: crate::limits::RawConnections,
}

/// The validated configuration of a registry (stage two): everything
/// [`RegistryServer::start`](crate::RegistryServer::start) needs, parsed and
/// checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// The file it came from (`None`: built in code, as the buildset's).
    pub source: Option<PathBuf>,
    /// Which profile; names the registry in its logs.
    pub profile: Profile,
    /// Where and how to listen.
    pub listen: ListenSettings,
    /// Users, anonymous access and tokens.
    pub auth: AuthSettings,
    /// The storage backend.
    pub storage: StorageSettings,
    /// Which tags expire (empty: none).
    pub retention: Vec<RetentionRuleSettings>,
    /// Garbage collection.
    pub gc: GcSettings,
    /// Webhook endpoints and their queue directory.
    pub webhooks: WebhookSettings,
    /// Pull-through upstreams (none: every miss is a 404).
    pub upstreams: Vec<UpstreamSettings>,
    /// Metrics.
    pub metrics: MetricsSettings,
    /// The log format (the command line may override it).
    pub log_format: LogFormat,
    /// Whether speculative-image registrations are taken (see the
    /// `speculative` module).
    pub speculative: bool,
    /// What the registry announces once it listens, if anything.
    pub info: Option<InfoSettings>,
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
        let text = file::substitute_env(text, path, &env)?;
        let file: ConfigFile =
            serde_norway::from_str(&text).map_err(|e| file::yaml_error(path, &e))?;
        Settings::from_raw(&file.registry, path, &env)
    }

    /// Validate the raw `registry:` section, one section at a time.
    fn from_raw(
        raw: &RawRegistry,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let at = Source {
            file: path,
            base: path.parent().unwrap_or(Path::new(".")),
            env,
        };
        let listen = listen::validate(raw, &at)?;
        let auth = auth::validate(raw, &at)?;
        let storage = storage::validate(raw, &at)?;
        let retention = retention::retention(raw, &at)?;
        let gc = retention::gc(raw, &at)?;
        let upstreams = upstreams::validate(raw, &at)?;
        // Every backend a file can name today has a root; the queue goes
        // beside the config file for one that has none.
        let queue_parent = storage.root().unwrap_or(at.base);
        let webhooks = webhooks::validate(raw, queue_parent, &at)?;
        Ok(Settings {
            source: Some(path.to_path_buf()),
            profile: Profile::Intermediate,
            listen,
            auth,
            storage,
            retention,
            gc,
            webhooks,
            upstreams,
            metrics: observe::metrics(raw),
            log_format: observe::log_format(raw),
            speculative: false,
            info: None,
        })
    }

    /// The file, or `<built-in>` for settings made in code: for messages.
    pub fn source_name(&self) -> String {
        match &self.source {
            Some(path) => path.display().to_string(),
            None => format!("<{} defaults>", self.profile.name()),
        }
    }
}

/// The file being validated: errors name it, and relative paths in it are
/// relative to its directory.
struct Source<'a> {
    file: &'a Path,
    base: &'a Path,
    /// The environment, for values a section may take from it (an object
    /// store's credentials).
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Source<'_> {
    /// An error about `key`.
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, Some(key), message)
    }

    /// `p`, relative to the file's directory unless absolute.
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

#[cfg(test)]
mod tests;
