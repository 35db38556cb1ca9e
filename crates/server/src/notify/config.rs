//! The `webhooks:` section of the registry's config: raw keys as written in
//! YAML ([`WebhooksConfig`]), checked once into [`WebhookSettings`] that the
//! [`Notifier`](super::Notifier) runs on.
//!
//! ```yaml
//! registry:
//!   # ... address, port, users, storage ...
//!   webhooks:
//!     queue-dir: /var/lib/speculum/webhooks   # default: <storage root>/_webhooks
//!     endpoints:
//!       - name: deploy
//!         # Docker Hub-style receivers check a token in the query string.
//!         url: https://cd.example.org/hooks/docker?token=s3cret
//!         format: dockerhub
//!         events: [push]
//!         tags: "v[0-9.]+|latest"
//!       - name: audit
//!         url: https://audit.example.org/registry
//!         format: distribution
//!         events: [push, delete, mount]
//!         headers: {Authorization: "Bearer abc", X-Site: [a, b]}
//!         secret-file: /etc/speculum/audit.key
//!         timeout: 10s
//!         backoff: 2s
//!         max-backoff: 10m
//!         max-retries: 50
//!         ca: /etc/speculum/audit-ca.pem
//! ```
//!
//! Defaults: `events: [push]`, `format: distribution`, `timeout: 5s`,
//! `backoff: 1s` doubling after each failed attempt up to `max-backoff: 5m`,
//! and no `max-retries` (retry until accepted: one delivery that is never
//! accepted holds up the endpoint's later ones, so set `max-retries` for a
//! receiver that may refuse events for good; given-up deliveries go to the
//! queue's `dead/` directory). `repositories` and `tags` are regexes that
//! must match the whole name; with `tags`, events without a tag are not sent.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::NotifyError;
use super::event::Action;

/// Default time a receiver gets to answer one delivery.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait after the first failed attempt; it doubles after each one.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// Default longest wait between two attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The directory, under the storage root, that holds the queues by default.
pub const DEFAULT_QUEUE_DIR: &str = "_webhooks";

/// The `webhooks:` key, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where pending deliveries are kept (one subdirectory per endpoint).
    /// Relative paths are taken from the config file's directory by the
    /// caller; unset means `<storage root>/_webhooks`.
    #[serde(default)]
    pub queue_dir: Option<PathBuf>,
    /// The receivers.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

/// One receiver, as written.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EndpointConfig {
    /// A short name: logs, metrics and the queue directory use it
    /// (`[A-Za-z0-9][A-Za-z0-9._-]*`, at most 64 characters, unique).
    pub name: String,
    /// Where to POST. Docker Hub-style receivers authenticate by a token in
    /// the query string (`?token=...`): the URL simply carries it.
    pub url: String,
    /// Extra request headers: a value or a list of values per name.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValues>,
    /// Which events the receiver wants (default: push only).
    #[serde(default = "default_events")]
    pub events: Vec<Action>,
    /// The payload format (default: distribution).
    #[serde(default)]
    pub format: Format,
    /// A secret: each body is signed with HMAC-SHA256 and the signature sent
    /// as `X-Speculum-Signature: sha256=<hex>`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline removed), instead of
    /// `secret`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// How long one attempt may take (`5s`, `1m`, or seconds as a number).
    #[serde(default, with = "duration_opt")]
    pub timeout: Option<Duration>,
    /// Only repositories whose whole name matches this regex.
    #[serde(default)]
    pub repositories: Option<String>,
    /// Only events with a tag that wholly matches this regex (events without
    /// a tag, such as a push by digest, are then not sent).
    #[serde(default)]
    pub tags: Option<String>,
    /// Give up on a delivery after this many failed retries (unset: retry
    /// until it succeeds).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// The wait after the first failure; it doubles after each failure.
    #[serde(default, with = "duration_opt")]
    pub backoff: Option<Duration>,
    /// The longest wait between two attempts (default: 5 minutes, or
    /// `backoff` if that is longer).
    #[serde(default, with = "duration_opt")]
    pub max_backoff: Option<Duration>,
    /// A PEM file of CA certificates trusted in addition to the system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("events", &self.events)
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("timeout", &self.timeout)
            .field("repositories", &self.repositories)
            .field("tags", &self.tags)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("ca", &self.ca)
            .finish()
    }
}

fn default_events() -> Vec<Action> {
    vec![Action::Push]
}

/// A header's value or values.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum HeaderValues {
    /// `Name: value`
    One(String),
    /// `Name: [a, b]`: the header is sent once per value.
    Many(Vec<String>),
}

impl HeaderValues {
    fn values(&self) -> &[String] {
        match self {
            HeaderValues::One(v) => std::slice::from_ref(v),
            HeaderValues::Many(v) => v,
        }
    }
}

/// The body a receiver gets.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The registry:2 notification envelope, `{"events":[...]}`, one event
    /// per request, as `application/vnd.docker.distribution.events.v2+json`.
    #[default]
    Distribution,
    /// The Docker Hub payload (`callback_url`, `push_data`, `repository`),
    /// as `application/json`. Push events by tag only.
    Dockerhub,
}

/// Durations as a number of seconds or text ([`crate::value::parse_duration`]).
mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Secs(s)) => Ok(Some(Duration::from_secs(s))),
            Some(Raw::Text(t)) => crate::value::parse_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The URL with its query string and password hidden, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.query().is_some() {
                u.set_query(Some("<redacted>"));
            }
            if u.password().is_some() {
                let _ = u.set_password(Some("<redacted>"));
            }
            u.to_string()
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

/// The checked webhook settings (the default: no endpoints).
#[derive(Debug, Clone, Default)]
pub struct WebhookSettings {
    /// The directory of the queues.
    pub queue_dir: PathBuf,
    /// The receivers.
    pub endpoints: Vec<Endpoint>,
}

/// One checked receiver.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) name: String,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) events: Vec<Action>,
    pub(crate) format: Format,
    pub(crate) secret: Option<Vec<u8>>,
    pub(crate) timeout: Duration,
    pub(crate) repositories: Option<Regex>,
    pub(crate) tags: Option<Regex>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) ca_pem: Option<Vec<u8>>,
}

impl Endpoint {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wait before retry number `failures` (1 after the first failure):
    /// `backoff * 2^(failures-1)`, at most `max-backoff`.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.backoff
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &redact_url(self.url.as_str()))
            .field("events", &self.events)
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhooksConfig {
    /// Whether any endpoint is configured.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Check every key. `storage_root` provides the default queue directory;
    /// relative paths (`queue-dir`, `secret-file`, `ca`) are taken from
    /// `base_dir` (the config file's directory). Errors name the key, as
    /// `webhooks.endpoints[1].url`.
    pub fn settings(
        &self,
        storage_root: &Path,
        base_dir: &Path,
    ) -> Result<WebhookSettings, NotifyError> {
        let queue_dir = match &self.queue_dir {
            Some(dir) => base_dir.join(dir),
            None => storage_root.join(DEFAULT_QUEUE_DIR),
        };
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(self.endpoints.len());
        for (i, raw) in self.endpoints.iter().enumerate() {
            let endpoint = raw.check(i, base_dir)?;
            if endpoints.iter().any(|e| e.name == endpoint.name) {
                return Err(config_error(
                    format!("webhooks.endpoints[{i}].name"),
                    format!("{:?} is used by another endpoint", endpoint.name),
                ));
            }
            endpoints.push(endpoint);
        }
        Ok(WebhookSettings {
            queue_dir,
            endpoints,
        })
    }
}

fn config_error(key: String, message: impl Into<String>) -> NotifyError {
    NotifyError::Config {
        key,
        message: message.into(),
    }
}

/// A regex that must match the whole text.
fn anchored(key: String, pattern: &str) -> Result<Regex, NotifyError> {
    crate::value::whole_match(pattern).map_err(|e| config_error(key, format!("invalid regex: {e}")))
}

fn read_file(key: String, path: &Path) -> Result<Vec<u8>, NotifyError> {
    std::fs::read(path)
        .map_err(|e| config_error(key, format!("cannot read {}: {e}", path.display())))
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl EndpointConfig {
    fn check(&self, i: usize, base_dir: &Path) -> Result<Endpoint, NotifyError> {
        let key = |k: &str| format!("webhooks.endpoints[{i}].{k}");
        if !valid_name(&self.name) {
            return Err(config_error(
                key("name"),
                format!(
                    "{:?} is not a valid name (letters, digits, '.', '_', '-'; at most 64)",
                    self.name
                ),
            ));
        }
        let url = Url::parse(&self.url)
            .map_err(|e| config_error(key("url"), format!("invalid url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(config_error(
                key("url"),
                "the url must be http:// or https:// with a host",
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, values) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                config_error(key("headers"), format!("invalid header name {name:?}"))
            })?;
            for value in values.values() {
                let mut value = HeaderValue::from_str(value).map_err(|_| {
                    config_error(key("headers"), format!("invalid value for header {name:?}"))
                })?;
                value.set_sensitive(true);
                headers.append(header.clone(), value);
            }
        }
        if self.events.is_empty() {
            return Err(config_error(key("events"), "list at least one event"));
        }
        if self.format == Format::Dockerhub && self.events.iter().any(|e| *e != Action::Push) {
            return Err(config_error(
                key("events"),
                "the dockerhub format carries push events only",
            ));
        }
        let secret = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err(config_error(
                    key("secret-file"),
                    "give either secret or secret-file, not both",
                ));
            }
            (Some(s), None) => Some(s.as_bytes().to_vec()),
            (None, Some(path)) => {
                let mut bytes = read_file(key("secret-file"), &base_dir.join(path))?;
                while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                    bytes.pop();
                }
                Some(bytes)
            }
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(config_error(key("secret"), "the secret is empty"));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(config_error(key("timeout"), "the timeout must be positive"));
        }
        let backoff = self.backoff.unwrap_or(DEFAULT_BACKOFF);
        let max_backoff = self
            .max_backoff
            .unwrap_or_else(|| DEFAULT_MAX_BACKOFF.max(backoff));
        if backoff.is_zero() {
            return Err(config_error(key("backoff"), "the backoff must be positive"));
        }
        if max_backoff < backoff {
            return Err(config_error(
                key("max-backoff"),
                "max-backoff must not be shorter than backoff",
            ));
        }
        let repositories = self
            .repositories
            .as_deref()
            .map(|p| anchored(key("repositories"), p))
            .transpose()?;
        let tags = self
            .tags
            .as_deref()
            .map(|p| anchored(key("tags"), p))
            .transpose()?;
        let ca_pem = match &self.ca {
            Some(path) => {
                let pem = read_file(key("ca"), &base_dir.join(path))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| config_error(key("ca"), format!("invalid PEM: {e}")))?;
                if certs.is_empty() {
                    return Err(config_error(key("ca"), "the file holds no PEM certificate"));
                }
                Some(pem)
            }
            None => None,
        };
        let mut events = self.events.clone();
        events.sort();
        events.dedup();
        Ok(Endpoint {
            name: self.name.clone(),
            url,
            headers,
            events,
            format: self.format,
            secret,
            timeout,
            repositories,
            tags,
            max_retries: self.max_retries,
            backoff,
            max_backoff,
            ca_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<WebhooksConfig, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn defaults() {
        let c = parse(serde_json::json!({
            "endpoints": [{"name": "a", "url": "http://127.0.0.1:1/hook"}]
        }))
        .unwrap();
        let s = c.settings(Path::new("/srv"), Path::new("/etc")).unwrap();
        assert_eq!(s.queue_dir, Path::new("/srv/_webhooks"));
        let e = &s.endpoints[0];
        assert_eq!(e.events, vec![Action::Push]);
        assert_eq!(e.format, Format::Distribution);
        assert_eq!(e.timeout, DEFAULT_TIMEOUT);
        assert_eq!(e.max_retries, None);
        assert!(e.secret.is_none());
        assert_eq!(e.delay(1), Duration::from_secs(1));
        assert_eq!(e.delay(2), Duration::from_secs(2));
        assert_eq!(e.delay(9), Duration::from_secs(256));
        assert_eq!(e.delay(10), DEFAULT_MAX_BACKOFF);
        assert_eq!(e.delay(u32::MAX), DEFAULT_MAX_BACKOFF);
    }

    #[test]
    fn durations_follow_the_config_file_rule() {
        // The same rule as every other duration in the config file: a number,
        // a string of digits, or a human duration; anything else is refused.
        for (value, expected) in [
            (serde_json::json!(30), Duration::from_secs(30)),
            (serde_json::json!("30"), Duration::from_secs(30)),
            (serde_json::json!(" 2m "), Duration::from_secs(120)),
        ] {
            let c = parse(serde_json::json!({
                "endpoints": [{"name": "a", "url": "http://127.0.0.1:1/hook", "timeout": value}]
            }))
            .unwrap();
            let s = c.settings(Path::new("/srv"), Path::new("/etc")).unwrap();
            assert_eq!(s.endpoints[0].timeout, expected);
        }
        let bad = parse(serde_json::json!({
            "endpoints": [{"name": "a", "url": "http://127.0.0.1:1/hook", "timeout": "soon"}]
        }));
        assert!(bad.unwrap_err().to_string().contains("invalid duration"));
    }

    #[test]
    fn full() {
        let c = parse(serde_json::json!({
            "queue-dir": "q",
            "endpoints": [{
                "name": "hub", "url": "https://h.example/x?token=t",
                "headers": {"X-One": "1", "X-Two": ["a", "b"]},
                "events": ["push", "push"], "format": "dockerhub", "secret": "k",
                "timeout": "250ms", "repositories": "org/.*", "tags": "v[0-9]+",
                "max-retries": 3, "backoff": 2, "max-backoff": "1m"
            }]
        }))
        .unwrap();
        let s = c.settings(Path::new("/srv"), Path::new("/etc")).unwrap();
        assert_eq!(s.queue_dir, Path::new("/etc/q"));
        let e = &s.endpoints[0];
        assert_eq!(e.events, vec![Action::Push]);
        assert_eq!(e.headers.get_all("x-two").iter().count(), 2);
        assert_eq!(e.timeout, Duration::from_millis(250));
        assert_eq!(e.delay(1), Duration::from_secs(2));
        assert_eq!(e.delay(7), Duration::from_secs(60));
        let tags = e.tags.as_ref().unwrap();
        assert!(tags.is_match("v1") && !tags.is_match("v1-rc") && !tags.is_match("xv1"));
        let debug = format!("{e:?} {:?}", c.endpoints[0]);
        assert!(
            !debug.contains("token=t") && !debug.contains("\"k\""),
            "{debug}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                serde_json::json!({"name": "a b", "url": "http://x/"}),
                "endpoints[0].name",
            ),
            (
                serde_json::json!({"name": "a", "url": "ftp://x/"}),
                "endpoints[0].url",
            ),
            (
                serde_json::json!({"name": "a", "url": "http://x/", "format": "dockerhub", "events": ["delete"]}),
                "endpoints[0].events",
            ),
            (
                serde_json::json!({"name": "a", "url": "http://x/", "tags": "("}),
                "endpoints[0].tags",
            ),
            (
                serde_json::json!({"name": "a", "url": "http://x/", "backoff": "1m", "max-backoff": "1s"}),
                "endpoints[0].max-backoff",
            ),
            (
                serde_json::json!({"name": "a", "url": "http://x/", "ca": "/nonexistent/ca.pem"}),
                "endpoints[0].ca",
            ),
        ];
        for (endpoint, key) in cases {
            let c = parse(serde_json::json!({ "endpoints": [endpoint] })).unwrap();
            let e = c
                .settings(Path::new("/srv"), Path::new("/etc"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e} should name {key}");
        }
        let c = parse(serde_json::json!({"endpoints": [
            {"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/"}
        ]}))
        .unwrap();
        assert!(c.settings(Path::new("/"), Path::new("/")).is_err());
        assert!(
            parse(serde_json::json!({"endpoints": [{"name": "a", "url": "http://x/", "nope": 1}]}))
                .is_err()
        );
        assert!(parse(serde_json::json!({"endpoints": [{"name": "a", "url": "http://x/", "events": ["pull"]}]})).is_err());
        assert!(parse(serde_json::json!({"endpoints": [{"name": "a", "url": "http://x/", "timeout": "soon"}]})).is_err());
    }
}
