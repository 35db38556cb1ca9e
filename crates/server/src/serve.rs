//! Serving the application on a listener, over TLS or plain HTTP, with
//! graceful shutdown.
//!
//! Shutdown is bounded: it must finish within a couple of seconds even with
//! many connections open, because service managers send SIGKILL soon after
//! SIGTERM, and a restart should not wait for idle clients. Idle keep-alive
//! connections are closed at once (hyper closes an idle HTTP/1 connection
//! when told to shut down; HTTP/2 ones get a GOAWAY); requests in flight get
//! `DRAIN_TIMEOUT` to finish; whatever is still open then (a stalled
//! download, a client trickling a request head or body) is cut. A request
//! cut that way was never acknowledged, so the client retries it.
//!
//! Each connection also has its limits ([`ConnectionLimits`]): a watchdog
//! drops it when a request head takes too long or it idles between requests
//! (`watchdog`), a stalled request body is cut (`body_timeout`), and at most
//! `max_connections` are served at once: past that, the accept loop waits for
//! a connection to end before it accepts another, so a flood queues in the
//! listen backlog instead of exhausting file descriptors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::limits::ConnectionLimits;
use crate::watchdog::{Activity, Watched};

/// How long to wait before accepting again after `accept` failed (usually
/// EMFILE: out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control window per stream.
const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window per connection.
const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// How long in-flight requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/1 read buffer limit, which bounds a request head: a longer head gets
/// hyper's 431. Kept at 32 KiB so the buffer (which may grow to twice this)
/// can never hold a request line with a URL over hyper's 64 KiB URL limit,
/// whose automatic 414 has no body; URLs over `handlers::MAX_URL_LEN` (8 KiB)
/// get the registry's own 414 with a spec error body instead.
const H1_MAX_BUF: usize = 32 * 1024;

/// A running server. Dropping it leaves it running until the runtime ends;
/// call [`Server::shutdown`] to stop it cleanly.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serve `app` on `listener`, over TLS when `tls` is given, with the
    /// default [`ConnectionLimits`]. The listener is already bound, so
    /// clients can connect as soon as this returns.
    pub fn start(
        listener: TcpListener,
        app: Router,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Server> {
        Server::start_with(listener, app, tls, ConnectionLimits::default())
    }

    /// As [`Server::start`], with `limits`.
    pub fn start_with(
        listener: TcpListener,
        app: Router,
        tls: Option<Arc<rustls::ServerConfig>>,
        limits: ConnectionLimits,
    ) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let max_connections = limits.max_connections();
        tracing::debug!(
            max_connections,
            header_timeout = ?limits.header_timeout,
            body_idle_timeout = ?limits.body_idle_timeout,
            keep_alive_timeout = ?limits.keep_alive_timeout,
            "connection limits"
        );
        let listening = Listening {
            listener,
            tls: tls.map(TlsAcceptor::from),
            limits,
            slots: Arc::new(Semaphore::new(max_connections)),
        };
        let task = tokio::spawn(accept_loop(listening, app, stopped));
        Ok(Server { addr, stop, task })
    }

    /// The address the server is bound to (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let in-flight requests finish (for a bounded time),
    /// and return once everything is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "server task failed");
        }
    }
}

/// The listening side: the socket, TLS, the limits, and one semaphore
/// permit per connection served.
struct Listening {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
}

impl Listening {
    /// Wait for a free slot, then for a connection. `None` once `stopped`
    /// changes.
    async fn next(
        &self,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let permit = tokio::select! {
            permit = self.slots.clone().acquire_owned() => permit.ok()?,
            _ = stopped.changed() => return None,
        };
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => return Some((stream, peer, permit)),
                    Err(e) => {
                        // Usually too many open files: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                _ = stopped.changed() => return None,
            }
        }
    }
}

async fn accept_loop(listening: Listening, app: Router, mut stopped: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let (conn_stop, _) = watch::channel(());
    // Every connection's task, so the ones still open after the drain can be
    // cut (finished ones are reaped as new ones come).
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Some((stream, peer, permit)) = listening.next(&mut stopped).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            limits: listening.limits,
            watcher: graceful.watcher(),
            peer,
        };
        let tls = listening.tls.clone();
        let mut conn_stopped = conn_stop.subscribe();
        connections.spawn(async move {
            // The slot is free again when this task ends, however it ends.
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
                        _ = conn_stopped.changed() => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => conn.serve(stream).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => conn.serve(stream).await,
            }
        });
    }
    drop(listening);
    drop(conn_stop);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still busy after the drain timeout; closing them"
        );
    }
    connections.shutdown().await;
}

/// One accepted connection, about to be served.
struct Connection {
    app: Router,
    limits: ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
    peer: SocketAddr,
}

impl Connection {
    /// Serve HTTP on `stream` until the client closes it, an error, or the
    /// watchdog's deadline (see the `watchdog` module).
    async fn serve<S>(self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let service = Service {
            app: self.app,
            peer: self.peer,
            limits: self.limits,
            activity: activity.clone(),
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Larger HTTP/2 windows than the defaults, so one stream can carry a
        // layer at full speed, for clients that speak only HTTP/2 (ALPN
        // prefers HTTP/1.1: see the `tls` module).
        builder
            .http2()
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW);
        builder.http1().max_buf_size(H1_MAX_BUF);
        let io = TokioIo::new(Watched::new(stream, activity.clone()));
        let conn = builder.serve_connection(io, service);
        let peer = self.peer;
        tokio::select! {
            served = self.watcher.watch(conn.into_owned()) => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            why = activity.expired(&self.limits) => {
                tracing::debug!(%peer, reason = why.as_str(), "closing the connection");
            }
        }
    }
}

/// The hyper service of one connection: `app`, with each request body
/// limited by the body-idle timeout and each request counted in `activity`
/// until its response body is dropped.
#[derive(Clone)]
struct Service {
    app: Router,
    peer: SocketAddr,
    limits: ConnectionLimits,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<axum::response::Response, Infallible>> + Send>,
    >;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let app = self.app.clone();
        let guard = self.activity.begin();
        let timeout = self.limits.body_idle_timeout;
        let mut request = request.map(|b| crate::body_timeout::idle_limited(b, timeout));
        request
            .extensions_mut()
            .insert(crate::access_log::Peer(self.peer));
        Box::pin(async move {
            let response = match app.oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(response.map(|b| crate::watchdog::guarded(b, guard)))
        })
    }
}
