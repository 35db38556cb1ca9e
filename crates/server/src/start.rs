//! Starting a registry: one function, [`RegistryServer::start`], takes
//! validated [`Settings`] and serves them. The buildset and intermediate
//! profiles differ only in their settings (see `Settings::buildset` and
//! `Settings::load`), never in this code.
//!
//! Order: storage, TLS, application state, listener, then the background
//! tasks the settings ask for; the connection info is made once the port is
//! known.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use speculum_storage::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Access, AuthPolicy, DEFAULT_SERVICE};
use crate::config::{FilesystemStorage, Settings, StorageBackend, StorageSettings, TlsSettings};
use crate::housekeeping::{
    gc_loop, prune_options, remove_stale_scratch, storage_figures_loop, sweep_uploads_loop,
};
use crate::info::RegistryInfo;
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifierOptions};
use crate::serve::Server;
use crate::tls::{TlsError, generate_certificate, server_config, server_config_from_files};
use crate::upstream::Upstreams;
use crate::{AppState, Speculative, router};

/// Why a registry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Preparing storage failed.
    #[error("cannot prepare storage: {0}")]
    Storage(String),
    /// Generating the certificate or TLS config failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Reading the password or the OS RNG failed.
    #[error("cannot make the password: {0}")]
    Password(String),
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(String),
}

/// A running registry.
pub struct RegistryServer {
    server: Server,
    state: AppState,
    info: Option<RegistryInfo>,
    storage: OpenStorage,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    profile: &'static str,
}

impl std::fmt::Debug for RegistryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryServer")
            .field("server", &self.server)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl RegistryServer {
    /// Open storage, prepare TLS, bind, and start serving (and the
    /// background tasks `settings` ask for). When this returns, the
    /// registry accepts connections.
    pub async fn start(settings: &Settings) -> Result<RegistryServer, StartError> {
        let storage = open_storage(&settings.storage).await?;
        let (tls, ca_pem) = tls_config(&settings.listen.tls)?;
        let metrics = Metrics::new();
        let state = app_state(settings, storage.registry.clone(), &metrics)?;
        let addr = settings.listen.addr;
        let bind_error = |source| StartError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let app = router(state.clone());
        let server = Server::start_with(listener, app, tls, settings.listen.connections)
            .map_err(bind_error)?;
        let (stop, stopped) = watch::channel(false);
        let tasks = spawn_housekeeping(settings, &storage.registry, &metrics, stopped);
        let info = settings
            .info
            .as_ref()
            .map(|i| RegistryInfo::new(i, server.local_addr(), ca_pem));
        log_ready(settings, &server, &storage);
        Ok(RegistryServer {
            server,
            state,
            info,
            storage,
            stop,
            tasks,
            profile: settings.profile.name(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The application state (storage, auth, metrics).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The connection info, when the settings ask for one (the buildset
    /// profile).
    pub fn info(&self) -> Option<&RegistryInfo> {
        self.info.as_ref()
    }

    /// Where storage lives, when it is a directory.
    pub fn root(&self) -> Option<&Path> {
        self.storage.root.as_deref()
    }

    /// Stop the background tasks, stop serving (in-flight requests finish),
    /// remove temporary storage, and return once everything is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.server.shutdown().await;
        // Pending webhook deliveries stay queued for the next start.
        self.state.notifier().shutdown().await;
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "background task failed");
            }
        }
        if let Some(temp) = self.storage.temp {
            let path = temp.path().to_path_buf();
            if let Err(e) = temp.close() {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove temporary storage");
            }
        }
        tracing::info!("{} registry stopped", self.profile);
    }
}

/// Storage, opened: the registry, its directory, and the temporary
/// directory to remove on shutdown.
struct OpenStorage {
    registry: Registry,
    root: Option<PathBuf>,
    temp: Option<tempfile::TempDir>,
}

/// Open the backend of `settings`, creating its directory if needed, and
/// remove what a crash left mid-write.
/// The registry over the existing store `settings` names, for tools that
/// run beside a server (`prune`). A filesystem root must exist already: a
/// typo in the path must not quietly collect an empty new store.
pub async fn open_existing_store(settings: &StorageSettings) -> Result<Registry, StartError> {
    let storage_error = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
    match &settings.backend {
        StorageBackend::Filesystem(FilesystemStorage {
            root: Some(root), ..
        }) => {
            if !root.is_dir() {
                return Err(StartError::Storage(format!(
                    "the storage root {} does not exist",
                    root.display()
                )));
            }
            Registry::filesystem(root)
                .await
                .map_err(|e| StartError::Storage(format!("{}: {e}", root.display())))
        }
        StorageBackend::S3(s3) => Ok(Registry::new(
            speculum_storage::S3Backend::open(&s3.config)
                .await
                .map_err(|e| storage_error(&e))?,
        )),
        _ => Err(StartError::Storage(
            "the config names no store that outlives a process".into(),
        )),
    }
}

async fn open_storage(settings: &StorageSettings) -> Result<OpenStorage, StartError> {
    let storage_error = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
    let opened = match &settings.backend {
        StorageBackend::Memory => OpenStorage {
            registry: Registry::memory(),
            root: None,
            temp: None,
        },
        StorageBackend::S3(s3) => OpenStorage {
            registry: Registry::new(
                speculum_storage::S3Backend::open(&s3.config)
                    .await
                    .map_err(|e| storage_error(&e))?,
            ),
            root: None,
            temp: None,
        },
        StorageBackend::Filesystem(fs) => {
            let (root, temp) = match &fs.root {
                Some(root) => {
                    std::fs::create_dir_all(root)
                        .map_err(|e| StartError::Storage(format!("{}: {e}", root.display())))?;
                    (root.clone(), None)
                }
                None => {
                    let dir = tempfile::Builder::new()
                        .prefix("speculum-buildset-")
                        .tempdir()
                        .map_err(|e| storage_error(&e))?;
                    (dir.path().to_path_buf(), Some(dir))
                }
            };
            let registry = Registry::filesystem_with(&root, fs.durability)
                .await
                .map_err(|e| storage_error(&e))?;
            OpenStorage {
                registry,
                root: Some(root),
                temp,
            }
        }
    };
    remove_stale_scratch(&opened.registry).await;
    Ok(opened)
}

/// The rustls config of `tls`, and the CA certificate clients must trust
/// (empty unless generated here).
fn tls_config(
    tls: &TlsSettings,
) -> Result<(Option<Arc<rustls::ServerConfig>>, String), StartError> {
    match tls {
        TlsSettings::Off => Ok((None, String::new())),
        TlsSettings::Files(files) => Ok((
            Some(server_config_from_files(&files.cert, &files.key)?),
            String::new(),
        )),
        TlsSettings::Generated { hostnames, ips } => {
            let generated = generate_certificate(hostnames, ips)?;
            Ok((Some(server_config(&generated)?), generated.ca_pem))
        }
    }
}

/// The application state of `settings` over `registry`, counting into
/// `metrics`.
fn app_state(
    settings: &Settings,
    registry: Registry,
    metrics: &Arc<Metrics>,
) -> Result<AppState, StartError> {
    let notifier = start_notifier(settings, metrics)?;
    let upstreams = Upstreams::new(settings.upstreams.clone())
        .map_err(|e| StartError::Config(e.to_string()))?;
    let state = AppState::new(registry, policy(settings))
        .with_metrics(metrics.clone(), settings.metrics.serve)
        .with_uploads_per_user(settings.storage.uploads_per_user)
        .with_blob_redirects(matches!(
            &settings.storage.backend,
            StorageBackend::S3(s3) if s3.redirect
        ))
        .with_notifier(notifier)
        .with_upstreams(upstreams);
    Ok(if settings.speculative {
        state.with_speculative(Speculative::new())
    } else {
        state
    })
}

/// Start the webhook deliveries of `settings` (resuming what their queues
/// hold), their counters exported through `metrics`.
fn start_notifier(settings: &Settings, metrics: &Metrics) -> Result<Notifier, StartError> {
    if settings.webhooks.endpoints.is_empty() {
        return Ok(Notifier::disabled());
    }
    let options = NotifierOptions {
        public_url: settings.listen.public_url.clone(),
        source_addr: settings.listen.addr.to_string(),
        private: !settings.auth.anonymous_read,
    };
    let notifier = Notifier::start(settings.webhooks.clone(), options)
        .map_err(|e| StartError::Config(format!("{}: {e}", settings.source_name())))?;
    let exported = notifier.clone();
    metrics.register(move |out| exported.export(out));
    Ok(notifier)
}

/// The auth policy of `settings`.
fn policy(settings: &Settings) -> AuthPolicy {
    let auth = &settings.auth;
    let mut policy = AuthPolicy::with_users(auth.users.clone(), auth.anonymous_read)
        .with_public_url(settings.listen.public_url.clone())
        .with_tls(settings.listen.tls.is_on());
    let service = service_name(settings.listen.public_url.as_deref());
    policy = match &auth.secret {
        Some(secret) => policy.with_token_key(secret.as_bytes(), service, auth.token_expiry),
        None => {
            tracing::info!(
                "no secret configured: tokens are signed with a random key and do not survive a restart"
            );
            policy.with_token_key(&rand::random::<[u8; 32]>(), service, auth.token_expiry)
        }
    };
    if !auth.users.iter().any(|u| u.access() == Access::Write) {
        tracing::warn!("no user has write access: nobody can push");
    }
    policy
}

/// The token service: the public URL's host when configured, so that two
/// registries sharing a secret still refuse each other's tokens.
fn service_name(public_url: Option<&str>) -> String {
    public_url
        .and_then(|u| u.split_once("://"))
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE.to_string())
}

/// The background tasks `settings` ask for, each ending when `stopped`
/// changes.
fn spawn_housekeeping(
    settings: &Settings,
    registry: &Registry,
    metrics: &Arc<Metrics>,
    stopped: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(interval) = settings.gc.interval {
        let prune = prune_options(settings, false);
        let (registry, metrics) = (registry.clone(), metrics.clone());
        tasks.push(tokio::spawn(gc_loop(
            registry,
            prune,
            interval,
            metrics,
            stopped.clone(),
        )));
    }
    if settings.gc.sweep_uploads {
        let max_age = settings.gc.upload_max_age;
        let swept = sweep_uploads_loop(registry.clone(), max_age, stopped.clone());
        tasks.push(tokio::spawn(swept));
    }
    if settings.metrics.storage_figures {
        let figures = storage_figures_loop(registry.clone(), metrics.clone(), stopped);
        tasks.push(tokio::spawn(figures));
    }
    tasks
}

fn log_ready(settings: &Settings, server: &Server, storage: &OpenStorage) {
    tracing::info!(
        addr = %server.local_addr(),
        tls = settings.listen.tls.is_on(),
        root = %storage.root.as_deref().map_or("<memory>".into(), |r| r.display().to_string()),
        temporary = storage.temp.is_some(),
        users = settings.auth.users.len(),
        anonymous_read = settings.auth.anonymous_read,
        retention_rules = settings.retention.len(),
        gc_interval = ?settings.gc.interval,
        upstreams = settings.upstreams.len(),
        max_connections = settings.listen.connections.max_connections(),
        config = %settings.source_name(),
        "{} registry ready",
        settings.profile.name()
    );
}
