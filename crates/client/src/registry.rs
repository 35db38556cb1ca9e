//! One registry's HTTP API, with auth, retries and streaming.
//!
//! Auth is learnt from the registry: a request goes out anonymously (or with
//! what worked before), and a 401 challenge says whether to send Basic
//! credentials or to fetch a Bearer token for the request's scopes. Tokens are
//! cached per scope set until shortly before they expire. Requests without a
//! streaming body are retried with exponential backoff on connection errors,
//! 5xx and 429 (honouring `Retry-After`); streamed uploads are retried by the
//! copy, which reopens the source.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use speculum_oci::{
    Digest, ErrorBody, RepositoryName, manifest::MAX_MANIFEST_SIZE, media_type, paths,
};
use tokio::sync::Mutex;

use crate::auth::{BearerToken, Challenge, Credentials, TokenResponse};
use crate::error::{Error, Result, verify_digest};
use crate::reference::DOCKER_HUB;

/// A boxed stream of blob bytes.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// How to reach one registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Credentials, if any.
    pub credentials: Option<Credentials>,
    /// Extra CA certificates (PEM text), trusted besides the system roots.
    pub ca_pems: Vec<Vec<u8>>,
    /// Talk plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Directories holding `<host:port>/ca.crt` (docker's and podman's `certs.d`);
    /// `None` means the defaults (`/etc/docker/certs.d`, `/etc/containers/certs.d`,
    /// `~/.config/containers/certs.d`).
    pub certs_dirs: Option<Vec<PathBuf>>,
    /// How many times to try a request that fails in a retryable way.
    pub attempts: Option<u32>,
    /// A bearer token to send with every request instead of learning auth
    /// from challenges (no credentials are then needed, or used).
    pub token: Option<BearerToken>,
}

/// The `certs.d` directories docker and podman read, in their order.
pub fn default_certs_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".config/containers/certs.d"));
    }
    dirs.push(PathBuf::from("/etc/containers/certs.d"));
    dirs.push(PathBuf::from("/etc/docker/certs.d"));
    dirs
}

/// Read every `*.crt` file of `<dir>/<registry>/`.
fn certs_d_pems(dirs: &[PathBuf], registry: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for dir in dirs {
        let d = dir.join(registry);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for f in files {
            out.push(std::fs::read(&f).map_err(|e| Error::io(&f, e))?);
        }
    }
    Ok(out)
}

/// Read a CA file given on the command line.
pub fn read_ca_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Install ring as the process's rustls provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A scope a token is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// `repository:<name>:pull`
    pub fn pull(repo: &RepositoryName) -> Scope {
        Scope(format!("repository:{repo}:pull"))
    }
    /// `repository:<name>:pull,push`
    pub fn push(repo: &RepositoryName) -> Scope {
        Scope(format!("repository:{repo}:pull,push"))
    }
    /// `repository:<name>:delete` (with pull, as registries expect both).
    pub fn delete(repo: &RepositoryName) -> Scope {
        Scope(format!("repository:{repo}:pull,delete"))
    }
}

#[derive(Debug, Clone)]
enum AuthState {
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    token: String,
    expires: Instant,
}

/// A token as the token service issued it.
struct Issued {
    token: String,
    expires_in: Option<u64>,
}

/// How a holder of a registry's credentials can let someone else pull
/// without handing the credentials over.
#[derive(Debug)]
pub enum PullGrant {
    /// A token from the registry's token service, scoped to pulling the
    /// repositories asked for.
    Token {
        /// The token.
        token: BearerToken,
        /// Its lifetime in seconds, as the token service said.
        expires_in: Option<u64>,
    },
    /// The registry answers without authentication: nothing to hand over.
    Open,
    /// The registry speaks HTTP Basic only: pulling needs the password.
    BasicOnly,
}

/// What a manifest GET returned.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// The media type (from `Content-Type`, or from the body).
    pub media_type: String,
    /// The digest of the bytes.
    pub digest: Digest,
}

/// How an upload started.
pub enum UploadStart {
    /// The blob was mounted from another repository: nothing to send.
    Mounted,
    /// An upload session at this URL.
    Session(Url),
}

/// A client for one registry.
pub struct Registry {
    name: String,
    base: Url,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    token: Option<BearerToken>,
    state: Mutex<AuthState>,
    tokens: Mutex<HashMap<String, CachedToken>>,
    attempts: u32,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .field("base", &self.base.as_str())
            .finish()
    }
}

/// An `Accept` header naming every manifest media type.
fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&media_type::accept_all_manifests()) {
        h.insert(header::ACCEPT, v);
    }
    h
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

/// Build a reqwest client trusting the system roots plus `ca_pems`.
pub fn http_client(ca_pems: &[Vec<u8>]) -> Result<reqwest::Client> {
    install_crypto_provider();
    let mut certs = Vec::new();
    for pem in ca_pems {
        let bundle = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::Tls(format!("invalid CA certificate: {e}")))?;
        if bundle.is_empty() {
            return Err(Error::Tls("CA file holds no PEM certificate".into()));
        }
        certs.extend(bundle);
    }
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("speculum/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(300))
        .pool_max_idle_per_host(16);
    if !certs.is_empty() {
        b = b.tls_certs_merge(certs);
    }
    b.build()
        .map_err(|e| Error::Tls(format!("cannot build the HTTP client: {e}")))
}

impl Registry {
    /// A client for `registry` (`host[:port]`, `docker.io` for Docker Hub).
    pub fn new(registry: &str, opts: RegistryOptions) -> Result<Registry> {
        let host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if opts.insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|e| Error::input(format!("invalid registry {registry:?}: {e}")))?;
        let mut pems = opts.ca_pems.clone();
        if !opts.insecure {
            let dirs = opts.certs_dirs.clone().unwrap_or_else(default_certs_dirs);
            pems.extend(certs_d_pems(&dirs, registry)?);
        }
        Ok(Registry {
            name: registry.to_string(),
            base,
            http: http_client(&pems)?,
            credentials: opts.credentials,
            token: opts.token,
            state: Mutex::new(AuthState::Unknown),
            tokens: Mutex::new(HashMap::new()),
            attempts: opts.attempts.unwrap_or(4).max(1),
        })
    }

    /// The registry's name, as in references.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The base URL (`https://host:port/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| Error::input(format!("invalid path {path:?}: {e}")))
    }

    pub(crate) fn registry_error(
        &self,
        method: &Method,
        url: &Url,
        status: StatusCode,
        body: &[u8],
    ) -> Error {
        let detail = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) if !b.errors.is_empty() => b
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        e.code.clone()
                    } else {
                        format!("{}: {}", e.code, e.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => {
                let text = String::from_utf8_lossy(body);
                let line = text.lines().next().unwrap_or("").trim();
                let short: String = line.chars().take(200).collect();
                if short.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_string()
                } else {
                    short
                }
            }
        };
        Error::Registry {
            registry: self.name.clone(),
            method: method.to_string(),
            path: url.path().to_string(),
            status: status.as_u16(),
            detail,
        }
    }

    /// Turn a non-success response into an error, reading a bounded body.
    pub(crate) async fn check(
        &self,
        method: &Method,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let url = resp.url().clone();
        let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            let e = self.registry_error(method, &url, status, &body);
            return Err(Error::Auth {
                registry: self.name.clone(),
                reason: match (&self.credentials, e) {
                    (_, Error::Registry { detail, .. }) if self.token.is_some() => {
                        format!("{detail} (the token was refused: expired, or not valid here)")
                    }
                    (None, Error::Registry { detail, .. }) => {
                        format!("{detail} (no credentials given or found for {})", self.name)
                    }
                    (Some(_), Error::Registry { detail, .. }) => {
                        format!("{detail} (credentials rejected)")
                    }
                    (_, other) => other.to_string(),
                },
            });
        }
        Err(self.registry_error(method, &url, status, &body))
    }

    fn scope_key(scopes: &[Scope]) -> String {
        let mut s: Vec<&str> = scopes.iter().map(|s| s.0.as_str()).collect();
        s.sort_unstable();
        s.dedup();
        s.join(" ")
    }

    /// The `Authorization` header to send for `scopes`, as far as we know now.
    async fn authorization(&self, scopes: &[Scope]) -> Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(format!("Bearer {}", token.as_str())));
        }
        let state = self.state.lock().await.clone();
        match state {
            AuthState::Unknown => Ok(None),
            AuthState::Basic => Ok(self.credentials.as_ref().map(|c| c.basic_header())),
            AuthState::Bearer { realm, service } => {
                let key = Self::scope_key(scopes);
                {
                    let tokens = self.tokens.lock().await;
                    if let Some(t) = tokens.get(&key).filter(|t| t.expires > Instant::now()) {
                        return Ok(Some(format!("Bearer {}", t.token)));
                    }
                }
                let issued = self
                    .fetch_token(&realm, service.as_deref(), scopes, None)
                    .await?;
                Ok(Some(format!("Bearer {}", issued.token)))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[Scope],
        extra_scope: Option<&str>,
    ) -> Result<Issued> {
        let auth_err = |reason: String| Error::Auth {
            registry: self.name.clone(),
            reason,
        };
        let mut url = Url::parse(realm)
            .map_err(|e| auth_err(format!("invalid token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            let mut all: Vec<String> = scopes.iter().map(|s| s.0.clone()).collect();
            if let Some(x) = extra_scope {
                all.extend(x.split(' ').map(str::to_string));
            }
            all.sort();
            all.dedup();
            for s in all {
                q.append_pair("scope", &s);
            }
        }
        let mut req = self.http.get(url.clone());
        if let Some(c) = &self.credentials {
            req = req.header(header::AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|e| Error::Transport {
            registry: host_of(&url),
            source: e,
        })?;
        let status = resp.status();
        if !status.is_success() {
            let what = if self.credentials.is_some() {
                "credentials rejected"
            } else {
                "no credentials given or found"
            };
            return Err(auth_err(format!(
                "token server {} answered {status} ({what})",
                host_of(&url)
            )));
        }
        let body = read_limited(resp, 1024 * 1024).await?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("token server sent an invalid answer: {e}")))?;
        let token = t
            .token
            .filter(|t| !t.is_empty())
            .or(t.access_token)
            .ok_or_else(|| auth_err("token server sent no token".into()))?;
        // Docker's token spec: 60 s when unspecified; renew 10 s early.
        let life = t.expires_in.unwrap_or(60).max(20);
        self.tokens.lock().await.insert(
            Self::scope_key(scopes),
            CachedToken {
                token: token.clone(),
                expires: Instant::now() + Duration::from_secs(life - 10),
            },
        );
        Ok(Issued {
            token,
            expires_in: t.expires_in,
        })
    }

    /// Ask the registry for a token that lets someone else pull `repos`,
    /// with this client's credentials: the registry's token service issues
    /// it, so the credentials stay here. Learns the auth scheme from an
    /// anonymous `GET /v2/`.
    pub async fn pull_grant(&self, repos: &[RepositoryName]) -> Result<PullGrant> {
        let url = self.url(paths::base())?;
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Error::Transport {
                registry: self.name.clone(),
                source: e,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(PullGrant::Open);
        }
        if status != StatusCode::UNAUTHORIZED {
            self.check(&Method::GET, resp).await?;
            return Err(Error::Unsupported(format!(
                "{} answered {status} to GET /v2/",
                self.name
            )));
        }
        let challenges = challenges(resp.headers());
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer { realm, service, .. } => Some((realm, service)),
            Challenge::Basic => None,
        });
        match bearer {
            Some((realm, service)) => {
                let scopes: Vec<Scope> = repos.iter().map(Scope::pull).collect();
                let issued = self
                    .fetch_token(realm, service.as_deref(), &scopes, None)
                    .await?;
                Ok(PullGrant::Token {
                    token: BearerToken::new(issued.token),
                    expires_in: issued.expires_in,
                })
            }
            None if challenges.contains(&Challenge::Basic) => Ok(PullGrant::BasicOnly),
            None => Err(Error::Unsupported(format!(
                "{} asks for an authentication scheme speculum does not speak",
                self.name
            ))),
        }
    }

    /// React to a 401: learn the scheme and get fresh credentials.
    async fn on_challenge(&self, headers: &HeaderMap, scopes: &[Scope]) -> Result<bool> {
        if self.token.is_some() {
            // A fixed token: there is nothing else to try.
            return Ok(false);
        }
        let challenges = challenges(headers);
        let bearer = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }));
        match bearer.or(challenges.first()) {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                *self.state.lock().await = AuthState::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                };
                self.tokens.lock().await.remove(&Self::scope_key(scopes));
                self.fetch_token(realm, service.as_deref(), scopes, scope.as_deref())
                    .await?;
                Ok(true)
            }
            Some(Challenge::Basic) => {
                *self.state.lock().await = AuthState::Basic;
                Ok(self.credentials.is_some())
            }
            None => Ok(false),
        }
    }

    /// Send a request whose body (if any) can be replayed, handling auth and
    /// retrying transient failures. Returns the response whatever its status.
    pub(crate) async fn send_raw(
        &self,
        method: Method,
        url: Url,
        scopes: &[Scope],
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response> {
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            let sent_auth = self.authorization(scopes).await?;
            if let Some(a) = &sent_auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            match req.send().await {
                Err(e) => {
                    if attempt >= self.attempts {
                        return Err(Error::Transport {
                            registry: self.name.clone(),
                            source: e,
                        });
                    }
                    tracing::warn!(registry = %self.name, %method, path = url.path(), error = %e, attempt, "request failed, retrying");
                    backoff(attempt, None).await;
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !challenged => {
                    challenged = true;
                    // Retry only if the challenge gives us something new to send
                    // (another request may already have switched to Basic).
                    if !self.on_challenge(resp.headers(), scopes).await?
                        || (self.authorization(scopes).await? == sent_auth
                            && matches!(*self.state.lock().await, AuthState::Basic))
                    {
                        return Ok(resp);
                    }
                    attempt -= 1;
                }
                Ok(resp)
                    if (resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS)
                        && attempt < self.attempts =>
                {
                    let retry_after = header_str(resp.headers(), header::RETRY_AFTER)
                        .and_then(|s| s.parse::<u64>().ok());
                    tracing::warn!(registry = %self.name, %method, path = url.path(), status = resp.status().as_u16(), attempt, "retrying");
                    backoff(attempt, retry_after).await;
                }
                Ok(resp) => return Ok(resp),
            }
        }
    }

    /// [`send_raw`](Self::send_raw) on a path, failing on error statuses.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        scopes: &[Scope],
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response> {
        let url = self.url(path)?;
        let resp = self
            .send_raw(method.clone(), url, scopes, headers, body)
            .await?;
        self.check(&method, resp).await
    }

    /// `GET /v2/`: checks that the registry answers and the credentials work.
    pub async fn ping(&self) -> Result<()> {
        self.send(Method::GET, paths::base(), &[], HeaderMap::new(), None)
            .await?;
        Ok(())
    }

    /// GET a manifest's exact bytes, checking them against the digest.
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
    ) -> Result<RawManifest> {
        let resp = self
            .send(
                Method::GET,
                &paths::manifest(repo, reference),
                &[Scope::pull(repo)],
                accept_manifests(),
                None,
            )
            .await?;
        let content_type = header_str(resp.headers(), header::CONTENT_TYPE);
        let header_digest = header_str(resp.headers(), "docker-content-digest");
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE as u64).await?;
        let info = speculum_oci::manifest::parse(content_type.as_deref(), &bytes)?;
        let expected: Option<Digest> = match reference.parse::<Digest>() {
            Ok(d) => Some(d),
            Err(_) => header_digest.and_then(|d| d.parse().ok()),
        };
        let digest = match expected {
            Some(d) => {
                verify_digest(&d, &bytes)?;
                d
            }
            None => Digest::sha256(&bytes),
        };
        Ok(RawManifest {
            bytes,
            media_type: info.media_type,
            digest,
        })
    }

    /// HEAD a manifest: its digest and media type, or `None` if unknown.
    pub async fn head_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
    ) -> Result<Option<(Digest, String)>> {
        let url = self.url(&paths::manifest(repo, reference))?;
        let resp = self
            .send_raw(
                Method::HEAD,
                url,
                &[Scope::pull(repo)],
                accept_manifests(),
                None,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check(&Method::HEAD, resp).await?;
        let ct = header_str(resp.headers(), header::CONTENT_TYPE)
            .map(|c| media_type::essence(&c))
            .unwrap_or_default();
        match header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse().ok()) {
            Some(d) => Ok(Some((d, ct))),
            // Some registries omit the header on HEAD: fall back to GET.
            None => {
                let m = self.get_manifest(repo, reference).await?;
                Ok(Some((m.digest, m.media_type)))
            }
        }
    }

    /// PUT a manifest's bytes unchanged; returns the digest the registry reports.
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Option<Digest>> {
        let mut h = HeaderMap::new();
        let ct = HeaderValue::from_str(media_type)
            .map_err(|_| Error::input(format!("invalid media type {media_type:?}")))?;
        h.insert(header::CONTENT_TYPE, ct);
        let resp = self
            .send(
                Method::PUT,
                &paths::manifest(repo, reference),
                &[Scope::push(repo)],
                h,
                Some(bytes),
            )
            .await?;
        Ok(header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse().ok()))
    }

    /// DELETE a manifest by tag or digest. Returns the raw response so the
    /// caller can tell "unsupported" from other failures.
    pub async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        reference: &str,
    ) -> Result<reqwest::Response> {
        let url = self.url(&paths::manifest(repo, reference))?;
        self.send_raw(
            Method::DELETE,
            url,
            &[Scope::delete(repo)],
            HeaderMap::new(),
            None,
        )
        .await
    }

    /// Whether the registry has the blob (HEAD), with the size it reports.
    pub async fn has_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        scopes: &[Scope],
    ) -> Result<bool> {
        let url = self.url(&paths::blob(repo, digest))?;
        let resp = self
            .send_raw(Method::HEAD, url, scopes, HeaderMap::new(), None)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.check(&Method::HEAD, resp).await?;
        Ok(true)
    }

    /// GET a blob, failing on an error status; the body is not read yet.
    async fn blob_response(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<reqwest::Response> {
        self.send(
            Method::GET,
            &paths::blob(repo, digest),
            &[Scope::pull(repo)],
            HeaderMap::new(),
            None,
        )
        .await
    }

    /// GET a blob as a stream (not verified here; the copy verifies).
    pub async fn get_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<ByteStream> {
        let resp = self.blob_response(repo, digest).await?;
        let name = self.name.clone();
        Ok(Box::pin(resp.bytes_stream().map_err(move |e| {
            Error::Transport {
                registry: name.clone(),
                source: e,
            }
        })))
    }

    /// GET a small blob fully (configs), verified.
    pub async fn get_blob_bytes(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        limit: u64,
    ) -> Result<Bytes> {
        let resp = self.blob_response(repo, digest).await?;
        let b = read_limited(resp, limit).await?;
        verify_digest(digest, &b)?;
        Ok(b)
    }

    /// Start an upload, asking for a cross-repository mount from `from` first.
    pub async fn start_upload(
        &self,
        repo: &RepositoryName,
        mount: Option<(&RepositoryName, &Digest)>,
    ) -> Result<UploadStart> {
        let mut url = self.url(&paths::uploads(repo))?;
        let mut scopes = vec![Scope::push(repo)];
        if let Some((from, digest)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", &digest.to_string())
                .append_pair("from", from.as_str());
            scopes.push(Scope::pull(from));
        }
        let resp = self
            .send_raw(
                Method::POST,
                url,
                &scopes,
                HeaderMap::new(),
                Some(Bytes::new()),
            )
            .await?;
        let resp = self.check(&Method::POST, resp).await?;
        if resp.status() == StatusCode::CREATED && mount.is_some() {
            return Ok(UploadStart::Mounted);
        }
        let loc = header_str(resp.headers(), header::LOCATION).ok_or_else(|| {
            Error::Unsupported(format!("{} opened an upload without a Location", self.name))
        })?;
        Ok(UploadStart::Session(self.resolve(resp.url(), &loc)?))
    }

    fn resolve(&self, from: &Url, location: &str) -> Result<Url> {
        from.join(location).map_err(|e| {
            Error::Unsupported(format!(
                "{} sent an invalid Location {location:?}: {e}",
                self.name
            ))
        })
    }

    /// Finish an upload session with the whole blob streamed in one PUT.
    pub async fn put_blob_monolithic(
        &self,
        repo: &RepositoryName,
        session: Url,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<()> {
        let mut url = session;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut req = self
            .http
            .put(url.clone())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(a) = self.authorization(&[Scope::push(repo)]).await? {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(|e| stream_error(&self.name, e))?;
        self.check(&Method::PUT, resp).await?;
        Ok(())
    }

    /// Send the blob in PATCH chunks of `chunk` bytes, then close with a PUT.
    pub async fn put_blob_chunked(
        &self,
        repo: &RepositoryName,
        session: Url,
        digest: &Digest,
        chunk: usize,
        mut body: ByteStream,
    ) -> Result<()> {
        let scopes = [Scope::push(repo)];
        let mut url = session;
        let mut offset: u64 = 0;
        let mut buf = bytes::BytesMut::with_capacity(chunk);
        let mut done = false;
        while !done {
            match body.next().await {
                Some(item) => buf.extend_from_slice(&item?),
                None => done = true,
            }
            if buf.len() >= chunk || (done && !buf.is_empty()) {
                let data = buf.split().freeze();
                let end = offset + data.len() as u64 - 1;
                let mut h = HeaderMap::new();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("{offset}-{end}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                let n = data.len() as u64;
                let resp = self
                    .send_raw(Method::PATCH, url.clone(), &scopes, h, Some(data))
                    .await?;
                let resp = self.check(&Method::PATCH, resp).await?;
                let loc = header_str(resp.headers(), header::LOCATION).ok_or_else(|| {
                    Error::Unsupported(format!("{} sent no Location after a chunk", self.name))
                })?;
                url = self.resolve(resp.url(), &loc)?;
                offset += n;
            }
        }
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let resp = self
            .send_raw(
                Method::PUT,
                url,
                &scopes,
                HeaderMap::new(),
                Some(Bytes::new()),
            )
            .await?;
        self.check(&Method::PUT, resp).await?;
        Ok(())
    }

    /// Cancel an upload session (best effort).
    pub async fn cancel_upload(&self, repo: &RepositoryName, session: Url) {
        if let Err(e) = self
            .send_raw(
                Method::DELETE,
                session,
                &[Scope::push(repo)],
                HeaderMap::new(),
                None,
            )
            .await
        {
            tracing::debug!(registry = %self.name, error = %e, "cancelling an upload failed");
        }
    }

    /// PUT a JSON body to `path` (an endpoint of speculum's own, outside
    /// the distribution API), with the credentials sent as HTTP Basic at
    /// once; returns the answer's body (at most 1 MiB).
    pub async fn put_json(&self, path: &str, body: Bytes) -> Result<Bytes> {
        let url = self.url(path)?;
        let mut req = self
            .http
            .put(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(c) = &self.credentials {
            req = req.header(header::AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|e| Error::Transport {
            registry: self.name.clone(),
            source: e,
        })?;
        let resp = self.check(&Method::PUT, resp).await?;
        read_limited(resp, 1024 * 1024).await
    }

    /// Every tag of a repository, following `Link` pagination.
    pub async fn list_tags(&self, repo: &RepositoryName) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut url = self.url(&paths::tags(repo))?;
        url.query_pairs_mut().append_pair("n", "1000");
        for _ in 0..10_000 {
            let resp = self
                .send_raw(
                    Method::GET,
                    url.clone(),
                    &[Scope::pull(repo)],
                    HeaderMap::new(),
                    None,
                )
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
                if out.is_empty() {
                    return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                        Ok(b) if b.errors.iter().any(|e| e.code == "NAME_UNKNOWN") => {
                            Error::NotFound(format!("repository {}/{repo}", self.name))
                        }
                        _ => Error::NotFound(format!("repository {}/{repo}", self.name)),
                    });
                }
                break;
            }
            let resp = self.check(&Method::GET, resp).await?;
            let next = header_str(resp.headers(), header::LINK).and_then(|l| parse_next_link(&l));
            let page_url = resp.url().clone();
            let body = read_limited(resp, 64 * 1024 * 1024).await?;
            let list: TagList = serde_json::from_slice(&body).map_err(|e| {
                Error::Unsupported(format!("{} sent an invalid tag list: {e}", self.name))
            })?;
            out.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) => url = self.resolve(&page_url, &n)?,
                None => break,
            }
        }
        Ok(out)
    }
}

/// The challenges of a 401 answer that speculum understands.
fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(Challenge::parse)
        .collect()
}

/// `host[:port]` of `url` (the whole URL if it has no host).
pub(crate) fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => url.to_string(),
    }
}

fn stream_error(registry: &str, e: reqwest::Error) -> Error {
    // A body stream that failed (digest or size mismatch) surfaces as the
    // request's source error: report that cause rather than "connection".
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        if let Some(inner) = s.downcast_ref::<Error>() {
            return match inner {
                Error::DigestMismatch { expected, actual } => Error::DigestMismatch {
                    expected: expected.clone(),
                    actual: actual.clone(),
                },
                Error::SizeMismatch {
                    digest,
                    expected,
                    actual,
                } => Error::SizeMismatch {
                    digest: digest.clone(),
                    expected: *expected,
                    actual: *actual,
                },
                other => Error::Unsupported(other.to_string()),
            };
        }
        src = s.source();
    }
    Error::Transport {
        registry: registry.to_string(),
        source: e,
    }
}

/// `<url>; rel="next"` from a `Link` header.
fn parse_next_link(link: &str) -> Option<String> {
    for part in link.split(',') {
        let (target, params) = part.split_once(';')?;
        if params.contains("rel=\"next\"") || params.contains("rel=next") {
            return Some(
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            );
        }
    }
    None
}

/// Read a response body, failing if it is larger than `limit`.
pub(crate) async fn read_limited(resp: reqwest::Response, limit: u64) -> Result<Bytes> {
    let host = resp.url().host_str().unwrap_or("").to_string();
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(Error::Unsupported(format!(
            "{host} sent a body larger than {limit} bytes"
        )));
    }
    let mut out = bytes::BytesMut::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| Error::Transport {
            registry: host.clone(),
            source: e,
        })?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::Unsupported(format!(
                "{host} sent a body larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Sleep before retry number `attempt` (1-based): 250 ms doubling up to 8 s,
/// or what `Retry-After` says (at most 60 s).
pub(crate) async fn backoff(attempt: u32, retry_after: Option<u64>) {
    let d = match retry_after {
        Some(s) => Duration::from_secs(s.min(60)),
        None => Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5)).min(8000)),
    };
    tokio::time::sleep(d).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header() {
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(parse_next_link(r#"</x>; rel="prev""#), None);
    }

    #[test]
    fn scope_keys_are_order_free() {
        let a: RepositoryName = "a".parse().unwrap();
        let b: RepositoryName = "b".parse().unwrap();
        assert_eq!(
            Registry::scope_key(&[Scope::push(&a), Scope::pull(&b)]),
            Registry::scope_key(&[Scope::pull(&b), Scope::push(&a)])
        );
    }
}
