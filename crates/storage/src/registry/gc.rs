//! Retention and garbage collection: expired tags, then a mark and sweep of
//! manifests, blob links, blobs and abandoned upload sessions.
//!
//! [`Registry::prune`] is the one entry point of the intermediate registry:
//!
//! 1. **Uploads**: sessions started at least [`PruneOptions::upload_max_age`]
//!    ago are removed, and so is scratch (`tmp/`) older than
//!    [`SCRATCH_MAX_AGE`]: what a crash left mid-write.
//! 2. **Retention** (per repository, under its lock): tags that the
//!    [`RetentionPolicy`] expires are deleted, unless re-pushed meanwhile.
//!    Tags and manifest records written before push times were recorded are
//!    stamped with the current time at first sight, so they can expire
//!    later but never on missing data.
//! 3. **Mark**: the roots of a repository are its tags and its manifests
//!    pushed within the grace period (an index's children are pushed before
//!    it, untagged). From them, every child of an index or manifest list and
//!    every manifest whose `subject` is marked (a referrer) is marked, in all
//!    four manifest formats; a marked manifest marks its own bytes, its
//!    config and its layers.
//! 4. **Sweep**: unmarked manifests leave their repository (with their
//!    referrer record); blob links that no marked manifest of the repository
//!    references are removed once older than the grace period; then every
//!    stored blob that is neither marked nor linked anywhere is deleted.
//!    (A manifest's referrers do not keep it: an unreferenced, untagged,
//!    old manifest goes, and so do its referrers unless tagged.) Each item
//!    is read again right before it goes, and spared if it is young by its
//!    own time: a manifest record by its push time, a link by its time
//!    (made, or renewed by a HEAD), a link also if a manifest of its
//!    repository pushed within the grace period needs it, and a blob if any
//!    repository links it or holds it as a manifest now, or if it was stored
//!    within the grace period ([`Backend::blob_modified`], stamped by the
//!    registry's clock when a blob is stored or stored again).
//!
//! **Why a push in progress never loses a blob.** Every write that makes a
//! blob reachable (an upload's commit and link, a mount, a link renewed by a
//! read, a manifest push with its checks) holds the registry's GC lock
//! shared. A collection takes it exclusively once to start recording, from
//! then on, every digest such a write links, stores as a manifest or
//! references ("noted"); it marks without the lock, and sweeps in batches,
//! each under the lock held exclusively, skipping whatever was noted. So:
//! - a write that finished before recording started is seen by the mark;
//!   one after is noted and spared (a blob is never seen between its store
//!   and its link, a manifest push either is marked or its blobs are noted);
//! - a manifest push that checks its blobs after a batch removed a link
//!   fails with `MANIFEST_BLOB_UNKNOWN` instead of storing a manifest with a
//!   dangling blob;
//! - a blob uploaded but not yet referenced is linked, and its link is
//!   younger than the grace period, so it stays: a push has the grace period
//!   between its blob uploads and its manifest. A blob the client skipped
//!   uploading because the registry has it (HEAD) is covered the same way:
//!   checking a link renews it when it is more than a few minutes old
//!   ([`Registry::stat_blob`]).
//!
//! Pushes wait only while a batch of removals runs, never for the mark.
//!
//! **Another process.** The GC lock and the noted set are in-process. A
//! collector in another process (`speculum-registry prune` beside `serve`)
//! sees none of the pushes made after its mark; what protects them is the
//! sweep's second reading above: whatever a push wrote after the mark is
//! young by its own time (or linked), so it stays, as long as the push
//! linked its blobs within the grace period (a HEAD renews a link older
//! than five minutes, so the grace period must be longer than that).
//! What is left is the instant between that reading and the removal: a
//! push landing there is refused (`MANIFEST_BLOB_UNKNOWN`: its link or blob
//! went just before its check), but the re-push of the very manifest being
//! removed can lose its record. A collection in the serving process has no
//! such window.
//!
//! **One collector at a time**, in a process (a mutex) and across processes:
//! a real run takes the backend's collector lock
//! ([`Backend::try_lock_collector`]: a `flock` on `<root>/gc.lock` for the
//! filesystem) and fails with [`Error::CollectionRunning`], having removed
//! nothing, if another collection holds it. A dry run takes no lock.
//!
//! [`Backend::blob_modified`]: crate::Backend::blob_modified
//! [`Backend::try_lock_collector`]: crate::Backend::try_lock_collector
//! [`Error::CollectionRunning`]: crate::Error::CollectionRunning
//!
//! [`Registry::collect_garbage`] is the older, narrower operation: no
//! retention, every manifest is a root, links expire only when asked, and
//! no blob is kept for its age: meant for a store no other process writes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use speculum_oci::{Digest, RepositoryName, manifest};

use super::{ManifestRecord, Registry, corrupt, from_unix_secs, unix_secs};
use crate::backend::{Table, UploadId};
use crate::{Result, RetentionPolicy};

/// What [`Registry::prune`] does: the retention policy, the grace period,
/// and whether to only report.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Which tags expire (default: none).
    pub retention: RetentionPolicy,
    /// How long untagged manifests, unreferenced blob links and unlinked
    /// blobs are kept after they were last pushed (default: one hour). A
    /// push must link its blobs and push its manifest within it. Keep it
    /// well above five minutes when a collector runs in another process
    /// than the server: a HEAD renews only links older than that.
    pub grace_period: Duration,
    /// Remove upload sessions started at least this long ago (default: one
    /// day, so that a slow upload of a big layer is not cut off).
    pub upload_max_age: Duration,
    /// Only report what would be removed (default: false).
    pub dry_run: bool,
    /// The time ages are measured from (default: `None`, the registry's
    /// clock, see [`Registry::set_clock`]).
    pub now: Option<SystemTime>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            retention: RetentionPolicy::default(),
            grace_period: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
            dry_run: false,
            now: None,
        }
    }
}

impl PruneOptions {
    /// The defaults with `retention`.
    pub fn new(retention: RetentionPolicy) -> PruneOptions {
        PruneOptions {
            retention,
            ..PruneOptions::default()
        }
    }
}

/// What [`Registry::collect_garbage`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcOptions {
    /// Remove upload sessions started at least this long ago.
    pub upload_max_age: Duration,
    /// Unlink blobs that no manifest of their repository references once
    /// they were linked at least this long ago (`Duration::ZERO`: all of
    /// them); `None` keeps every link.
    pub unreferenced_link_max_age: Option<Duration>,
    /// Only report what would be removed.
    pub dry_run: bool,
}

impl Default for GcOptions {
    /// Uploads expire after a day; links are kept; not a dry run.
    fn default() -> Self {
        GcOptions {
            upload_max_age: Duration::from_secs(24 * 3600),
            unreferenced_link_max_age: None,
            dry_run: false,
        }
    }
}

/// A tag deleted by retention.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RemovedTag {
    /// Its repository.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest it pointed at.
    pub digest: Digest,
}

/// A manifest removed from a repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RemovedManifest {
    /// Its repository.
    pub repository: String,
    /// Its digest.
    pub digest: Digest,
}

/// A blob link removed from a repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RemovedLink {
    /// Its repository.
    pub repository: String,
    /// The blob.
    pub digest: Digest,
}

/// What a prune or garbage collection removed (or would have, in a dry
/// run). Serializes to JSON with everything listed; [`GcReport::summary`]
/// has only the counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// Whether this was a dry run (nothing was removed).
    pub dry_run: bool,
    /// Tags deleted by retention.
    pub tags_deleted: Vec<RemovedTag>,
    /// Manifests removed because nothing reachable needs them.
    pub manifests_deleted: Vec<RemovedManifest>,
    /// Blob links removed, per repository.
    pub links_removed: Vec<RemovedLink>,
    /// Blobs kept (marked or linked).
    pub blobs_kept: u64,
    /// Blobs removed from storage, sorted.
    pub blobs_removed: Vec<Digest>,
    /// The bytes those blobs held.
    pub bytes_freed: u64,
    /// Upload sessions removed.
    pub uploads_removed: Vec<UploadId>,
    /// Scratch objects left by a crash (`tmp/` files) removed.
    pub scratch_removed: Vec<String>,
    /// How long it took.
    #[serde(rename = "duration_seconds", serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The counts of a [`GcReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GcSummary {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Tags deleted by retention.
    pub tags_deleted: usize,
    /// Manifests removed.
    pub manifests_deleted: usize,
    /// Blob links removed.
    pub links_removed: usize,
    /// Blobs kept.
    pub blobs_kept: u64,
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Upload sessions removed.
    pub uploads_removed: usize,
    /// Scratch objects removed.
    pub scratch_removed: usize,
    /// How long it took.
    #[serde(rename = "duration_seconds", serialize_with = "seconds")]
    pub duration: Duration,
}

impl GcReport {
    /// The counts only.
    pub fn summary(&self) -> GcSummary {
        GcSummary {
            dry_run: self.dry_run,
            tags_deleted: self.tags_deleted.len(),
            manifests_deleted: self.manifests_deleted.len(),
            links_removed: self.links_removed.len(),
            blobs_kept: self.blobs_kept,
            blobs_removed: self.blobs_removed.len(),
            bytes_freed: self.bytes_freed,
            uploads_removed: self.uploads_removed.len(),
            scratch_removed: self.scratch_removed.len(),
            duration: self.duration,
        }
    }
}

impl std::fmt::Display for GcSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} tags, {} manifests, {} links, {} blobs ({} bytes), {} uploads, \
             {} scratch files removed; {} blobs kept; {:.3} s",
            if self.dry_run { "dry run: " } else { "" },
            self.tags_deleted,
            self.manifests_deleted,
            self.links_removed,
            self.blobs_removed,
            self.bytes_freed,
            self.uploads_removed,
            self.scratch_removed,
            self.blobs_kept,
            self.duration.as_secs_f64(),
        )
    }
}

/// The value stored in a blob link: when it was made, in Unix seconds.
pub(super) fn link_value(now: SystemTime) -> bytes::Bytes {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    bytes::Bytes::from(secs.to_string())
}

/// When a link was made; `None` if unknown.
fn link_time(value: &[u8]) -> Option<SystemTime> {
    let secs: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// How old a scratch object (a `tmp/` file) must be to be taken for what
/// a crash left: a write in progress keeps one for moments, so an hour is
/// far on the safe side, whatever the grace period. Measured by the real
/// clock, which stamps files, not the registry's.
pub const SCRATCH_MAX_AGE: Duration = Duration::from_secs(3600);

/// How old a link may get before reading it through
/// [`Registry::stat_blob`] renews it: five minutes.
const LINK_RENEWAL: Duration = Duration::from_secs(300);

/// Whether a link (its stored value) is old enough to renew; a link of
/// unknown time is.
pub(super) fn link_is_stale(value: &[u8], now: SystemTime) -> bool {
    link_time(value).is_none_or(|linked| age(now, linked) >= LINK_RENEWAL)
}

/// How old something written at `then` is at `now` (zero if in the future).
fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

/// One run's settings, shared by both entry points.
struct Plan<'a> {
    retention: Option<&'a RetentionPolicy>,
    /// `None`: every manifest is a root and none is removed. `Some(grace)`:
    /// roots are tags and manifests pushed less than `grace` ago.
    manifest_grace: Option<Duration>,
    /// Blobs stored (by their own time) less than this ago are kept;
    /// `None` keeps none by age.
    blob_grace: Option<Duration>,
    /// Unreferenced links older than this go; `None` keeps them all.
    link_max_age: Option<Duration>,
    upload_max_age: Duration,
    dry_run: bool,
    now: SystemTime,
}

/// What a manifest references, by digest (content-addressed, so a parse is
/// valid for as long as the digest exists).
struct Refs {
    blobs: Vec<Digest>,
    children: Vec<Digest>,
}

type RefsCache = HashMap<Digest, Arc<Refs>>;

impl Registry {
    /// Apply retention, then mark and sweep (see the module docs): the one
    /// entry point for the intermediate registry's `prune` and its schedule.
    /// Tags are deleted only by the retention policy; a dry run reports the
    /// same as a real run would and changes nothing.
    #[tracing::instrument(level = "info", skip_all, fields(dry_run = options.dry_run))]
    pub async fn prune(&self, options: &PruneOptions) -> Result<GcReport> {
        let plan = Plan {
            retention: Some(&options.retention),
            manifest_grace: Some(options.grace_period),
            blob_grace: Some(options.grace_period),
            link_max_age: Some(options.grace_period),
            upload_max_age: options.upload_max_age,
            dry_run: options.dry_run,
            now: options.now.unwrap_or_else(|| self.now()),
        };
        self.run_gc(&plan).await
    }

    /// Collect garbage without retention: every manifest is kept (and
    /// marks what it references), upload sessions older than
    /// [`GcOptions::upload_max_age`] and, when asked, unreferenced links are
    /// removed, then every blob nothing marks or links. Prefer
    /// [`Registry::prune`], which also removes unreachable manifests.
    pub async fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport> {
        let plan = Plan {
            retention: None,
            manifest_grace: None,
            blob_grace: None,
            link_max_age: options.unreferenced_link_max_age,
            upload_max_age: options.upload_max_age,
            dry_run: options.dry_run,
            now: self.now(),
        };
        self.run_gc(&plan).await
    }

    async fn run_gc(&self, plan: &Plan<'_>) -> Result<GcReport> {
        let _one_at_a_time = self.inner.gc_run.lock().await;
        // And one at a time across processes; a dry run removes nothing and
        // needs no lock.
        let collector = if plan.dry_run {
            None
        } else {
            match self.backend_ref().try_lock_collector().await? {
                Some(lock) => Some(lock),
                None => return Err(crate::Error::CollectionRunning),
            }
        };
        let result = self.collect(plan).await;
        // Released before returning, not on drop: a store's lease is
        // removed by a request, which a `prune` about to exit would never
        // send, leaving other collectors locked out until it expired.
        if let Some(lock) = collector {
            lock.release().await;
        }
        result
    }

    /// A collection, once it holds the collector lock.
    async fn collect(&self, plan: &Plan<'_>) -> Result<GcReport> {
        let started = Instant::now();
        let mut report = GcReport {
            dry_run: plan.dry_run,
            ..GcReport::default()
        };
        let now_secs = unix_secs(plan.now);
        report.uploads_removed = self
            .expire_uploads_at(plan.now, plan.upload_max_age, plan.dry_run)
            .await?;
        report.scratch_removed = self.remove_stale_scratch(plan.dry_run).await?;

        // Retention and first-sight stamps, one repository at a time under
        // its lock, so a concurrent push of the same tag wins. Manifests are
        // parsed here too, outside the GC lock, to keep the time pushes wait
        // short.
        let mut expired: HashSet<(RepositoryName, String)> = HashSet::new();
        let mut cache = RefsCache::new();
        for repo in self.repositories().await? {
            self.retain(&repo, plan, now_secs, &mut expired, &mut report)
                .await?;
            for digest in self.manifests(&repo).await? {
                self.refs(&repo, &digest, &mut cache).await?;
            }
        }

        // From here on every write that makes something reachable is noted
        // (taking the lock waits for the writes in progress), so the mark
        // needs no lock: what it misses is noted, and the sweep spares it.
        let _recording = if plan.dry_run {
            None
        } else {
            let _gc = self.inner.gc_lock.write().await;
            *super::lock(&self.inner.noted) = Some(HashSet::new());
            Some(Recording(self))
        };
        let mut live: HashSet<Digest> = HashSet::new();
        let mut doomed = Doomed::default();
        for repo in self.repositories().await? {
            self.mark_repo(&repo, plan, &expired, &mut cache, &mut live, &mut doomed)
                .await?;
        }
        doomed
            .manifests
            .sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut blobs = Vec::new();
        for digest in self.blobs().await? {
            if live.contains(&digest) {
                report.blobs_kept += 1;
            } else {
                blobs.push(digest);
            }
        }
        self.sweep(plan, doomed, blobs, &mut cache, &mut report)
            .await?;
        report.duration = started.elapsed();
        tracing::info!(
            dry_run = plan.dry_run,
            tags = report.tags_deleted.len(),
            manifests = report.manifests_deleted.len(),
            links = report.links_removed.len(),
            blobs_removed = report.blobs_removed.len(),
            blobs_kept = report.blobs_kept,
            bytes = report.bytes_freed,
            uploads = report.uploads_removed.len(),
            scratch = report.scratch_removed.len(),
            seconds = report.duration.as_secs_f64(),
            "garbage collected"
        );
        Ok(report)
    }

    /// Remove the upload sessions started at least `max_age` ago: what a
    /// collection does first, and all that a registry without one (the
    /// buildset's) needs, on a timer. Returns their ids.
    pub async fn expire_uploads(&self, max_age: Duration) -> Result<Vec<UploadId>> {
        self.expire_uploads_at(self.now(), max_age, false).await
    }

    async fn expire_uploads_at(
        &self,
        now: SystemTime,
        max_age: Duration,
        dry_run: bool,
    ) -> Result<Vec<UploadId>> {
        let mut removed = Vec::new();
        for (id, info) in self.uploads().await? {
            if age(now, info.started) >= max_age {
                if !dry_run {
                    self.purge_upload(&id).await?;
                }
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// Remove scratch objects older than [`SCRATCH_MAX_AGE`] (left by a
    /// crash mid-write): at every start and in every collection. Returns
    /// their names; a dry run only lists them.
    pub async fn remove_stale_scratch(&self, dry_run: bool) -> Result<Vec<String>> {
        let before = SystemTime::now()
            .checked_sub(SCRATCH_MAX_AGE)
            .unwrap_or(UNIX_EPOCH);
        let removed = self.backend_ref().remove_scratch(before, dry_run).await?;
        if !removed.is_empty() && !dry_run {
            tracing::info!(count = removed.len(), "stale scratch files removed");
        }
        Ok(removed)
    }

    /// Delete the tags of `repo` that retention expires (remembering them
    /// in `expired`, which a dry run's mark treats as deleted) and stamp
    /// tags and manifest records that have no push time.
    async fn retain(
        &self,
        repo: &RepositoryName,
        plan: &Plan<'_>,
        now_secs: u64,
        expired: &mut HashSet<(RepositoryName, String)>,
        report: &mut GcReport,
    ) -> Result<()> {
        let repo_lock = self.repo_lock(repo);
        let _guard = repo_lock.lock().await;
        let be = self.backend_ref();
        for tag in be.keys(Table::Tags(repo)).await? {
            let Some(mut record) = self.tag_record(repo, &tag).await? else {
                continue;
            };
            let Some(pushed) = record.pushed else {
                if !plan.dry_run {
                    record.pushed = Some(now_secs);
                    be.put(Table::Tags(repo), &tag, record.to_bytes()?).await?;
                }
                continue;
            };
            let tag_age = age(plan.now, from_unix_secs(pushed));
            if plan
                .retention
                .is_some_and(|r| r.expires(repo.as_str(), &tag, tag_age))
            {
                if !plan.dry_run {
                    be.remove(Table::Tags(repo), &tag).await?;
                }
                tracing::debug!(%repo, %tag, digest = %record.digest, "tag expired");
                report.tags_deleted.push(RemovedTag {
                    repository: repo.to_string(),
                    tag: tag.clone(),
                    digest: record.digest,
                });
                expired.insert((repo.clone(), tag));
            }
        }
        if !plan.dry_run {
            for digest in self.manifests(repo).await? {
                if let Some(mut record) = self.manifest_record(repo, &digest).await?
                    && record.pushed.is_none()
                {
                    record.pushed = Some(now_secs);
                    let value = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
                    be.put(Table::Manifests(repo), &digest.to_string(), value.into())
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// What the manifest `digest` of `repo` references, from `cache` or its
    /// stored bytes; `None` if it is registered but its bytes are gone.
    async fn refs(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        cache: &mut RefsCache,
    ) -> Result<Option<Arc<Refs>>> {
        if let Some(refs) = cache.get(digest) {
            return Ok(Some(refs.clone()));
        }
        let stored = match self
            .get_manifest(repo, &speculum_oci::Reference::Digest(digest.clone()))
            .await
        {
            Ok(m) => m,
            Err(crate::Error::Client { .. }) => {
                // Gone meanwhile, or registered without its bytes: nothing
                // to mark. Not cached: it may be pushed again.
                tracing::debug!(%repo, %digest, "manifest unreadable, nothing to mark");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // A manifest that no longer parses cannot say what it needs: stop
        // rather than guess.
        let info = manifest::parse(Some(&stored.media_type), &stored.bytes)
            .map_err(|e| corrupt(format!("stored manifest {repo}@{digest}: {e}")))?;
        let refs = Arc::new(Refs {
            blobs: info.blobs().map(|d| d.digest.clone()).collect(),
            children: info.manifests.iter().map(|d| d.digest.clone()).collect(),
        });
        cache.insert(digest.clone(), refs.clone());
        Ok(Some(refs))
    }

    /// Mark from the roots of `repo`; add what it keeps to `live` and what
    /// it does not to `doomed`.
    async fn mark_repo(
        &self,
        repo: &RepositoryName,
        plan: &Plan<'_>,
        expired: &HashSet<(RepositoryName, String)>,
        cache: &mut RefsCache,
        live: &mut HashSet<Digest>,
        doomed: &mut Doomed,
    ) -> Result<()> {
        let be = self.backend_ref();
        let mut records: HashMap<Digest, ManifestRecord> = HashMap::new();
        for digest in self.manifests(repo).await? {
            if let Some(record) = self.manifest_record(repo, &digest).await? {
                records.insert(digest, record);
            }
        }
        let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for (digest, record) in &records {
            if let Some(subject) = &record.subject {
                referrers.entry(subject).or_default().push(digest);
            }
        }

        let mut work: Vec<Digest> = Vec::new();
        for tag in be.keys(Table::Tags(repo)).await? {
            // A dry run deleted nothing but must mark as if it had. (In a
            // real run the tag is gone, or was pushed again since, and then
            // counts: it and its manifest are new.)
            if plan.dry_run && expired.contains(&(repo.clone(), tag.clone())) {
                continue;
            }
            if let Some(record) = self.tag_record(repo, &tag).await? {
                work.push(record.digest);
            }
        }
        for (digest, record) in &records {
            let root = match plan.manifest_grace {
                None => true,
                // Unknown push time (only in a dry run, which does not
                // stamp): treat as just pushed.
                Some(grace) => record
                    .pushed
                    .is_none_or(|p| age(plan.now, from_unix_secs(p)) < grace),
            };
            if root {
                work.push(digest.clone());
            }
        }

        let mut marked: HashSet<Digest> = HashSet::new();
        let mut referenced: HashSet<Digest> = HashSet::new();
        while let Some(digest) = work.pop() {
            if !records.contains_key(&digest) || !marked.insert(digest.clone()) {
                continue;
            }
            if let Some(refs) = self.refs(repo, &digest, cache).await? {
                referenced.extend(refs.blobs.iter().cloned());
                work.extend(refs.children.iter().cloned());
            }
            if let Some(list) = referrers.get(&digest) {
                work.extend(list.iter().map(|d| (*d).clone()));
            }
        }

        for (digest, record) in &records {
            if !marked.contains(digest) {
                doomed
                    .manifests
                    .push((repo.clone(), digest.clone(), record.subject.clone()));
            }
        }
        for digest in self.linked_blobs(repo).await? {
            let expired_link = match plan.link_max_age {
                Some(max_age) if !referenced.contains(&digest) => {
                    let value = be.get(Table::Blobs(repo), &digest.to_string()).await?;
                    // An unknown link time keeps the link.
                    value
                        .as_deref()
                        .and_then(link_time)
                        .is_some_and(|linked| age(plan.now, linked) >= max_age)
                }
                _ => false,
            };
            if expired_link {
                doomed.links.push((repo.clone(), digest));
            } else {
                live.insert(digest);
            }
        }
        live.extend(referenced);
        live.extend(marked);
        Ok(())
    }

    /// Remove what the mark doomed, in batches, each under the GC lock held
    /// exclusively, sparing whatever was noted since the collection began
    /// and whatever is young or in use now by its own time: each item is
    /// read again right before it goes, so that a push made by another
    /// process after the mark (which nothing notes) is never removed.
    /// Manifests and links go before blobs, so a blob whose link was spared
    /// is spared too (its digest is noted, or its link is there).
    async fn sweep(
        &self,
        plan: &Plan<'_>,
        doomed: Doomed,
        blobs: Vec<Digest>,
        cache: &mut RefsCache,
        report: &mut GcReport,
    ) -> Result<()> {
        let be = self.backend_ref();
        let noted = |d: &Digest| {
            super::lock(&self.inner.noted)
                .as_ref()
                .is_some_and(|n| n.contains(d))
        };
        // What this run removed (or, in a dry run, would have): gone for
        // the checks that follow, as it is in a real run.
        let mut gone = Gone::new();
        for batch in doomed.manifests.chunks(SWEEP_BATCH) {
            let _gc = self.inner.gc_lock.write().await;
            for (repo, digest, subject) in batch {
                if noted(digest) || !self.manifest_is_garbage(repo, digest, plan).await? {
                    continue;
                }
                if !plan.dry_run {
                    let key = digest.to_string();
                    if let Some(subject) = subject {
                        be.remove(Table::Referrers(repo, subject), &key).await?;
                    }
                    be.remove(Table::Manifests(repo), &key).await?;
                }
                tracing::debug!(%repo, %digest, "manifest removed");
                gone.insert((Kind::Manifest, repo.clone(), digest.clone()));
                report.manifests_deleted.push(RemovedManifest {
                    repository: repo.to_string(),
                    digest: digest.clone(),
                });
            }
        }
        // The blobs that manifests pushed since the mark need, per
        // repository, read once right before its links go.
        let mut needed: HashMap<RepositoryName, HashSet<Digest>> = HashMap::new();
        for batch in doomed.links.chunks(SWEEP_BATCH) {
            for (repo, _) in batch {
                if !needed.contains_key(repo) {
                    let young = self.young_manifest_blobs(repo, plan, cache).await?;
                    needed.insert(repo.clone(), young);
                }
            }
            let _gc = self.inner.gc_lock.write().await;
            for (repo, digest) in batch {
                if noted(digest)
                    || needed.get(repo).is_some_and(|n| n.contains(digest))
                    || !self.link_is_garbage(repo, digest, plan).await?
                {
                    continue;
                }
                if !plan.dry_run {
                    be.remove(Table::Blobs(repo), &digest.to_string()).await?;
                }
                gone.insert((Kind::Link, repo.clone(), digest.clone()));
                report.links_removed.push(RemovedLink {
                    repository: repo.to_string(),
                    digest: digest.clone(),
                });
            }
        }
        for batch in blobs.chunks(SWEEP_BATCH) {
            let repos = self.repositories().await?;
            let _gc = self.inner.gc_lock.write().await;
            for digest in batch {
                if noted(digest) || !self.blob_is_garbage(digest, &repos, &gone, plan).await? {
                    report.blobs_kept += 1;
                    continue;
                }
                report.bytes_freed += be.blob_size(digest).await?.unwrap_or(0);
                if !plan.dry_run {
                    be.delete_blob(digest).await?;
                }
                report.blobs_removed.push(digest.clone());
            }
        }
        Ok(())
    }

    /// Whether the manifest `digest` of `repo`, doomed by the mark, is
    /// still garbage: registered, and last pushed longer than the grace
    /// period ago (a push since, in any process, makes it young).
    async fn manifest_is_garbage(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        plan: &Plan<'_>,
    ) -> Result<bool> {
        let (Some(grace), Some(record)) = (
            plan.manifest_grace,
            self.manifest_record(repo, digest).await?,
        ) else {
            return Ok(false);
        };
        // Unknown push time (only in a dry run): as the mark, just pushed.
        Ok(record
            .pushed
            .is_some_and(|p| age(plan.now, from_unix_secs(p)) >= grace))
    }

    /// Whether the link of `digest` into `repo`, doomed by the mark, is
    /// still garbage: there, and made longer than the maximum age ago (a
    /// link made or renewed since, in any process, is young).
    async fn link_is_garbage(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        plan: &Plan<'_>,
    ) -> Result<bool> {
        let Some(max_age) = plan.link_max_age else {
            return Ok(false);
        };
        let value = self
            .backend_ref()
            .get(Table::Blobs(repo), &digest.to_string())
            .await?;
        Ok(value
            .as_deref()
            .and_then(link_time)
            .is_some_and(|linked| age(plan.now, linked) >= max_age))
    }

    /// The blobs referenced by the manifests of `repo` pushed within the
    /// grace period, as they are now (a manifest pushed again after the
    /// mark needs its blobs, even though their links are old).
    async fn young_manifest_blobs(
        &self,
        repo: &RepositoryName,
        plan: &Plan<'_>,
        cache: &mut RefsCache,
    ) -> Result<HashSet<Digest>> {
        let mut out = HashSet::new();
        let Some(grace) = plan.manifest_grace.or(plan.link_max_age) else {
            return Ok(out);
        };
        for digest in self.manifests(repo).await? {
            let young = self.manifest_record(repo, &digest).await?.is_some_and(|r| {
                r.pushed
                    .is_none_or(|p| age(plan.now, from_unix_secs(p)) < grace)
            });
            if young && let Some(refs) = self.refs(repo, &digest, cache).await? {
                out.extend(refs.blobs.iter().cloned());
            }
        }
        Ok(out)
    }

    /// Whether the blob `digest`, which the mark did not reach, is still
    /// garbage: no repository links it or holds it as a manifest now
    /// (besides what this run removed, listed in `gone`), and it was stored
    /// longer than the grace period ago by its own time.
    async fn blob_is_garbage(
        &self,
        digest: &Digest,
        repos: &[RepositoryName],
        gone: &Gone,
        plan: &Plan<'_>,
    ) -> Result<bool> {
        let be = self.backend_ref();
        let key = digest.to_string();
        for repo in repos {
            for (table, kind) in [
                (Table::Blobs(repo), Kind::Link),
                (Table::Manifests(repo), Kind::Manifest),
            ] {
                if be.get(table, &key).await?.is_some()
                    && !gone.contains(&(kind, repo.clone(), digest.clone()))
                {
                    return Ok(false);
                }
            }
        }
        match plan.blob_grace {
            None => Ok(true),
            Some(grace) => Ok(be
                .blob_modified(digest)
                .await?
                .is_some_and(|stored| age(plan.now, stored) >= grace)),
        }
    }
}

/// How many removals a sweep makes per hold of the GC lock: pushes wait at
/// most one batch.
const SWEEP_BATCH: usize = 16;

/// What the mark found unneeded: manifests (repository, digest, subject)
/// and blob links.
#[derive(Default)]
struct Doomed {
    manifests: Vec<(RepositoryName, Digest, Option<Digest>)>,
    links: Vec<(RepositoryName, Digest)>,
}

/// What a sweep removed: a manifest or a link, of a repository.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Manifest,
    Link,
}

type Gone = HashSet<(Kind, RepositoryName, Digest)>;

/// Stops recording noted digests when the collection ends, however it ends.
struct Recording<'a>(&'a Registry);

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        *super::lock(&self.0.inner.noted) = None;
    }
}
