//! Reading and dropping the rest of a request body that is refused before it
//! was read (a manifest over the size limit answered 413).
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

use std::time::Duration;

use axum::http::{HeaderMap, Version, header};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};

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
