//! Housekeeping while a registry runs, and `prune` on demand: retention
//! plus garbage collection on a schedule, the sweep of abandoned uploads,
//! the storage figures of `/metrics`, and the scratch files a crash left.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use speculum_storage::{GcReport, PruneOptions, Registry, RetentionPolicy};
use tokio::sync::watch;

use crate::config::Settings;
use crate::metrics::{Metrics, StorageFigures};

/// How often storage figures are measured for `/metrics`.
const STORAGE_FIGURES_INTERVAL: Duration = Duration::from_secs(60);

/// The prune options that `settings` describe: its retention rules, grace
/// period and upload age.
/// (The rules were compiled when the settings were made.)
pub fn prune_options(settings: &Settings, dry_run: bool) -> PruneOptions {
    let rules = settings.retention.iter().map(|r| r.rule.clone()).collect();
    let mut options = PruneOptions::new(RetentionPolicy::new(rules));
    options.grace_period = settings.gc.grace;
    options.upload_max_age = settings.gc.upload_max_age;
    options.dry_run = dry_run;
    options
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

pub(crate) async fn gc_loop(
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

pub(crate) async fn storage_figures_loop(
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

/// Remove abandoned upload sessions, as a collection does, until `stopped`
/// changes: checked every quarter of `max_age` (at least a second, at most
/// ten minutes), so a session goes at most that late.
pub(crate) async fn sweep_uploads_loop(
    registry: Registry,
    max_age: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let period = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopped.changed() => return,
        }
        match registry.expire_uploads(max_age).await {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => tracing::info!(count = ids.len(), "abandoned uploads removed"),
            Err(e) => tracing::error!(error = %e, "cannot remove abandoned uploads"),
        }
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
