//! Who may do what: `users`, `htpasswd`, `htpasswd-read`, `anonymous-read`,
//! and the token keys `secret`, `secret-file` and `token-expiry`.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, RawRegistry, Source};
use crate::auth::{Access, DEFAULT_TOKEN_EXPIRY, User};
use crate::value::{DurationValue, trim_newline};

/// A zuul-registry user with a plain password.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
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

/// Users, anonymous access and token signing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthSettings {
    /// Every user, from `users` and the htpasswd files.
    pub users: Vec<User>,
    /// Whether pulls need no credentials.
    pub anonymous_read: bool,
    /// The token signing secret; a random one per start when `None`.
    pub secret: Option<SigningSecret>,
    /// How long issued tokens stay valid.
    pub token_expiry: Duration,
}

impl AuthSettings {
    /// `users`, anonymous pulls as given, tokens signed with a random key
    /// for the default lifetime.
    pub fn new(users: Vec<User>, anonymous_read: bool) -> AuthSettings {
        AuthSettings {
            users,
            anonymous_read,
            secret: None,
            token_expiry: DEFAULT_TOKEN_EXPIRY,
        }
    }
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

/// Validate the auth keys of `raw`.
pub(super) fn validate(raw: &RawRegistry, at: &Source) -> Result<AuthSettings, ConfigError> {
    let secret = secret(raw, at)?;
    let users = users(raw, at)?;
    // zuul-registry's rule: a read user means reads need credentials.
    let anonymous_read = raw
        .anonymous_read
        .unwrap_or_else(|| !users.iter().any(|u| u.access() == Access::Read));
    let token_expiry = match raw.token_expiry {
        None => DEFAULT_TOKEN_EXPIRY,
        Some(DurationValue(d)) if d >= Duration::from_secs(10) => d,
        Some(_) => return Err(at.err("registry.token-expiry", "must be at least 10s")),
    };
    Ok(AuthSettings {
        users,
        anonymous_read,
        secret,
        token_expiry,
    })
}

/// `secret` or `secret-file` (not both), never empty.
fn secret(raw: &RawRegistry, at: &Source) -> Result<Option<SigningSecret>, ConfigError> {
    match (&raw.secret, &raw.secret_file) {
        (Some(_), Some(_)) => Err(at.err(
            "registry.secret-file",
            "give either secret or secret-file, not both",
        )),
        (Some(s), None) if s.is_empty() => Err(at.err("registry.secret", "must not be empty")),
        (Some(s), None) => Ok(Some(SigningSecret::new(s.as_bytes()))),
        (None, Some(file)) => {
            let key = "registry.secret-file";
            let file = at.resolve(file);
            let text = std::fs::read(&file)
                .map_err(|e| at.err(key, format!("cannot read {}: {e}", file.display())))?;
            match trim_newline(&text) {
                [] => Err(at.err(key, format!("{} is empty", file.display()))),
                trimmed => Ok(Some(SigningSecret::new(trimmed))),
            }
        }
        (None, None) => Ok(None),
    }
}

/// `users` then the htpasswd files; a name may appear only once.
fn users(raw: &RawRegistry, at: &Source) -> Result<Vec<User>, ConfigError> {
    let mut users = Vec::new();
    let mut names = HashSet::new();
    for (i, u) in raw.users.iter().enumerate() {
        let key = format!("registry.users[{i}].name");
        if u.name.is_empty() || u.name.contains(':') {
            return Err(at.err(&key, "must be non-empty and contain no ':'"));
        }
        if !names.insert(u.name.clone()) {
            return Err(at.err(&key, format!("user {:?} is listed twice", u.name)));
        }
        if u.pass.is_empty() {
            return Err(at.err(&format!("registry.users[{i}].pass"), "must not be empty"));
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
        for user in read_htpasswd(&at.resolve(file), access).map_err(|m| at.err(key, m))? {
            if !names.insert(user.name().to_string()) {
                return Err(at.err(key, format!("user {:?} is defined twice", user.name())));
            }
            users.push(user);
        }
    }
    Ok(users)
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
