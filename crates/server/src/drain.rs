//! Reading and dropping the rest of a request body that is refused before it
//! was read (a manifest over the size limit answered 413, an upload chunk
//! that met a full disk answered 507).
//!
//! Why: on HTTP/1.1 many clients write the whole body before they read the
//! answer. If the server answers early and closes the connection with body
//! bytes still unread in its socket buffer, the kernel sends a TCP reset,
//! which can reach the client before it has read the answer: it then reports
//! "connection reset" instead of the 413 and its error body. Reading the
//! rest first lets the answer arrive (and keeps the connection usable).
//!
//! The work is bounded in bytes and in time, so a client cannot make the
//! registry read a huge or endless body for nothing; past the bound the
//! connection is closed as before. Nothing is drained when the client asked
//! for `Expect: 100-continue` (it has not sent the body and, answered with
//! the final status, never will) or on HTTP/2, where the server ends the
//! stream with `RST_STREAM(NO_ERROR)`, which clients read as "stop sending"
//! after the answer.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::http::{HeaderMap, Version, header};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use speculum_storage::BodyStream;

/// At most this many bytes of a refused body are read and dropped.
pub(crate) const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;
/// And for at most this long.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a refused request's body should be drained before the answer.
pub(crate) fn wanted(version: Version, headers: &HeaderMap) -> bool {
    let expects_continue = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    !expects_continue && matches!(version, Version::HTTP_10 | Version::HTTP_11)
}

/// Read and drop what is left of a body, up to [`DRAIN_LIMIT`] bytes
/// (counting `already` bytes read before) and [`DRAIN_TIMEOUT`].
pub(crate) async fn discard<E>(
    mut stream: impl Stream<Item = Result<Bytes, E>> + Unpin,
    already: u64,
) {
    let mut read = already;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while read <= DRAIN_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len() as u64,
                // The client went away or the body ended: nothing to protect.
                Some(Err(_)) | None => return true,
            }
        }
        false
    })
    .await;
    if drained != Ok(true) {
        tracing::debug!(read, "refused body not drained to its end; closing");
    }
}

/// A request body lent to storage as a stream, whose unread rest can still
/// be drained when storage gives up on it midway (the disk filled up during
/// an upload): storage drops its stream, the rest stays reachable here.
pub(crate) struct Lent(Arc<Mutex<Option<BodyDataStream>>>);

/// The half of a [`Lent`] body that storage reads.
struct LentStream(Arc<Mutex<Option<BodyDataStream>>>);

// The stream is only polled under the lock, never across an await, and a
// panic while polling leaves nothing half-updated.
fn lock(m: &Mutex<Option<BodyDataStream>>) -> MutexGuard<'_, Option<BodyDataStream>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Lent {
    /// Lend `body`: the stream for storage, and the handle kept here.
    pub(crate) fn new(body: Body) -> (Lent, BodyStream) {
        let shared = Arc::new(Mutex::new(Some(body.into_data_stream())));
        (Lent(shared.clone()), Box::pin(LentStream(shared)))
    }

    /// Read and drop what storage left unread, as [`discard`] does.
    pub(crate) async fn discard_rest(self) {
        let Some(stream) = lock(&self.0).take() else {
            return;
        };
        discard(stream, 0).await;
    }
}

impl Stream for LentStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match lock(&self.0).as_mut() {
            Some(stream) => Pin::new(stream)
                .poll_next(cx)
                .map(|item| item.map(|r| r.map_err(std::io::Error::other))),
            None => Poll::Ready(None),
        }
    }
}
