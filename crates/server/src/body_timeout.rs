//! A request body that stops arriving is cut after the body-idle timeout
//! (issue 9, point 2).
//!
//! Why: a client that declares a `Content-Length` and never sends the body
//! would otherwise hold its connection, its upload session and a file
//! descriptor for ever. The handler reading the body sees an error, as if
//! the client had gone away, and the connection is closed after its answer
//! (hyper does not reuse a connection whose request body was not read to
//! the end).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// `body`, failing once no data has arrived for `timeout` while it was
/// being read.
pub(crate) fn idle_limited<B>(body: B, timeout: Duration) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    Body::new(IdleLimited {
        inner: body,
        timeout,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        armed: false,
    })
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {0:?}")]
pub(crate) struct BodyIdle(Duration);

struct IdleLimited<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Whether `sleep` is counting: from the first poll that found nothing,
    /// until data arrives. Time the handler spends not reading is not idle.
    armed: bool,
}

impl<B> http_body::Body for IdleLimited<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    let deadline = Instant::now() + this.timeout;
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(timeout = ?this.timeout, "request body stalled; cutting it");
                        Poll::Ready(Some(Err(BodyIdle(this.timeout).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout() {
        let chunks =
            futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("some")) })
                .chain(futures_util::stream::pending());
        let mut body = idle_limited(Body::from_stream(chunks), Duration::from_secs(5));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "some");
        let start = Instant::now();
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
