//! Who may do what: users, the auth policy, and the Bearer token flow.
//!
//! The buildset and intermediate profiles differ only in the policy they
//! build: the buildset registry lets anyone pull and one generated user push;
//! the intermediate registry has configured users (plain passwords as in
//! zuul-registry, or bcrypt htpasswd entries) with read or write access and
//! may require credentials for pulls. Handlers only ever ask
//! [`AuthPolicy::authorize`] whether an [`Action`] on a repository is allowed.
//!
//! **Why `GET /v2/` answers 401 to anonymous clients** even when anonymous
//! pulls are allowed: Docker reads auth challenges only from that probe. A
//! 200 there means it never sends credentials, so `docker push` fails. The
//! challenge is a Bearer one, so every client (Docker, containers/image,
//! containerd) fetches a token from `/auth/token`, anonymously for pulls:
//! pull tokens are granted without credentials when anonymous read is on,
//! even when wrong credentials come along (Docker daemons send their Docker
//! Hub credentials to mirrors). Pulls without any credentials also work
//! directly on the other endpoints, for clients that never probe
//! (containerd's mirror resolver). HTTP Basic on every endpoint keeps working
//! for the speculum helper and curl.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use speculum_oci::{ErrorCode, RepositoryName};

use crate::error::ApiError;
use crate::token::{Claims, Grant, TokenKey};

/// The service name in challenges and the tokens' audience, unless the
/// profile sets another.
pub const DEFAULT_SERVICE: &str = "speculum";

/// The default token lifetime.
pub const DEFAULT_TOKEN_EXPIRY: Duration = Duration::from_secs(600);

/// How long a successful password check is remembered, so bcrypt runs once
/// per client and not once per request.
const PASSWORD_CACHE_TTL: Duration = Duration::from_secs(300);
/// At most this many remembered checks.
const PASSWORD_CACHE_MAX: usize = 4096;
/// The bcrypt cost of the dummy hash when no bcrypt user sets one.
const DUMMY_COST: u32 = 10;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read: GET/HEAD of blobs, manifests, tags, catalog, referrers.
    Pull,
    /// Write: uploads and manifest pushes.
    Push,
    /// Delete blobs, manifests or tags.
    Delete,
}

impl Action {
    /// The action's name in token scopes.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// The actions a challenge asks for: a push needs pull too (clients
    /// check for existing blobs), as Docker asks.
    fn challenge_actions(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "pull,push",
            Action::Delete => "delete",
        }
    }
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Pull only.
    Read,
    /// Pull, push and delete.
    Write,
}

impl Access {
    fn allows(self, action: Action) -> bool {
        match self {
            Access::Write => true,
            Access::Read => action == Action::Pull,
        }
    }
}

/// How a user's password is checked.
#[derive(Clone)]
enum Secret {
    /// The SHA-256 of a password known in clear (zuul-registry's `users`, the
    /// buildset user), compared in constant time.
    Plain([u8; 32]),
    /// A bcrypt hash from an htpasswd file.
    Bcrypt(String),
}

/// A user of the registry.
#[derive(Clone)]
pub struct User {
    name: String,
    secret: Secret,
    access: Access,
}

impl User {
    /// A user whose password is known in clear.
    pub fn plain(name: impl Into<String>, password: impl AsRef<[u8]>, access: Access) -> User {
        User {
            name: name.into(),
            secret: Secret::Plain(Sha256::digest(password.as_ref()).into()),
            access,
        }
    }

    /// A user with a bcrypt hash (`$2y$`, `$2b$` or `$2a$`, as registry:2's
    /// htpasswd files hold). Other formats are refused.
    pub fn bcrypt(name: impl Into<String>, hash: &str, access: Access) -> Result<User, String> {
        let prefix_ok = ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p));
        if !prefix_ok {
            return Err(
                "not a bcrypt hash ($2y$, $2b$ or $2a$); create entries with `htpasswd -B`".into(),
            );
        }
        if bcrypt_cost(hash).is_none() || hash.len() != 60 {
            return Err("malformed bcrypt hash".into());
        }
        Ok(User {
            name: name.into(),
            secret: Secret::Bcrypt(hash.to_string()),
            access,
        })
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the user may do.
    pub fn access(&self) -> Access {
        self.access
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("access", &self.access)
            .finish()
    }
}

/// The cost field of a bcrypt hash (`$2y$10$...`).
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let cost = hash.get(4..6)?.parse::<u32>().ok()?;
    (hash.get(6..7) == Some("$") && (4..=31).contains(&cost)).then_some(cost)
}

/// Who made a request, once authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No (valid) credentials; allowed because the policy permits it.
    Anonymous,
    /// A known user.
    User(String),
}

/// What a request is about.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resource<'a> {
    /// A repository: the name as sent in the path, and as stored (after
    /// namespace resolution). A token for either name grants access.
    Repository { sent: &'a str, stored: &'a str },
    /// The catalog.
    Catalog,
}

impl Resource<'_> {
    fn scope(&self, action: Action) -> String {
        match self {
            Resource::Repository { sent, .. } => {
                format!("repository:{sent}:{}", action.challenge_actions())
            }
            Resource::Catalog => "registry:catalog:*".to_string(),
        }
    }

    fn granted_by(&self, claims: &Claims, action: Action) -> bool {
        match self {
            Resource::Repository { sent, stored } => {
                claims.allows("repository", sent, action.as_str())
                    || claims.allows("repository", stored, action.as_str())
            }
            Resource::Catalog => claims.allows("registry", "catalog", "*"),
        }
    }
}

/// The users and their password checks, shared by clones of a policy.
struct UserDb {
    users: Vec<User>,
    /// A bcrypt hash checked for unknown users (and beside plain users) so
    /// that every check costs one bcrypt run when any bcrypt user exists; at
    /// the highest configured cost.
    dummy_bcrypt: Option<String>,
    /// Compared for unknown users when no bcrypt user exists.
    dummy_plain: [u8; 32],
    /// Remembered successful checks: HMAC(cache_key, user, password).
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    cache_key: [u8; 32],
}

impl UserDb {
    fn new(users: Vec<User>) -> UserDb {
        // The highest cost configured: with mixed costs, a dummy at the first
        // entry's cost let unknown names answer many times faster than the
        // slow users, telling which names exist. Made once, here: hashing at
        // a high cost takes long.
        let cost = users
            .iter()
            .filter_map(|u| match &u.secret {
                Secret::Bcrypt(h) => Some(bcrypt_cost(h).unwrap_or(DUMMY_COST)),
                Secret::Plain(_) => None,
            })
            .max();
        let dummy_bcrypt = cost.and_then(|cost| {
            let password = hex::encode(rand::random::<[u8; 16]>());
            match bcrypt::hash(password, cost) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot make the dummy bcrypt hash");
                    None
                }
            }
        });
        UserDb {
            users,
            dummy_bcrypt,
            dummy_plain: rand::random(),
            cache: Mutex::new(HashMap::new()),
            cache_key: rand::random(),
        }
    }

    fn has_bcrypt(&self) -> bool {
        self.dummy_bcrypt.is_some()
    }

    fn find(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    fn cache_id(&self, name: &str, password: &str) -> [u8; 32] {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.cache_key) else {
            return [0; 32];
        };
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn cached(&self, id: &[u8; 32]) -> bool {
        let Ok(cache) = self.cache.lock() else {
            return false;
        };
        cache
            .get(id)
            .is_some_and(|at| at.elapsed() < PASSWORD_CACHE_TTL)
    }

    fn remember(&self, id: [u8; 32]) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= PASSWORD_CACHE_MAX {
                cache.retain(|_, at| at.elapsed() < PASSWORD_CACHE_TTL);
                if cache.len() >= PASSWORD_CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(id, Instant::now());
        }
    }

    /// Check `name`/`password`. The work done is the same whether the user
    /// exists or not: one constant-time comparison, plus one bcrypt run when
    /// any bcrypt user exists (against a dummy hash of the same cost for
    /// unknown and plain users).
    fn verify(&self, name: &str, password: &str) -> Option<&User> {
        let id = self.cache_id(name, password);
        if self.cached(&id) {
            return self.find(name);
        }
        let user = self.find(name);
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let ok = match user.map(|u| &u.secret) {
            Some(Secret::Plain(expected)) => {
                let ok = constant_time_eq(expected, &digest);
                if let Some(dummy) = &self.dummy_bcrypt {
                    let _ = bcrypt::verify(password, dummy);
                }
                ok
            }
            Some(Secret::Bcrypt(hash)) => {
                let _ = constant_time_eq(&self.dummy_plain, &digest);
                bcrypt::verify(password, hash).unwrap_or(false)
            }
            None => {
                let _ = constant_time_eq(&self.dummy_plain, &digest);
                if let Some(dummy) = &self.dummy_bcrypt {
                    let _ = bcrypt::verify(password, dummy);
                }
                false
            }
        };
        if ok {
            self.remember(id);
            user
        } else {
            None
        }
    }
}

/// Credentials as presented.
enum Presented {
    None,
    Basic(String, String),
    Bearer(String),
    Malformed,
}

fn presented(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Some(value) = value.to_str().ok().map(str::trim) else {
        return Presented::Malformed;
    };
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Presented::Malformed;
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Bearer(rest.trim().to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Presented::Malformed;
    }
    match parse_basic(rest) {
        // containers/image answers a Basic challenge with `:` when it has no
        // credentials: that is an anonymous request, not a wrong password.
        Some((user, password)) if user.is_empty() && password.is_empty() => Presented::None,
        Some((user, password)) => Presented::Basic(user, password),
        None => Presented::Malformed,
    }
}

/// What the credentials turned out to be.
enum Checked {
    Anonymous,
    User(String, Access),
    Token(Claims),
    Invalid(&'static str),
}

/// The answer of the token endpoint.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenResponse {
    pub(crate) token: String,
    pub(crate) access_token: String,
    pub(crate) expires_in: u64,
    pub(crate) issued_at: String,
}

/// The registry's auth policy.
#[derive(Clone)]
pub struct AuthPolicy {
    /// No checks at all (tests, or behind an authenticating proxy).
    open: bool,
    anonymous_pull: bool,
    db: Arc<UserDb>,
    key: TokenKey,
    public_url: Option<String>,
    tls: bool,
}

impl fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthPolicy")
            .field("open", &self.open)
            .field("anonymous_pull", &self.anonymous_pull)
            .field("users", &self.db.users)
            .field("key", &self.key)
            .field("public_url", &self.public_url)
            .field("tls", &self.tls)
            .finish()
    }
}

impl AuthPolicy {
    fn build(open: bool, anonymous_pull: bool, users: Vec<User>) -> AuthPolicy {
        AuthPolicy {
            open,
            anonymous_pull,
            db: Arc::new(UserDb::new(users)),
            // A random secret per start unless the profile configures one.
            key: TokenKey::new(
                &rand::random::<[u8; 32]>(),
                DEFAULT_SERVICE,
                DEFAULT_TOKEN_EXPIRY,
            ),
            public_url: None,
            tls: false,
        }
    }

    /// No authentication at all: everyone may do everything. For tests and
    /// for running behind an authenticating proxy.
    pub fn open() -> AuthPolicy {
        AuthPolicy::build(true, true, Vec::new())
    }

    /// The buildset profile: anonymous pull, and push/delete only for
    /// `username` with `password` (HTTP Basic, or a token obtained with it).
    /// Tokens are signed with a random secret made now.
    pub fn buildset(username: impl Into<String>, password: impl AsRef<[u8]>) -> AuthPolicy {
        AuthPolicy::build(
            false,
            true,
            vec![User::plain(username, password, Access::Write)],
        )
    }

    /// A policy with explicit users; `anonymous_pull` decides whether pulls
    /// need credentials. With no users, nobody can push.
    pub fn with_users(users: Vec<User>, anonymous_pull: bool) -> AuthPolicy {
        AuthPolicy::build(false, anonymous_pull, users)
    }

    /// Sign tokens with `secret` for `service`, valid for `expiry`.
    pub fn with_token_key(
        mut self,
        secret: &[u8],
        service: impl Into<String>,
        expiry: Duration,
    ) -> AuthPolicy {
        self.key = TokenKey::new(secret, service, expiry);
        self
    }

    /// The URL clients reach the registry at (no trailing slash): the token
    /// realm is `<url>/auth/token`. Without it the realm is derived from the
    /// request's `Host` and [`AuthPolicy::with_tls`].
    pub fn with_public_url(mut self, url: Option<String>) -> AuthPolicy {
        self.public_url = url.map(|u| u.trim_end_matches('/').to_string());
        self
    }

    /// Whether the registry serves TLS (the derived realm is `https`).
    pub fn with_tls(mut self, tls: bool) -> AuthPolicy {
        self.tls = tls;
        self
    }

    /// Whether pulls need no credentials.
    pub fn anonymous_pull(&self) -> bool {
        self.open || self.anonymous_pull
    }

    /// The token key (for tests that need to mint or inspect tokens).
    pub fn token_key(&self) -> &TokenKey {
        &self.key
    }

    /// The token endpoint's URL for a request with these headers.
    pub(crate) fn realm(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.public_url {
            return format!("{url}/auth/token");
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| valid_host(h))
            .unwrap_or("localhost");
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}/auth/token")
    }

    /// The Bearer challenge, with `scope` when given.
    fn challenge(&self, headers: &HeaderMap, scope: Option<&str>) -> HeaderValue {
        let mut text = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(headers),
            self.key.service()
        );
        if let Some(scope) = scope {
            text.push_str(&format!(",scope=\"{scope}\""));
        }
        HeaderValue::from_str(&text).unwrap_or_else(|_| {
            HeaderValue::from_static("Bearer realm=\"/auth/token\",service=\"speculum\"")
        })
    }

    fn unauthorized(&self, headers: &HeaderMap, scope: Option<&str>, message: &str) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized)
            .message(message)
            .header(header::WWW_AUTHENTICATE, self.challenge(headers, scope))
    }

    /// Check a name and password, off the async threads when bcrypt is
    /// involved.
    async fn check_password(&self, name: String, password: String) -> Option<(String, Access)> {
        let db = self.db.clone();
        let check = move || {
            db.verify(&name, &password)
                .map(|u| (u.name.clone(), u.access))
        };
        let verified = if self.db.has_bcrypt() {
            tokio::task::spawn_blocking(check).await.ok().flatten()
        } else {
            check()
        };
        if let Some((name, _)) = &verified {
            crate::access_log::record_user(name);
        }
        verified
    }

    async fn check(&self, headers: &HeaderMap) -> Checked {
        match presented(headers) {
            Presented::None => Checked::Anonymous,
            Presented::Malformed => Checked::Invalid("malformed Authorization header"),
            Presented::Basic(name, password) => match self.check_password(name, password).await {
                Some((name, access)) => Checked::User(name, access),
                None => Checked::Invalid("invalid username or password"),
            },
            Presented::Bearer(token) => match self.key.verify(&token, SystemTime::now()) {
                Ok(claims) => {
                    if !claims.sub.is_empty() {
                        crate::access_log::record_user(&claims.sub);
                    }
                    Checked::Token(claims)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "token refused");
                    Checked::Invalid("invalid or expired token")
                }
            },
        }
    }

    /// Decide whether the request may perform `action` on `resource`.
    ///
    /// Pulls with anonymous pull allowed succeed whatever credentials came
    /// with them: Docker daemons send their Docker Hub credentials to mirrors.
    pub(crate) async fn authorize(
        &self,
        headers: &HeaderMap,
        resource: Resource<'_>,
        action: Action,
    ) -> Result<Identity, ApiError> {
        if self.open {
            return Ok(Identity::Anonymous);
        }
        let anonymous_ok = action == Action::Pull && self.anonymous_pull;
        let scope = resource.scope(action);
        match self.check(headers).await {
            Checked::User(name, access) if access.allows(action) => Ok(Identity::User(name)),
            Checked::User(..) => Err(denied(resource, action)),
            Checked::Token(claims) if resource.granted_by(&claims, action) => {
                Ok(if claims.sub.is_empty() {
                    Identity::Anonymous
                } else {
                    Identity::User(claims.sub)
                })
            }
            Checked::Token(_) if anonymous_ok => Ok(Identity::Anonymous),
            Checked::Token(claims) => {
                // A known user who may not do this gets 403; otherwise the
                // client may fetch a token for the scope it needs.
                let user_may = self.db.find(&claims.sub).map(|u| u.access.allows(action));
                if user_may == Some(false) {
                    Err(denied(resource, action))
                } else {
                    Err(self.unauthorized(
                        headers,
                        Some(&scope),
                        "the token does not grant this action",
                    ))
                }
            }
            Checked::Anonymous | Checked::Invalid(_) if anonymous_ok => Ok(Identity::Anonymous),
            Checked::Invalid(message) => Err(self.unauthorized(headers, Some(&scope), message)),
            Checked::Anonymous => {
                Err(self.unauthorized(headers, Some(&scope), "authentication required"))
            }
        }
    }

    /// Decide whether the request comes from a user who may push (HTTP
    /// Basic, or a token issued to such a user): the one who may change
    /// what this registry serves as a whole, such as registering
    /// speculative images. No credentials, or wrong ones, are a 401; a
    /// reader is a 403.
    pub(crate) async fn authorize_writer(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        if self.open {
            return Ok(Identity::Anonymous);
        }
        let may_push = |name: &str| {
            self.db
                .find(name)
                .is_some_and(|u| u.access.allows(Action::Push))
        };
        let refused = || {
            ApiError::new(ErrorCode::Denied).message("only a user with write access may do this")
        };
        match self.check(headers).await {
            Checked::User(name, access) if access.allows(Action::Push) => Ok(Identity::User(name)),
            Checked::User(..) => Err(refused()),
            Checked::Token(claims) if may_push(&claims.sub) => Ok(Identity::User(claims.sub)),
            Checked::Token(claims) if claims.sub.is_empty() => {
                Err(self.unauthorized(headers, None, "an anonymous token cannot do this"))
            }
            Checked::Token(_) => Err(refused()),
            Checked::Invalid(message) => Err(self.unauthorized(headers, None, message)),
            Checked::Anonymous => Err(self.unauthorized(headers, None, "authentication required")),
        }
    }

    /// Whether the request could perform `action` on `resource` (no error,
    /// for optional steps such as a mount's source check).
    pub(crate) async fn allows(
        &self,
        headers: &HeaderMap,
        resource: Resource<'_>,
        action: Action,
    ) -> bool {
        self.authorize(headers, resource, action).await.is_ok()
    }

    /// The answer to `GET /v2/`, the endpoint clients probe auth with: `Ok`
    /// for valid credentials (a password or any token of ours), 401 with a
    /// Bearer challenge otherwise, anonymous clients included (see the
    /// module docs for why).
    pub(crate) async fn ping(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.open {
            return Ok(());
        }
        match self.check(headers).await {
            Checked::User(..) | Checked::Token(_) => Ok(()),
            Checked::Invalid(message) => Err(self.unauthorized(headers, None, message)),
            Checked::Anonymous => Err(self.unauthorized(headers, None, "authentication required")),
        }
    }

    /// `GET /auth/token`: check HTTP Basic credentials and issue a token for
    /// the requested scopes (each `repository:NAME:ACTIONS` or
    /// `registry:catalog:*`), granting the subset the caller may have.
    pub(crate) async fn issue_token(
        &self,
        headers: &HeaderMap,
        scopes: &[String],
    ) -> Result<TokenResponse, ApiError> {
        let requested: Vec<Requested> = scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
            .filter_map(parse_scope)
            .collect();
        let login_refused = |message: &str| {
            ApiError::new(ErrorCode::Unauthorized)
                .message(message)
                .header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"speculum\""),
                )
        };
        let pull_only = !requested.is_empty() && requested.iter().all(Requested::pull_only);
        let (subject, access) = match presented(headers) {
            Presented::Basic(name, password) => match self.check_password(name, password).await {
                Some((name, access)) => (name, Some(access)),
                // Wrong credentials still get what anonymous clients get
                // when all they ask is to pull: Docker daemons send Docker
                // Hub credentials to mirrors.
                None if pull_only && self.anonymous_pull() => (String::new(), None),
                None => return Err(login_refused("invalid username or password")),
            },
            Presented::Bearer(_) | Presented::Malformed if pull_only && self.anonymous_pull() => {
                (String::new(), None)
            }
            Presented::Bearer(_) | Presented::Malformed => {
                return Err(login_refused("HTTP Basic credentials required"));
            }
            Presented::None => {
                if requested.is_empty() && !self.anonymous_pull() {
                    // A login probe: only valid credentials pass.
                    return Err(login_refused("authentication required"));
                }
                (String::new(), None)
            }
        };
        let grants: Vec<Grant> = requested
            .iter()
            .filter_map(|r| r.grant(access, self.anonymous_pull()))
            .collect();
        // No credentials and no scope while anonymous read is on is what
        // podman's anonymous `search` sends before reading the catalog: it
        // gets a token that grants nothing, as distribution's token servers
        // answer. Anonymous requests for scopes of which nothing is granted
        // still get 401, so that clients send their credentials.
        let anonymous_probe = requested.is_empty() && access.is_none();
        if access.is_none() && grants.is_empty() && !anonymous_probe {
            return Err(login_refused("authentication required"));
        }
        let now = SystemTime::now();
        let claims = self.key.claims(&subject, grants, now);
        let token = self.key.sign(&claims);
        let issued_at = time::OffsetDateTime::from_unix_timestamp(claims.iat as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        tracing::debug!(
            sub = subject,
            scopes = ?claims.access,
            "token issued"
        );
        Ok(TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: self.key.ttl().as_secs(),
            issued_at,
        })
    }
}

/// 403 for a known user who may not do `action` on `resource`.
///
/// The detail names what was refused, in the shape distribution uses for
/// its access records. It is not decoration: Docker's client turns an error
/// that has neither detail nor a message of its own into a bare code, which
/// its push retry logic does not recognise as final, so `docker push` by a
/// read-only user would retry for about 50 seconds before failing.
fn denied(resource: Resource<'_>, action: Action) -> ApiError {
    let (kind, name) = match resource {
        Resource::Repository { sent, .. } => ("repository", sent),
        Resource::Catalog => ("registry", "catalog"),
    };
    ApiError::new(ErrorCode::Denied)
        .message("requested access to the resource is denied")
        .detail(serde_json::json!([{
            "Type": kind,
            "Name": name,
            "Action": action.as_str(),
        }]))
}

/// One scope of a token request.
#[derive(Debug, PartialEq, Eq)]
struct Requested {
    kind: String,
    name: String,
    actions: Vec<String>,
}

impl Requested {
    fn pull_only(&self) -> bool {
        self.actions.iter().all(|a| a == "pull")
    }

    /// The grant for a caller with `access` (`None`: anonymous).
    fn grant(&self, access: Option<Access>, anonymous_pull: bool) -> Option<Grant> {
        let may = |action: Action| match access {
            Some(a) => a.allows(action),
            None => action == Action::Pull && anonymous_pull,
        };
        let actions: Vec<String> = if self.kind == "registry" {
            // The catalog: for anyone who may pull.
            if self.name == "catalog" && may(Action::Pull) {
                vec!["*".to_string()]
            } else {
                Vec::new()
            }
        } else {
            let mut out: Vec<String> = Vec::new();
            for requested in &self.actions {
                let expanded: &[Action] = match requested.as_str() {
                    "pull" => &[Action::Pull],
                    "push" => &[Action::Push],
                    "delete" => &[Action::Delete],
                    "*" => &[Action::Pull, Action::Push, Action::Delete],
                    _ => &[],
                };
                for &action in expanded {
                    let name = action.as_str().to_string();
                    if may(action) && !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
            out
        };
        (!actions.is_empty()).then(|| Grant {
            kind: self.kind.clone(),
            name: self.name.clone(),
            actions,
        })
    }
}

/// `repository:NAME:ACTIONS`, `repository(plugin):NAME:ACTIONS` or
/// `registry:catalog:*`. Names that are not valid repository names are
/// ignored.
fn parse_scope(scope: &str) -> Option<Requested> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
    match kind {
        "repository" => {
            name.parse::<RepositoryName>().ok()?;
        }
        "registry" if name == "catalog" => {}
        _ => return None,
    }
    Some(Requested {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: actions
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// A `Host` header value safe to put in a realm: a host name or IP literal
/// with an optional port.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
}

/// `base64(user:password)`; the password may itself contain `:`.
fn parse_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Compare two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {v}")).unwrap(),
        );
        h
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    const REPO: Resource<'static> = Resource::Repository {
        sent: "a/b",
        stored: "a/b",
    };

    #[tokio::test]
    async fn buildset_policy() {
        let p = AuthPolicy::buildset("zuul", "s3:cret");
        let none = HeaderMap::new();
        assert_eq!(
            p.authorize(&none, REPO, Action::Pull).await.unwrap(),
            Identity::Anonymous
        );
        assert_eq!(
            p.authorize(&basic("zuul", "bad"), REPO, Action::Pull)
                .await
                .unwrap(),
            Identity::Anonymous
        );
        assert_eq!(
            p.authorize(&basic("zuul", "s3:cret"), REPO, Action::Push)
                .await
                .unwrap(),
            Identity::User("zuul".into())
        );
        for h in [
            none.clone(),
            basic("zuul", "bad"),
            basic("other", "s3:cret"),
            basic("", ""),
        ] {
            for a in [Action::Push, Action::Delete] {
                let e = p.authorize(&h, REPO, a).await.unwrap_err();
                assert_eq!(e.status().as_u16(), 401);
            }
        }
        assert!(p.ping(&none).await.is_err());
        assert!(p.ping(&basic("zuul", "s3:cret")).await.is_ok());
        assert!(p.ping(&basic("zuul", "nope")).await.is_err());
        assert!(p.ping(&basic("", "")).await.is_err());
        let e = p
            .authorize(&basic("", ""), REPO, Action::Push)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "UNAUTHORIZED (401): authentication required");
    }

    #[tokio::test]
    async fn read_users_cannot_push() {
        let p = AuthPolicy::with_users(vec![User::plain("r", "pw", Access::Read)], false);
        assert!(
            p.authorize(&basic("r", "pw"), REPO, Action::Pull)
                .await
                .is_ok()
        );
        let e = p
            .authorize(&basic("r", "pw"), REPO, Action::Push)
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 403);
        assert_eq!(e.code(), "DENIED");
        assert_eq!(
            e.detail_value(),
            Some(&serde_json::json!([{"Type": "repository", "Name": "a/b", "Action": "push"}]))
        );
        let e = p
            .authorize(&HeaderMap::new(), REPO, Action::Pull)
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 401);
        // A read user's token asking for push gets pull only, and the push 403.
        let t = p
            .issue_token(&basic("r", "pw"), &["repository:a/b:pull,push".into()])
            .await
            .unwrap();
        let claims = p.key.verify(&t.token, SystemTime::now()).unwrap();
        assert_eq!(claims.access[0].actions, vec!["pull"]);
        assert_eq!(claims.sub, "r");
        let e = p
            .authorize(&bearer(&t.token), REPO, Action::Push)
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 403);
    }

    #[tokio::test]
    async fn open_and_empty_policies() {
        let none = HeaderMap::new();
        assert!(
            AuthPolicy::open()
                .authorize(&none, REPO, Action::Delete)
                .await
                .is_ok()
        );
        let closed = AuthPolicy::with_users(Vec::new(), true);
        assert!(closed.authorize(&none, REPO, Action::Pull).await.is_ok());
        assert!(closed.authorize(&none, REPO, Action::Push).await.is_err());
    }

    #[tokio::test]
    async fn token_flow() {
        let p = AuthPolicy::buildset("zuul", "pw");
        let none = HeaderMap::new();
        // No credentials and no scope (podman's anonymous `search`): a token
        // that grants nothing, since anonymous read is on.
        let t = p.issue_token(&none, &[]).await.unwrap();
        let claims = p.key.verify(&t.token, SystemTime::now()).unwrap();
        assert_eq!(claims.sub, "");
        assert!(claims.access.is_empty());
        assert!(
            p.authorize(&bearer(&t.token), REPO, Action::Push)
                .await
                .is_err()
        );
        // Wrong credentials and no scope: a failed login stays refused.
        assert_eq!(
            p.issue_token(&basic("zuul", "bad"), &[])
                .await
                .unwrap_err()
                .status()
                .as_u16(),
            401
        );
        // Login probe with credentials: a token with no access, good for /v2/.
        let t = p.issue_token(&basic("zuul", "pw"), &[]).await.unwrap();
        assert!(p.ping(&bearer(&t.token)).await.is_ok());
        assert!(
            p.authorize(&bearer(&t.token), REPO, Action::Push)
                .await
                .is_err()
        );
        // Anonymous pull token; asking for push too gets pull only.
        let t = p
            .issue_token(&none, &["repository:a/b:pull,push".into()])
            .await
            .unwrap();
        let claims = p.key.verify(&t.token, SystemTime::now()).unwrap();
        assert_eq!(claims.access[0].actions, vec!["pull"]);
        assert_eq!(claims.sub, "");
        let e = p
            .authorize(&bearer(&t.token), REPO, Action::Push)
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 401);
        // Wrong (Docker Hub) credentials: a pull token anyway, never push.
        let t = p
            .issue_token(
                &basic("hubuser", "hubpw"),
                &["repository:library/x:pull".into()],
            )
            .await
            .unwrap();
        assert!(!t.token.is_empty());
        assert_eq!(t.expires_in, 600);
        assert!(
            p.issue_token(&basic("zuul", "bad"), &["repository:a/b:pull,push".into()])
                .await
                .is_err()
        );
        // The push user gets everything asked, on each scope.
        let t = p
            .issue_token(
                &basic("zuul", "pw"),
                &[
                    "repository:a/b:pull,push".into(),
                    "repository:c:pull repository:d:*".into(),
                    "registry:catalog:*".into(),
                    "repository:../x:pull".into(),
                ],
            )
            .await
            .unwrap();
        let claims = p.key.verify(&t.token, SystemTime::now()).unwrap();
        assert_eq!(claims.sub, "zuul");
        assert_eq!(claims.access.len(), 4);
        assert_eq!(claims.access[2].actions, vec!["pull", "push", "delete"]);
        let h = bearer(&t.token);
        assert_eq!(
            p.authorize(&h, REPO, Action::Push).await.unwrap(),
            Identity::User("zuul".into())
        );
        assert!(
            p.authorize(&h, Resource::Catalog, Action::Pull)
                .await
                .is_ok()
        );
        // Out of scope: repository c was granted pull only; e nothing.
        let c = Resource::Repository {
            sent: "c",
            stored: "c",
        };
        let e = p.authorize(&h, c, Action::Push).await.unwrap_err();
        assert_eq!(e.status().as_u16(), 401);
        let challenge = e.to_string();
        assert!(challenge.contains("token does not grant"), "{challenge}");
    }

    #[tokio::test]
    async fn restricted_mode_token() {
        let p = AuthPolicy::with_users(
            vec![
                User::plain("w", "pw", Access::Write),
                User::plain("r", "rpw", Access::Read),
            ],
            false,
        );
        let none = HeaderMap::new();
        let pull = vec!["repository:a/b:pull".to_string()];
        assert!(p.issue_token(&none, &pull).await.is_err());
        // Without anonymous read, no scope and no credentials is refused.
        assert!(p.issue_token(&none, &[]).await.is_err());
        assert!(p.issue_token(&basic("x", "y"), &pull).await.is_err());
        assert!(p.issue_token(&basic("r", "rpw"), &pull).await.is_ok());
    }

    #[test]
    fn bcrypt_users() {
        assert!(User::bcrypt("a", "$apr1$x$y", Access::Write).is_err());
        assert!(User::bcrypt("a", "{SHA}abc", Access::Write).is_err());
        assert!(User::bcrypt("a", "$2y$10$short", Access::Write).is_err());
        let hash = bcrypt::hash("pw", 4).unwrap();
        let y = hash.replacen("$2b$", "$2y$", 1);
        let db = UserDb::new(vec![
            User::bcrypt("a", &y, Access::Write).unwrap(),
            User::plain("p", "ppw", Access::Read),
        ]);
        assert!(db.has_bcrypt());
        assert_eq!(db.verify("a", "pw").map(User::name), Some("a"));
        // Cached the second time, same answer.
        assert_eq!(db.verify("a", "pw").map(User::name), Some("a"));
        assert!(db.verify("a", "bad").is_none());
        assert!(db.verify("nobody", "pw").is_none());
        assert_eq!(db.verify("p", "ppw").map(User::name), Some("p"));
    }

    /// Issue 9: with mixed costs the dummy hash of unknown users takes the
    /// highest, not the first entry's.
    #[test]
    fn dummy_hash_takes_the_highest_cost() {
        let low = bcrypt::hash("pw", 4).unwrap();
        let high = bcrypt::hash("pw", 6).unwrap();
        let db = UserDb::new(vec![
            User::bcrypt("low", &low, Access::Read).unwrap(),
            User::bcrypt("high", &high, Access::Write).unwrap(),
            User::plain("p", "ppw", Access::Read),
        ]);
        let dummy = db.dummy_bcrypt.as_deref().unwrap();
        assert_eq!(bcrypt_cost(dummy), Some(6));
        let db = UserDb::new(vec![User::bcrypt("high", &high, Access::Write).unwrap()]);
        assert_eq!(bcrypt_cost(db.dummy_bcrypt.as_deref().unwrap()), Some(6));
        let db = UserDb::new(vec![User::plain("p", "ppw", Access::Read)]);
        assert!(db.dummy_bcrypt.is_none());
    }

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository(plugin):a/b:pull,push"),
            Some(Requested {
                kind: "repository".into(),
                name: "a/b".into(),
                actions: vec!["pull".into(), "push".into()]
            })
        );
        assert!(parse_scope("repository:A:pull").is_none());
        assert!(parse_scope("registry:other:*").is_none());
        assert!(parse_scope("nonsense").is_none());
    }

    #[test]
    fn constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
