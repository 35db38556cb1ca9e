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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

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
    /// Serve `app` on `listener`, over TLS when `tls` is given. The listener
    /// is already bound, so clients can connect as soon as this returns.
    pub fn start(
        listener: TcpListener,
        app: Router,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            app,
            tls.map(TlsAcceptor::from),
            stopped,
        ));
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

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let (conn_stop, _) = watch::channel(());
    // Every connection's task, so the ones still open after the drain can be
    // cut (finished ones are reaped as new ones come).
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually too many open files: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let mut conn_stopped = conn_stop.subscribe();
        connections.spawn(async move {
            match tls {
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
                        _ = conn_stopped.changed() => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => serve_connection(stream, app, watcher).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve_connection(stream, app, watcher).await,
            }
        });
    }
    drop(listener);
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

async fn serve_connection<S>(stream: S, app: Router, watcher: hyper_util::server::graceful::Watcher)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request.map(Body::new)).await;
            Ok::<_, Infallible>(match response {
                Ok(r) => r,
                Err(never) => match never {},
            })
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Larger HTTP/2 windows than the defaults, so one stream can carry a
    // layer at full speed (Go clients negotiate HTTP/2 over TLS).
    builder
        .http2()
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    builder.http1().max_buf_size(H1_MAX_BUF);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
