//! One handler module per resource, and the dispatcher that picks one.
//!
//! The dispatcher parses the raw path into a [`Route`], checks the method,
//! resolves the repository (grammar and namespace) and hands the request to
//! the resource's handler, which authorizes the action before touching storage.

mod base;
mod blobs;
mod catalog;
mod manifests;
mod ops;
mod referrers;
mod speculative;
mod tags;
mod token;
mod uploads;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use speculum_oci::{Digest, ErrorCode};
use speculum_storage::BodyStream;

use crate::AppState;
use crate::auth::{Action, Identity, Resource};
use crate::error::{ApiError, ApiResult};
use crate::route::{Query, Repo, Route};

pub(crate) use speculative::REGISTRATION_INVALID;

/// The parts of a request that handlers read.
pub(crate) struct Ctx {
    pub(crate) method: Method,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Query,
    pub(crate) state: AppState,
}

impl Ctx {
    /// Ask the auth policy whether this request may perform `action` on
    /// `repo`.
    pub(crate) async fn authorize(&self, repo: &Repo, action: Action) -> ApiResult<Identity> {
        self.state
            .auth()
            .authorize(&self.headers, repo_resource(repo), action)
            .await
    }

    /// Ask the auth policy whether this request may read the catalog.
    pub(crate) async fn authorize_catalog(&self) -> ApiResult<Identity> {
        self.state
            .auth()
            .authorize(&self.headers, Resource::Catalog, Action::Pull)
            .await
    }

    /// Whether this request could perform `action` on `repo` (for optional
    /// steps, such as checking a mount's source).
    pub(crate) async fn allows(&self, repo: &Repo, action: Action) -> bool {
        self.state
            .auth()
            .allows(&self.headers, repo_resource(repo), action)
            .await
    }

    /// Who made this request, for the events it causes (webhooks).
    pub(crate) fn origin(&self, identity: &Identity) -> crate::notify::Origin {
        crate::notify::Origin::new(&self.method, &self.headers, identity)
    }

    /// Resolve a raw name from the path in the request's namespace.
    fn repo(&self, raw: &str) -> ApiResult<Repo> {
        Repo::resolve(raw, self.query.get("ns"))
    }

    /// A request header as a string, if present and valid.
    pub(crate) fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether a body refused before it was read should be drained first.
    fn drains_refused_body(&self) -> bool {
        crate::drain::wanted(self.version, &self.headers)
    }

    /// The declared `Content-Length`, if any.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.header(header::CONTENT_LENGTH)
            .and_then(|v| v.trim().parse().ok())
    }
}

fn repo_resource(repo: &Repo) -> Resource<'_> {
    Resource::Repository {
        sent: repo.sent.as_str(),
        stored: repo.stored.as_str(),
    }
}

/// The longest request target (path and query) answered normally; longer
/// ones get 414 with a spec error body. No endpoint needs more (names are at
/// most 255 bytes, tags 128), and the limit sits far below hyper's own (64
/// KiB, see `serve`), whose 414 would carry no body.
pub(crate) const MAX_URL_LEN: usize = 8 * 1024;

/// Route a request to its handler.
pub(crate) async fn handle(state: &AppState, request: Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let uri: Uri = parts.uri;
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URL_LEN {
        return Err(ApiError::custom(
            StatusCode::URI_TOO_LONG,
            "UNSUPPORTED",
            format!("the request URL is longer than {MAX_URL_LEN} bytes"),
        ));
    }
    let mut headers = parts.headers;
    // HTTP/2 requests carry the host as the URI's authority, not a header;
    // the token realm is built from it.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, v);
    }
    let read = matches!(parts.method, Method::GET | Method::HEAD);
    match uri.path() {
        "/auth/token" if read => return token::get(state, &headers, &uri).await,
        "/healthz" if read => return Ok(ops::healthz()),
        "/metrics" if read => return Ok(ops::metrics(state)),
        _ => {}
    }
    let registration = uri.path() == speculum_oci::speculative::REGISTRATION_PATH;
    let route = Route::parse(uri.path());
    if route.is_none() && !registration {
        return Ok(crate::not_found());
    }
    let ctx = Ctx {
        method: parts.method,
        version: parts.version,
        headers,
        query: Query::from_uri(&uri)?,
        state: state.clone(),
    };
    let Some(route) = route else {
        return speculative::put(&ctx, body).await;
    };
    match route {
        Route::Base if read => base::get(&ctx).await,
        Route::Catalog if read => catalog::list(&ctx).await,
        Route::Tags { name } if read => tags::list(&ctx, &ctx.repo(name)?).await,
        Route::Manifest { name, reference } => {
            let repo = ctx.repo(name)?;
            match ctx.method {
                Method::GET | Method::HEAD => manifests::get(&ctx, &repo, reference).await,
                Method::PUT => manifests::put(&ctx, &repo, reference, body).await,
                Method::DELETE => manifests::delete(&ctx, &repo, reference).await,
                _ => Err(unsupported(&ctx.method)),
            }
        }
        Route::Blob { name, digest } => {
            let repo = ctx.repo(name)?;
            match ctx.method {
                Method::GET | Method::HEAD => blobs::get(&ctx, &repo, digest).await,
                Method::DELETE => blobs::delete(&ctx, &repo, digest).await,
                _ => Err(unsupported(&ctx.method)),
            }
        }
        Route::Uploads { name } if ctx.method == Method::POST => {
            uploads::start(&ctx, &ctx.repo(name)?, body).await
        }
        Route::Upload { name, id } => {
            let repo = ctx.repo(name)?;
            match ctx.method {
                Method::GET => uploads::status(&ctx, &repo, id).await,
                Method::PATCH => uploads::patch(&ctx, &repo, id, body).await,
                Method::PUT => uploads::finish(&ctx, &repo, id, body).await,
                Method::DELETE => uploads::cancel(&ctx, &repo, id).await,
                _ => Err(unsupported(&ctx.method)),
            }
        }
        Route::Referrers { name, digest } if read => {
            referrers::list(&ctx, &ctx.repo(name)?, digest).await
        }
        _ => Err(unsupported(&ctx.method)),
    }
}

fn unsupported(method: &Method) -> ApiError {
    ApiError::new(ErrorCode::Unsupported).message(format!("method {method} is not allowed here"))
}

/// Parse a digest from the URL or a query parameter: `DIGEST_INVALID` if bad.
pub(crate) fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::new(ErrorCode::DigestInvalid).message(e.to_string()))
}

/// Stream `body` into storage with `store`; if storage gives up on it
/// because the disk is full, drain the rest (when the request calls for
/// it) so that the client reads the 507 rather than a connection reset.
pub(crate) async fn store_body<T, F>(
    ctx: &Ctx,
    body: Body,
    store: impl FnOnce(BodyStream) -> F,
) -> Result<T, speculum_storage::Error>
where
    F: std::future::Future<Output = Result<T, speculum_storage::Error>>,
{
    let (lent, stream) = crate::drain::Lent::new(body);
    let result = store(stream).await;
    if let Err(e) = &result
        && e.is_storage_full()
        && ctx.drains_refused_body()
    {
        lent.discard_rest().await;
    }
    result
}

/// Read a whole body of at most `limit` bytes, or fail with `too_large()`:
/// before reading anything when its `Content-Length` says it is larger,
/// else as soon as the bytes pass the limit. A refused body is drained when
/// the request calls for it (see the `drain` module), so the client reads
/// the refusal.
pub(crate) async fn read_limited(
    ctx: &Ctx,
    body: Body,
    limit: usize,
    too_large: fn() -> ApiError,
) -> ApiResult<Bytes> {
    if ctx.content_length().is_some_and(|n| n > limit as u64) {
        refuse_body(ctx, body).await;
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(ErrorCode::BlobUploadInvalid)
                .message(format!("reading the body failed: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            if ctx.drains_refused_body() {
                let read = (buf.len() + chunk.len()) as u64;
                crate::drain::discard(stream, read).await;
            }
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Drain `body` (when the request calls for it) before refusing it unread.
pub(crate) async fn refuse_body(ctx: &Ctx, body: Body) {
    if ctx.drains_refused_body() {
        crate::drain::discard(body.into_data_stream(), 0).await;
    }
}

/// A header value built from text we produced (digests, paths, numbers).
/// Such text is always a valid header value; an invalid one would be a bug,
/// reported as an internal error rather than a panic.
pub(crate) fn hv(value: impl AsRef<str>) -> ApiResult<HeaderValue> {
    HeaderValue::from_str(value.as_ref())
        .map_err(|_| ApiError::internal(format!("invalid header value {:?}", value.as_ref())))
}

/// The `Range` header value for an upload of `size` bytes: `0-<last byte>`
/// (inclusive), and `0-0` for an empty upload, as registries conventionally
/// answer.
pub(crate) fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// The header used to return a digest.
pub(crate) const DOCKER_CONTENT_DIGEST: HeaderName =
    HeaderName::from_static("docker-content-digest");
/// The header carrying an upload session's id.
pub(crate) const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
/// The header naming a pushed manifest's subject.
pub(crate) const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
/// The header saying which referrers filters were applied.
pub(crate) const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
