//! The garbage collector's lease: one collection at a time across every
//! process that opens the bucket.
//!
//! Object stores here have no lock and, through Swift's S3 API, no
//! create-only write, so the lease is a small object claimed by writing it
//! and reading it back after a pause: of two processes that both found it
//! free, the later write wins and the earlier one sees that it lost. That
//! holds as long as a claimant's read-then-write takes less than the pause,
//! which is checked: a slow claim gives up (and its lease expires). The holder rewrites the lease
//! well before it expires; a holder that dies leaves a lease that expires,
//! so a crashed collector blocks the next one for at most [`TTL`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Bucket, lock, unix_secs};
use crate::Result;
use crate::backend::{CollectorLock, HeldLock};

/// How long a lease lasts unless renewed.
const TTL: Duration = Duration::from_secs(60);
/// How often the holder renews it.
const RENEW: Duration = Duration::from_secs(15);
/// How long a claimant waits before reading its claim back.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    /// `<backend instance>/<lease id>`.
    holder: String,
    /// Unix seconds.
    expires: u64,
}

pub(super) async fn acquire(bucket: &Arc<Bucket>) -> Result<Option<CollectorLock>> {
    // A release of ours still on its way would remove the claim below.
    let pending: Vec<_> = lock(&bucket.releases).drain(..).collect();
    for release in pending {
        let _ = release.await;
    }
    let asked = Instant::now();
    if let Some(current) = read(bucket).await?
        && current.expires > unix_secs(SystemTime::now())
        && !released_here(bucket, &current.holder)
    {
        return Ok(None);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let holder = format!("{}/{id}", bucket.instance);
    write(bucket, &holder).await?;
    let claim_took = asked.elapsed();
    tokio::time::sleep(SETTLE).await;
    let won = read(bucket).await?.is_some_and(|l| l.holder == holder);
    if !won {
        return Ok(None);
    }
    if claim_took >= SETTLE {
        // Another claimant may have read the lease as free before our write
        // and written its own after our read-back: step back, and leave our
        // lease to expire rather than remove what someone may rely on.
        tracing::warn!(
            took = ?claim_took,
            "the store was too slow to claim the collector's lease safely; not collecting now"
        );
        return Ok(None);
    }
    lock(&bucket.leases).insert(holder.clone());
    let renewer = tokio::spawn(renew(bucket.clone(), holder.clone()));
    Ok(Some(CollectorLock::with_release(Held {
        bucket: bucket.clone(),
        holder,
        renewer,
        released: false,
    })))
}

/// A lease of this backend's that it let go of but whose removal from the
/// store may not have landed yet.
fn released_here(bucket: &Bucket, holder: &str) -> bool {
    holder
        .strip_prefix(bucket.instance.as_str())
        .is_some_and(|rest| rest.starts_with('/'))
        && !lock(&bucket.leases).contains(holder)
}

async fn read(bucket: &Bucket) -> Result<Option<Lease>> {
    let Some(bytes) = bucket.get_bytes(&bucket.layout.collector()).await? else {
        return Ok(None);
    };
    // A lease nobody can read is treated as absent rather than blocking
    // collection for ever.
    Ok(serde_json::from_slice(&bytes).ok())
}

async fn write(bucket: &Bucket, holder: &str) -> Result<()> {
    let lease = Lease {
        holder: holder.to_owned(),
        expires: unix_secs(SystemTime::now() + TTL),
    };
    let json = serde_json::to_vec(&lease).unwrap_or_default();
    bucket
        .put_bytes(&bucket.layout.collector(), Bytes::from(json))
        .await
}

async fn renew(bucket: Arc<Bucket>, holder: String) {
    loop {
        tokio::time::sleep(RENEW).await;
        if let Err(e) = write(&bucket, &holder).await {
            tracing::error!(error = %e, "cannot renew the garbage collector's lease");
        }
    }
}

/// Remove the lease if it is still `holder`'s.
async fn release(bucket: Arc<Bucket>, holder: String) {
    match read(&bucket).await {
        Ok(Some(l)) if l.holder == holder => {
            bucket.delete_quietly(&bucket.layout.collector()).await;
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the collector's lease to release it"),
    }
}

/// The held lease: releasing it (or dropping it) stops the renewal and
/// removes the lease.
struct Held {
    bucket: Arc<Bucket>,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Held {
    /// Stop renewing and forget the lease here: this process treats it as
    /// free from now on (see `released_here`), others once its removal,
    /// returned to be awaited or spawned, lands or it expires. `None` if
    /// let go of already.
    fn let_go(&mut self) -> Option<impl Future<Output = ()> + Send + 'static> {
        if self.released {
            return None;
        }
        self.released = true;
        self.renewer.abort();
        lock(&self.bucket.leases).remove(&self.holder);
        Some(release(self.bucket.clone(), self.holder.clone()))
    }
}

impl HeldLock for Held {
    fn release(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        match self.let_go() {
            Some(removal) => Box::pin(removal),
            None => Box::pin(std::future::ready(())),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(removal) = self.let_go() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = runtime.spawn(removal);
            lock(&self.bucket.releases).push(task);
        }
    }
}
