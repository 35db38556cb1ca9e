//! The speculum registry's HTTP API: the OCI distribution spec v1.1 over a
//! [`speculum_storage::Registry`], with auth, namespaces and TLS, and the
//! ephemeral buildset profile that run-buildset-registry starts.
//!
//! Layering: [`router`] parses the raw path, resolves the namespace, asks the
//! [`AuthPolicy`], and calls one handler per resource; handlers call storage;
//! every failure becomes an [`ApiError`] in one module.
//!
//! Starting: a typed [`Settings`] value, read from the config file
//! ([`Settings::load`]) or made for a buildset ([`Settings::buildset`]), is
//! the one input of [`RegistryServer::start`]. `config` validates, `start`
//! serves; config sections are owned by `auth`, `notify`, `upstream` and
//! `limits`, which import neither `config` nor one another's config, and
//! share the leaf module `value`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use speculum_server::{AppState, AuthPolicy, router};
//! use speculum_storage::Registry;
//!
//! let app = router(AppState::new(Registry::memory(), AuthPolicy::buildset("zuul", "secret")));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = speculum_server::Server::start(listener, app, None)?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod access_log;
mod auth;
mod body;
mod body_timeout;
mod buildset;
pub mod config;
mod drain;
mod error;
pub mod fdlimit;
mod handlers;
mod housekeeping;
mod info;
mod limits;
mod metrics;
mod notify;
mod route;
mod serve;
mod speculative;
mod start;
mod tls;
pub mod token;
mod upstream;
mod value;
mod watchdog;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use speculum_storage::Registry;

pub use auth::{Access, Action, AuthPolicy, DEFAULT_SERVICE, Identity, User};
pub use buildset::{BUILDSET_UPLOAD_MAX_AGE, BuildsetOptions};
pub use config::{ConfigError, LogFormat, Settings};
pub use error::{ApiError, ApiResult};
pub use housekeeping::{prune_options, run_prune};
pub use info::{RegistryInfo, write_info_file};
pub use limits::{ConnectionLimits, default_max_connections};
pub use metrics::{Collector, Exposition, Metrics, StorageFigures};
pub use notify::{
    Action as EventAction, Endpoint as WebhookEndpoint, EndpointConfig as WebhookEndpointConfig,
    EndpointStats as WebhookStats, Event, Format as WebhookFormat, HeaderValues, Notifier,
    NotifierOptions, NotifyError, RequestInfo, SIGNATURE_HEADER, Target as EventTarget,
    WebhookSettings, WebhooksConfig, signature as webhook_signature,
};
pub use serve::Server;
pub use speculative::Speculative;
pub use start::{RegistryServer, StartError, open_existing_store};
pub use tls::{
    GeneratedCert, TlsError, generate_certificate, server_config, server_config_from_files,
};
pub use upstream::{
    DEFAULT_TAG_TTL, TtlValue, UpstreamConfig, UpstreamConfigError, UpstreamError,
    UpstreamSettings, Upstreams, validate_upstreams,
};

/// The header every response carries.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";

/// What every request handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    registry: Registry,
    auth: AuthPolicy,
    notifier: Notifier,
    upstreams: Upstreams,
    speculative: Option<Speculative>,
    metrics: Arc<Metrics>,
    serve_metrics: bool,
    uploads_per_user: usize,
    /// Blob GETs answer 307 to the store's pre-signed URL when it has one.
    redirect_blobs: bool,
}

/// How many upload sessions one user may have open by default: far more
/// than a push needs (a client uploads a few layers at a time), few enough
/// that one client cannot fill the storage with sessions it abandons.
pub const DEFAULT_UPLOADS_PER_USER: usize = 100;

impl AppState {
    /// State over `registry`, guarded by `auth`.
    pub fn new(registry: Registry, auth: AuthPolicy) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                registry,
                auth,
                notifier: Notifier::disabled(),
                upstreams: Upstreams::none(),
                speculative: None,
                metrics: Metrics::new(),
                serve_metrics: true,
                uploads_per_user: DEFAULT_UPLOADS_PER_USER,
                redirect_blobs: false,
            }),
        }
    }

    /// The same state, collecting into `metrics`; `serve` decides whether
    /// `/metrics` answers (404 otherwise). Metrics are collected either way.
    pub fn with_metrics(self, metrics: Arc<Metrics>, serve: bool) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                metrics,
                serve_metrics: serve,
                ..(*self.inner).clone()
            }),
        }
    }

    /// The same state, allowing each user `max` open upload sessions
    /// (default [`DEFAULT_UPLOADS_PER_USER`]).
    pub fn with_uploads_per_user(self, max: usize) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                uploads_per_user: max,
                ..(*self.inner).clone()
            }),
        }
    }

    /// How many upload sessions each user may have open.
    pub(crate) fn uploads_per_user(&self) -> usize {
        self.inner.uploads_per_user
    }

    /// The same state, sending blob GETs to the store's pre-signed URLs
    /// ([`speculum_storage::Backend::blob_url`]) when `on`.
    pub fn with_blob_redirects(self, on: bool) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                redirect_blobs: on,
                ..(*self.inner).clone()
            }),
        }
    }

    /// Whether blob GETs may be redirected to the store.
    pub(crate) fn redirect_blobs(&self) -> bool {
        self.inner.redirect_blobs
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Whether `/metrics` is served.
    pub(crate) fn serve_metrics(&self) -> bool {
        self.inner.serve_metrics
    }

    /// The same state, reporting events to `notifier` (webhooks).
    pub fn with_notifier(self, notifier: Notifier) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                notifier,
                ..(*self.inner).clone()
            }),
        }
    }

    /// The same state, with pull-through `upstreams` for their namespaces.
    pub fn with_upstreams(self, upstreams: Upstreams) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                upstreams,
                ..(*self.inner).clone()
            }),
        }
    }

    /// The same state, taking speculative-image registrations (the
    /// buildset profile; see the `speculative` module).
    pub fn with_speculative(self, speculative: Speculative) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                speculative: Some(speculative),
                ..(*self.inner).clone()
            }),
        }
    }

    /// The speculative images, when this registry takes them.
    pub(crate) fn speculative(&self) -> Option<&Speculative> {
        self.inner.speculative.as_ref()
    }

    /// The pull-through upstreams (none unless configured).
    pub fn upstreams(&self) -> &Upstreams {
        &self.inner.upstreams
    }

    /// The webhook notifier (disabled unless configured).
    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    /// The storage.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The auth policy.
    pub fn auth(&self) -> &AuthPolicy {
        &self.inner.auth
    }
}

/// The registry's axum application.
///
/// Every path goes through one dispatcher that parses the raw request path
/// itself (names contain slashes; see the `route` module).
pub fn router(state: AppState) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(access_log::AccessLogLayer)
        .with_state(state)
}

async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let is_head = request.method() == Method::HEAD;
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let label = route::label(&path);
    let metrics = state.metrics().clone();
    let uploading = label == "upload" || label == "uploads";
    let _in_flight = uploading.then(|| body::InFlight::new(metrics.clone()));
    let request = request.map(|b| body::counted(b, metrics.clone(), body::Direction::In));
    let mut response = match handlers::handle(&state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    let status = response.status().as_u16();
    metrics.record_request(label, method.as_str(), status);
    if is_head {
        // HEAD answers carry the headers of a GET and no body.
        let (parts, _) = response.into_parts();
        response = Response::from_parts(parts, Body::empty());
    } else {
        response = response.map(|b| body::counted(b, metrics.clone(), body::Direction::Out));
    }
    response
        .headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    response
}

/// A 404 for paths outside the API.
pub(crate) fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"errors\":[{\"code\":\"NOT_FOUND\",\"message\":\"no such endpoint\"}]}",
    )
        .into_response()
}
