//! The bound on open upload sessions per owner (the user who started them).
//!
//! Storage records no owner, so the registry keeps, in memory, the ids of
//! the sessions each owner started, and asks the backend which of them
//! still exist only when an owner reaches the bound. Counting that way is
//! right however a session ends (finished, cancelled, removed for a wrong
//! digest or a full disk, expired by a collection, even by another
//! process) with no hook in each of those paths to forget, and costs
//! nothing below the bound. An owner holds at most `max_open` ids, and
//! there are as many owners as users, so the map stays small. Sessions
//! started before a restart are not counted (they expire by age).

use std::collections::{HashMap, HashSet};

use speculum_oci::ErrorCode;

use super::{Registry, lock};
use crate::backend::UploadId;
use crate::{Error, Result};

/// The ids of the sessions each owner started.
pub(super) type Owners = std::sync::Mutex<HashMap<String, HashSet<UploadId>>>;

impl Registry {
    /// Count `id` against `owner`, unless `owner` has `max_open` sessions
    /// open already: then [`ErrorCode::TooManyRequests`].
    pub(super) async fn reserve_session(
        &self,
        owner: &str,
        id: &UploadId,
        max_open: usize,
    ) -> Result<()> {
        let held: Vec<UploadId> = lock(&self.inner.owners)
            .get(owner)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        let mut ended = Vec::new();
        if held.len() >= max_open {
            for h in held {
                if self.backend_ref().upload_info(&h).await?.is_none() {
                    ended.push(h);
                }
            }
        }
        // Check and count under one lock: concurrent starts never pass the
        // bound together. (An id that ended never comes back.)
        let mut owners = lock(&self.inner.owners);
        let ids = owners.entry(owner.to_string()).or_default();
        for h in &ended {
            ids.remove(h);
        }
        if ids.len() >= max_open {
            return Err(Error::client(
                ErrorCode::TooManyRequests,
                format!(
                    "too many upload sessions open ({max_open} at most per user): \
                     finish or cancel one, or wait for abandoned ones to expire"
                ),
            ));
        }
        ids.insert(id.clone());
        Ok(())
    }

    /// Stop counting `id` against `owner` (its session was never created).
    pub(super) fn release_session(&self, owner: &str, id: &UploadId) {
        if let Some(ids) = lock(&self.inner.owners).get_mut(owner) {
            ids.remove(id);
        }
    }
}
