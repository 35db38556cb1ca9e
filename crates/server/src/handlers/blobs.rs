//! `/v2/<name>/blobs/<digest>`: fetch (whole or a range) and delete blobs.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use speculum_oci::{Digest, ErrorCode};
use speculum_storage::ByteRange;

use super::{Ctx, DOCKER_CONTENT_DIGEST, hv, parse_digest};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::route::Repo;
use crate::speculative::StreamedBlob;

/// How long a redirect to the store's pre-signed URL stays valid: enough
/// for a slow client to start, short enough that a leaked URL soon dies.
const REDIRECT_VALID_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// A `Range` request header resolved against a blob's size.
enum Wanted {
    Whole,
    Part(ByteRange),
    Unsatisfiable,
}

/// Parse `bytes=a-b`, `bytes=a-` or `bytes=-n`. Anything else (several
/// ranges, other units, garbage) is ignored and the whole blob is served, as
/// HTTP allows.
fn wanted(value: &str, size: u64) -> Wanted {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // The last `n` bytes.
        return match b.parse::<u64>() {
            Ok(0) => Wanted::Unsatisfiable,
            Ok(_) if size == 0 => Wanted::Unsatisfiable,
            Ok(n) => Wanted::Part(ByteRange {
                start: size.saturating_sub(n),
                end: Some(size - 1),
            }),
            Err(_) => Wanted::Whole,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return Wanted::Whole;
    };
    let end = if b.is_empty() {
        None
    } else {
        match b.parse::<u64>() {
            Ok(end) if end >= start => Some(end),
            _ => return Wanted::Whole,
        }
    };
    if start >= size {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part(ByteRange {
        start,
        end: Some(end.map_or(size - 1, |e| e.min(size - 1))),
    })
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`, with `Range` support on GET; a
/// miss in a proxied namespace is first fetched from its upstream.
pub(crate) async fn get(ctx: &Ctx, repo: &Repo, digest: &str) -> ApiResult<Response> {
    ctx.authorize(repo, Action::Pull).await?;
    let digest = parse_digest(digest)?;
    let registry = ctx.state.registry();
    let is_head = ctx.method == axum::http::Method::HEAD;
    if let Some(speculative) = ctx.state.speculative() {
        // Only a whole GET is passed through as it downloads; the others
        // wait for it and are answered from storage.
        let whole = !is_head && ctx.header(header::RANGE).is_none();
        if let Some(streamed) = speculative
            .blob(registry, &repo.stored, &digest, whole)
            .await?
        {
            return streamed_response(streamed, &digest);
        }
    }
    ctx.state
        .upstreams()
        .ensure_blob(registry, &repo.stored, &digest)
        .await?;
    let size = registry.stat_blob(&repo.stored, &digest).await?;
    let digest_value = hv(digest.to_string())?;
    if !is_head
        && ctx.state.redirect_blobs()
        && let Some(url) = registry
            .backend()
            .blob_url(&digest, REDIRECT_VALID_FOR)
            .await?
    {
        let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::LOCATION, hv(url)?);
        headers.insert(DOCKER_CONTENT_DIGEST, digest_value);
        return Ok(response);
    }
    let range = match ctx.header(header::RANGE) {
        Some(v) if !is_head => wanted(v, size),
        _ => Wanted::Whole,
    };
    let range = match range {
        Wanted::Whole => None,
        Wanted::Part(r) => Some(r),
        Wanted::Unsatisfiable => {
            return Err(ApiError::new(ErrorCode::RangeInvalid)
                .message(format!("range not satisfiable for a blob of {size} bytes"))
                .header(header::CONTENT_RANGE, hv(format!("bytes */{size}"))?));
        }
    };
    let mut response = if is_head {
        StatusCode::OK.into_response()
    } else {
        let blob = registry.open_blob(&digest, size, range).await?;
        let length = if blob.size == 0 {
            0
        } else {
            blob.end - blob.start + 1
        };
        let body = Body::from_stream(blob.reader);
        let mut response = body.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if range.is_some() {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                hv(format!("bytes {}-{}/{}", blob.start, blob.end, blob.size))?,
            );
        }
        response
    };
    let headers = response.headers_mut();
    if is_head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(DOCKER_CONTENT_DIGEST, digest_value);
    Ok(response)
}

/// A blob answered while it is fetched from the intermediate registry.
fn streamed_response(streamed: StreamedBlob, digest: &Digest) -> ApiResult<Response> {
    let mut response = Body::from_stream(streamed.body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(streamed.size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(DOCKER_CONTENT_DIGEST, hv(digest.to_string())?);
    Ok(response)
}

/// `DELETE /v2/<name>/blobs/<digest>`
pub(crate) async fn delete(ctx: &Ctx, repo: &Repo, digest: &str) -> ApiResult<Response> {
    ctx.authorize(repo, Action::Delete).await?;
    let digest = parse_digest(digest)?;
    ctx.state
        .registry()
        .delete_blob(&repo.stored, &digest)
        .await?;
    tracing::info!(repo = %repo.stored, %digest, "blob deleted");
    Ok(StatusCode::ACCEPTED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(v: &str, size: u64) -> Option<(u64, Option<u64>)> {
        match wanted(v, size) {
            Wanted::Part(r) => Some((r.start, r.end)),
            _ => None,
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(part("bytes=0-3", 10), Some((0, Some(3))));
        assert_eq!(part("bytes=4-", 10), Some((4, Some(9))));
        assert_eq!(part("bytes=5-100", 10), Some((5, Some(9))));
        assert_eq!(part("bytes=-3", 10), Some((7, Some(9))));
        assert!(matches!(wanted("bytes=10-12", 10), Wanted::Unsatisfiable));
        assert!(matches!(wanted("bytes=0-0", 0), Wanted::Unsatisfiable));
        assert!(matches!(wanted("bytes=5-2", 10), Wanted::Whole));
        assert!(matches!(wanted("items=0-2", 10), Wanted::Whole));
        assert!(matches!(wanted("bytes=0-1,3-4", 10), Wanted::Whole));
    }

    proptest::proptest! {
        // Any Range header against any size: no panic, and a part is inside the blob.
        // scripts/fuzz.sh runs this for a set time.
        #[test]
        fn any_range_header_stays_inside_the_blob(
            value in "(bytes=)?[ 0-9,-]{0,24}|.{0,24}",
            size in proptest::prop_oneof![0u64..16, proptest::num::u64::ANY],
        ) {
            if let Wanted::Part(r) = wanted(&value, size) {
                let end = r.end.unwrap_or(size - 1);
                proptest::prop_assert!(r.start <= end && end < size, "{value:?} of {size}: {r:?}");
            }
        }
    }
}
