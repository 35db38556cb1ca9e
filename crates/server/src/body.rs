//! Body wrappers that count bytes (for the metrics and the access log),
//! keeping the size hint so `Content-Length` answers stay as they are.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

use crate::metrics::Metrics;

/// Which counter a body feeds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// Request bodies.
    In,
    /// Response bodies.
    Out,
}

/// `body`, counting its data bytes into `metrics`.
pub(crate) fn counted(body: Body, metrics: Arc<Metrics>, direction: Direction) -> Body {
    tapped(body, move |n| {
        let counter = match direction {
            Direction::In => metrics.bytes_in(),
            Direction::Out => metrics.bytes_out(),
        };
        counter.fetch_add(n, Ordering::Relaxed);
    })
}

/// `body`, calling `on_data` with the length of each data frame that passes.
/// The size hint is kept, so `Content-Length` answers stay as they are;
/// whatever `on_data` owns is dropped with the body (after its last byte, or
/// when the client went away), which the access log uses to write its line.
pub(crate) fn tapped(body: Body, on_data: impl FnMut(u64) + Send + Unpin + 'static) -> Body {
    Body::new(Tapped {
        inner: body,
        on_data,
    })
}

struct Tapped<F> {
    inner: Body,
    on_data: F,
}

impl<F: FnMut(u64) + Send + Unpin + 'static> http_body::Body for Tapped<F> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            (self.on_data)(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts an upload request in progress for as long as it lives.
pub(crate) struct InFlight(Arc<Metrics>);

impl InFlight {
    pub(crate) fn new(metrics: Arc<Metrics>) -> InFlight {
        metrics.uploads_in_flight().fetch_add(1, Ordering::Relaxed);
        InFlight(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.uploads_in_flight().fetch_sub(1, Ordering::Relaxed);
    }
}
