//! The access log: one INFO line per request, with the method, the path,
//! the status, the bytes sent and received, the duration, the user and a
//! request id (issue 9, point 6).
//!
//! Why a line at INFO: an operator must see who was refused (401 and 403
//! included) and what was served without turning on debug logs. The line
//! is written when the response body is dropped, so `bytes` and
//! `duration_ms` cover the whole download; a request whose handler was
//! abandoned (the client went away first) is logged with status 499, as
//! nginx does. Never logged: the query string (token requests carry
//! account and scope there) and any header value except the request id.
//!
//! The user is the name whose credentials (a password or a token) the auth
//! policy verified, even when the action was then refused; `-` otherwise.
//! Auth reports it through a task-local slot ([`record_user`]) so that no
//! handler has to pass it along.
//!
//! The request id is the client's `X-Request-Id` when it is short and
//! printable, otherwise a new random one; it is sent back in
//! `X-Request-Id`, and every log line written while the request is handled
//! carries it in a `request` span.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::Response;
use tracing::Instrument as _;

/// The request id header, read and sent.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A client's request id longer than this is replaced.
const MAX_CLIENT_ID: usize = 64;
/// Paths are cut to this many bytes in the log, so a client cannot make
/// each line as long as its URL.
const MAX_LOGGED_PATH: usize = 512;

tokio::task_local! {
    static USER: Arc<OnceLock<String>>;
}

/// Note that the request being handled on this task was made by `name`
/// (verified credentials). The first name recorded wins.
pub(crate) fn record_user(name: &str) {
    let _ = USER.try_with(|slot| slot.set(name.to_string()));
}

/// The client address of a request, put in its extensions by `serve`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// The layer that writes the access log.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AccessLogLayer;

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// The access log around a service.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
}

impl<S> tower::Service<Request> for AccessLog<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut entry = Entry::new(&request);
        let id = entry.request_id.clone();
        let bytes_in = entry.bytes_in.clone();
        let request = request.map(|b| {
            crate::body::tapped(b, move |n| {
                bytes_in.fetch_add(n, Ordering::Relaxed);
            })
        });
        let span = tracing::info_span!("request", id = %id);
        Box::pin(async move {
            let user = Arc::new(OnceLock::new());
            let called = USER.scope(user.clone(), inner.call(request).instrument(span));
            let mut response = called.await?;
            entry.status = Some(response.status().as_u16());
            entry.user = user.get().cloned();
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            // The entry moves into the body, whole (a closure would capture only
            // the field it names), and writes the line when the body is dropped.
            let mut entry = entry;
            Ok(response.map(|b| {
                crate::body::tapped(b, move |n| {
                    let entry = &mut entry;
                    entry.bytes_out += n;
                })
            }))
        })
    }
}

/// The request id to use: the client's when acceptable, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty() && v.len() <= MAX_CLIENT_ID)
        .filter(|v| v.iter().all(|b| (0x21..=0x7e).contains(b)))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string)
}

/// What the line will say; written when dropped.
struct Entry {
    started: Instant,
    method: Method,
    path: String,
    peer: Option<SocketAddr>,
    request_id: String,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    status: Option<u16>,
    user: Option<String>,
}

impl Entry {
    fn new(request: &Request) -> Entry {
        let path = request.uri().path();
        let mut cut = path.len().min(MAX_LOGGED_PATH);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        Entry {
            started: Instant::now(),
            method: request.method().clone(),
            path: path[..cut].to_string(),
            peer: request.extensions().get::<Peer>().map(|p| p.0),
            request_id: request_id(request.headers()),
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: 0,
            status: None,
            user: None,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let client = self.peer.map(|p| p.ip().to_string());
        tracing::info!(
            method = %self.method,
            path = %self.path,
            // Not answered: the client went away while it was handled.
            status = self.status.unwrap_or(499),
            bytes = self.bytes_out,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            user = %self.user.as_deref().unwrap_or("-"),
            client = %client.as_deref().unwrap_or("-"),
            request_id = %self.request_id,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(value: &[u8]) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_bytes(value).unwrap());
        request_id(&headers)
    }

    #[test]
    fn a_client_request_id_is_kept_when_short_and_printable() {
        assert_eq!(id_for(b"abc-123"), "abc-123");
        for bad in [&b"has space"[..], &[b'a'; 65], b"tab\there", &[0xc3, 0xa9]] {
            let id = id_for(bad);
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }
}
