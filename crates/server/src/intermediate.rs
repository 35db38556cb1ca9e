//! The intermediate profile: the long-running registry of `speculum-registry
//! serve`, built from validated [`Settings`].
//!
//! Same router and handlers as the buildset profile; only the policy
//! differs: configured users (plain or bcrypt), anonymous read as
//! configured, tokens signed with the configured secret, TLS from files,
//! persistent storage, and retention plus garbage collection on a schedule.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use speculum_storage::{GcReport, PruneOptions, Registry, RetentionPolicy, RetentionRule};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::AuthPolicy;
use crate::buildset::StartError;
use crate::config::{ConfigError, Settings};
use crate::metrics::{Metrics, StorageFigures};
use crate::notify::{Notifier, NotifierOptions};
use crate::serve::Server;
use crate::tls::server_config_from_files;
use crate::upstream::Upstreams;
use crate::{AppState, router};

/// How often storage figures are measured for `/metrics`.
const STORAGE_FIGURES_INTERVAL: Duration = Duration::from_secs(60);

/// The prune options that `settings` describe: its retention rules, grace
/// period and upload age.
pub fn prune_options(settings: &Settings, dry_run: bool) -> Result<PruneOptions, ConfigError> {
    let mut rules = Vec::with_capacity(settings.retention.len());
    for rule in &settings.retention {
        let built =
            RetentionRule::new(&rule.repositories, &rule.tags, rule.older_than).map_err(|e| {
                ConfigError::from_parts(&settings.source, "registry.retention", e.to_string())
            })?;
        rules.push(built);
    }
    let mut options = PruneOptions::new(RetentionPolicy::new(rules));
    options.grace_period = settings.gc.grace;
    options.upload_max_age = settings.gc.upload_max_age;
    options.dry_run = dry_run;
    Ok(options)
}

/// Remove what a crash left mid-write (never a write in flight: see
/// [`speculum_storage::SCRATCH_MAX_AGE`]), at start. A failure is logged,
/// not fatal: the next collection tries again.
pub(crate) async fn remove_stale_scratch(registry: &Registry) {
    if let Err(e) = registry.remove_stale_scratch(false).await {
        tracing::warn!(error = %e, "cannot remove stale scratch files");
    }
}

/// Run one prune and record it in `metrics`. Fails with
/// [`speculum_storage::Error::CollectionRunning`], recording nothing, when
/// another collection holds the store's collector lock.
pub async fn run_prune(
    registry: &Registry,
    options: &PruneOptions,
    metrics: Option<&Metrics>,
) -> Result<GcReport, speculum_storage::Error> {
    let result = registry.prune(options).await;
    if matches!(result, Err(speculum_storage::Error::CollectionRunning)) {
        return result;
    }
    if let Some(metrics) = metrics {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let figures = result.as_ref().ok().map(|r| {
            (
                r.tags_deleted.len() as u64,
                r.blobs_removed.len() as u64,
                r.bytes_freed,
            )
        });
        metrics.record_gc(figures, now);
    }
    result
}

/// A running intermediate registry.
pub struct IntermediateServer {
    server: Server,
    state: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for IntermediateServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntermediateServer")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl IntermediateServer {
    /// Open storage, load TLS files, bind, and start serving (and
    /// collecting garbage when scheduled). When this returns, the registry
    /// accepts connections.
    pub async fn start(settings: &Settings) -> Result<IntermediateServer, StartError> {
        IntermediateServer::start_with(settings, |state| state).await
    }

    /// As [`IntermediateServer::start`], letting `customize` add to the
    /// application state (webhooks, upstreams) before serving starts.
    pub async fn start_with(
        settings: &Settings,
        customize: impl FnOnce(AppState) -> AppState,
    ) -> Result<IntermediateServer, StartError> {
        // Refuse bad retention patterns before anything else happens.
        let prune =
            prune_options(settings, false).map_err(|e| StartError::Config(e.to_string()))?;
        std::fs::create_dir_all(&settings.storage_root).map_err(|e| {
            StartError::Storage(format!("{}: {e}", settings.storage_root.display()))
        })?;
        let registry = Registry::filesystem(&settings.storage_root)
            .await
            .map_err(|e| StartError::Storage(e.to_string()))?;
        remove_stale_scratch(&registry).await;
        let tls = match &settings.tls {
            Some(files) => Some(server_config_from_files(&files.cert, &files.key)?),
            None => None,
        };
        let auth = policy(settings);
        let metrics = Metrics::new();
        let notifier = start_notifier(settings, &metrics)?;
        let upstreams = Upstreams::new(settings.upstreams.clone())
            .map_err(|e| StartError::Config(e.to_string()))?;
        let state = customize(
            AppState::new(registry.clone(), auth)
                .with_metrics(metrics.clone(), settings.metrics)
                .with_uploads_per_user(settings.uploads_per_user)
                .with_notifier(notifier)
                .with_upstreams(upstreams),
        );
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let app = router(state.clone());
        let server =
            Server::start_with(listener, app, tls, settings.connections).map_err(|source| {
                StartError::Bind {
                    addr: settings.listen,
                    source,
                }
            })?;

        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(interval) = settings.gc.interval {
            tasks.push(tokio::spawn(gc_loop(
                registry.clone(),
                prune,
                interval,
                metrics.clone(),
                stopped.clone(),
            )));
        }
        if settings.metrics {
            tasks.push(tokio::spawn(storage_figures_loop(
                registry.clone(),
                metrics.clone(),
                stopped,
            )));
        }
        tracing::info!(
            addr = %server.local_addr(),
            tls = settings.tls.is_some(),
            root = %settings.storage_root.display(),
            users = settings.users.len(),
            anonymous_read = settings.anonymous_read,
            retention_rules = settings.retention.len(),
            gc_interval = ?settings.gc.interval,
            upstreams = settings.upstreams.len(),
            max_connections = settings.connections.max_connections(),
            config = %settings.source.display(),
            "intermediate registry ready"
        );
        Ok(IntermediateServer {
            server,
            state,
            stop,
            tasks,
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

    /// Stop collecting garbage, stop serving (in-flight requests finish),
    /// and return once everything is closed.
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
        tracing::info!("intermediate registry stopped");
    }
}

/// Start the webhook deliveries of `settings` (resuming what their queues
/// hold), their counters exported through `metrics`.
fn start_notifier(settings: &Settings, metrics: &Metrics) -> Result<Notifier, StartError> {
    if settings.webhooks.endpoints.is_empty() {
        return Ok(Notifier::disabled());
    }
    let options = NotifierOptions {
        public_url: settings.public_url.clone(),
        source_addr: settings.listen.to_string(),
        private: !settings.anonymous_read,
    };
    let notifier = Notifier::start(settings.webhooks.clone(), options)
        .map_err(|e| StartError::Config(format!("{}: {e}", settings.source.display())))?;
    let exported = notifier.clone();
    metrics.register(move |out| exported.export(out));
    Ok(notifier)
}

/// The auth policy of `settings`.
fn policy(settings: &Settings) -> AuthPolicy {
    let mut policy = AuthPolicy::with_users(settings.users.clone(), settings.anonymous_read)
        .with_public_url(settings.public_url.clone())
        .with_tls(settings.tls.is_some());
    let service = service_name(settings);
    policy = match &settings.secret {
        Some(secret) => policy.with_token_key(secret.as_bytes(), service, settings.token_expiry),
        None => {
            tracing::info!(
                "no secret configured: tokens are signed with a random key and do not survive a restart"
            );
            policy.with_token_key(&rand::random::<[u8; 32]>(), service, settings.token_expiry)
        }
    };
    if !settings
        .users
        .iter()
        .any(|u| u.access() == crate::Access::Write)
    {
        tracing::warn!("no user has write access: nobody can push");
    }
    policy
}

/// The token service: the public URL's host when configured, so that two
/// registries sharing a secret still refuse each other's tokens.
fn service_name(settings: &Settings) -> String {
    settings
        .public_url
        .as_deref()
        .and_then(|u| u.split_once("://"))
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| crate::DEFAULT_SERVICE.to_string())
}

async fn gc_loop(
    registry: Registry,
    options: PruneOptions,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.changed() => return,
        }
        match run_prune(&registry, &options, Some(&metrics)).await {
            Ok(report) => tracing::info!(summary = %report.summary(), "garbage collection done"),
            Err(speculum_storage::Error::CollectionRunning) => tracing::info!(
                "another garbage collection is running on this storage root \
                 (a `speculum-registry prune`?): skipping this round"
            ),
            Err(e) => tracing::error!(error = %e, "garbage collection failed"),
        }
        if !refresh_unless_stopped(&registry, &metrics, &mut stopped).await {
            return;
        }
    }
}

async fn storage_figures_loop(
    registry: Registry,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if !refresh_unless_stopped(&registry, &metrics, &mut stopped).await {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(STORAGE_FIGURES_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Refresh the storage figures, giving up when the server stops: on a large
/// store the count takes seconds, and it is only a read, so shutdown need not
/// wait for it. `false` means stopped.
async fn refresh_unless_stopped(
    registry: &Registry,
    metrics: &Metrics,
    stopped: &mut watch::Receiver<bool>,
) -> bool {
    if *stopped.borrow() {
        return false;
    }
    tokio::select! {
        _ = refresh_storage_figures(registry, metrics) => true,
        _ = stopped.changed() => false,
    }
}

/// Count blobs, their bytes and upload sessions.
pub(crate) async fn refresh_storage_figures(registry: &Registry, metrics: &Metrics) {
    let backend = registry.backend();
    let blobs = match backend.list_blobs().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list blobs for the metrics");
            return;
        }
    };
    let mut bytes = 0u64;
    for digest in &blobs {
        if let Ok(Some(size)) = backend.blob_size(digest).await {
            bytes += size;
        }
    }
    let upload_sessions = backend.list_uploads().await.map_or(0, |u| u.len() as u64);
    metrics.set_storage(StorageFigures {
        blobs: blobs.len() as u64,
        bytes,
        upload_sessions,
    });
}
