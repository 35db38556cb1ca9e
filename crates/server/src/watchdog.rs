//! Closing a connection whose client is slow to send a request head, or that
//! sits idle between requests (issue 9, point 2).
//!
//! Why not hyper's own `header_read_timeout`: its timer starts as soon as
//! a connection waits for a head, idle time included, so it would also cap
//! keep-alive at the header timeout; and it is HTTP/1 only. Instead each
//! connection tracks whether a request is in progress (a guard lives from
//! the request's arrival until its response body is dropped) and when
//! bytes arrive while none is, and a watchdog future drops the connection
//! when its deadline passes:
//!
//! - a new connection, or one whose client has begun a head: the header
//!   timeout, from accept or from the first byte;
//! - a connection that served a request and has received nothing since:
//!   the keep-alive timeout, from the end of the last response;
//! - a request in progress: no deadline here (a stalled request body is
//!   the `body_timeout` module's business).
//!
//! On HTTP/2 any frame that arrives while no stream is open (a PING, a
//! WINDOW_UPDATE) counts as the start of a head, so such a connection is
//! closed after the header timeout unless a request follows.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::limits::ConnectionLimits;

/// What a connection is doing, shared by its IO, its requests and its
/// watchdog.
#[derive(Debug)]
pub(crate) struct Activity(Mutex<State>);

#[derive(Debug)]
struct State {
    /// Requests whose response body has not been dropped yet.
    in_flight: usize,
    /// When the connection was accepted or its last response ended.
    waiting_since: Instant,
    /// When the first byte arrived while no request was in progress.
    head_started: Option<Instant>,
    /// Whether a request has been answered on this connection.
    served: bool,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The request head did not arrive in time.
    Header,
    /// The connection sat idle between requests.
    KeepAlive,
}

impl Expiry {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Expiry::Header => "request head not received in time",
            Expiry::KeepAlive => "idle keep-alive connection",
        }
    }
}

impl Activity {
    /// The activity of a connection accepted now.
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity(Mutex::new(State {
            in_flight: 0,
            waiting_since: Instant::now(),
            head_started: None,
            served: false,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // update is a single assignment.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request arrived: it is in progress until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Activity>) -> RequestGuard {
        self.state().in_flight += 1;
        RequestGuard(self.clone())
    }

    fn bytes_read(&self) {
        let mut state = self.state();
        if state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
        }
    }

    /// When the connection should be closed, and why, if nothing changes.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Expiry)> {
        let state = self.state();
        if state.in_flight > 0 {
            None
        } else if let Some(started) = state.head_started {
            Some((started + limits.header_timeout, Expiry::Header))
        } else if !state.served {
            Some((state.waiting_since + limits.header_timeout, Expiry::Header))
        } else {
            Some((
                state.waiting_since + limits.keep_alive_timeout,
                Expiry::KeepAlive,
            ))
        }
    }

    /// Resolve once the connection has passed its deadline.
    pub(crate) async fn expired(&self, limits: &ConnectionLimits) -> Expiry {
        loop {
            match self.deadline(limits) {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => tokio::time::sleep_until(at).await,
                // Busy: look again later (a request's end moves the deadline).
                None => tokio::time::sleep(limits.header_timeout).await,
            }
        }
    }
}

/// Keeps a request counted as in progress; held by its response body.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.waiting_since = Instant::now();
            state.head_started = None;
            state.served = true;
        }
    }
}

/// `body`, holding `guard` until it is dropped (once hyper has written it,
/// or given up): the body tap owns the guard and ignores the byte counts.
pub(crate) fn guarded(body: Body, guard: RequestGuard) -> Body {
    crate::body::tapped(body, move |_| {
        let _held = &guard;
    })
}

/// A connection's stream, reporting the bytes it reads to its [`Activity`].
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        body_idle_timeout: Duration::from_secs(60),
        keep_alive_timeout: Duration::from_secs(120),
        max_connections: None,
    };

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_phase() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(
            activity.deadline(&LIMITS),
            Some((start + LIMITS.header_timeout, Expiry::Header))
        );
        let guard = activity.begin();
        assert_eq!(activity.deadline(&LIMITS), None);
        tokio::time::advance(Duration::from_secs(500)).await;
        drop(guard);
        let idle = Instant::now();
        assert_eq!(
            activity.deadline(&LIMITS),
            Some((idle + LIMITS.keep_alive_timeout, Expiry::KeepAlive))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        activity.bytes_read();
        let head = Instant::now();
        assert_eq!(
            activity.deadline(&LIMITS),
            Some((head + LIMITS.header_timeout, Expiry::Header))
        );
        assert_eq!(activity.expired(&LIMITS).await, Expiry::Header);
        assert_eq!(Instant::now(), head + LIMITS.header_timeout);
    }
}
