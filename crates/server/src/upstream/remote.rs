//! One remote registry the server fetches from on a client's behalf (a
//! pull-through upstream, or the intermediate registry behind speculative
//! images): its client, the time limits of its calls, whether it is down,
//! and how its failures are answered.
//!
//! Failures are answered as 404s (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`) with
//! a detail naming the remote and the cause: a client configured with
//! mirrors falls back on a 404, while a 5xx can abort its pull (see the
//! `upstream` module). After a connection failure the remote is considered
//! down for a few seconds, so a dead remote costs one timeout, not one per
//! request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use speculum_oci::{Digest, ErrorCode, RepositoryName};

use super::lock;
use crate::error::{ApiError, ApiResult};

/// The longest a manifest request (GET or HEAD) to a remote may take.
pub(crate) const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a tag re-check may take before the cached tag is served.
pub(crate) const RECHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a remote may take to start answering a blob GET.
pub(crate) const BLOB_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a blob download may stall between two chunks.
pub(crate) const BLOB_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a remote that could not be reached is not asked again.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// What a remote is to this registry; decides how its failures read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A pull-through upstream, named by its namespace.
    Upstream,
    /// The intermediate registry speculative images come from, named by
    /// its `host:port`.
    Intermediate,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Upstream => "upstream",
            Role::Intermediate => "intermediate registry",
        }
    }

    fn detail_key(self) -> &'static str {
        match self {
            Role::Upstream => "upstream",
            Role::Intermediate => "intermediate_registry",
        }
    }
}

/// Why a remote request failed.
pub(crate) enum Failure {
    /// The remote does not have it.
    NotFound,
    /// Anything else: unreachable, timed out, refused, bad content.
    Failed(String),
}

impl Failure {
    fn from_client(e: speculum_client::Error) -> Failure {
        match e.status() {
            Some(404) => Failure::NotFound,
            _ => Failure::Failed(e.to_string()),
        }
    }
}

/// One remote registry.
pub(crate) struct Remote {
    role: Role,
    name: String,
    client: speculum_client::Registry,
    down_until: Mutex<Option<Instant>>,
}

impl Remote {
    /// A remote called `name` (a namespace, or `host:port`) in messages.
    pub(crate) fn new(role: Role, name: String, client: speculum_client::Registry) -> Remote {
        Remote {
            role,
            name,
            client,
            down_until: Mutex::new(None),
        }
    }

    /// The name used in messages.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The client.
    pub(crate) fn client(&self) -> &speculum_client::Registry {
        &self.client
    }

    fn is_down(&self) -> bool {
        lock(&self.down_until).is_some_and(|t| Instant::now() < t)
    }

    /// Note that the remote could not be reached (or answered again).
    fn set_down(&self, down: bool) {
        let mut until = lock(&self.down_until);
        if down {
            if until.is_none_or(|t| t <= Instant::now()) {
                tracing::warn!(remote = %self.name, url = %self.client.base(), down_for = ?DOWN_FOR, "{} unreachable", self.role.word());
            }
            *until = Some(Instant::now() + DOWN_FOR);
        } else {
            *until = None;
        }
    }

    /// Run one call with a time limit, classifying its failure and tracking
    /// whether the remote is reachable.
    pub(crate) async fn call<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = speculum_client::Result<T>>,
    ) -> Result<T, Failure> {
        if self.is_down() {
            return Err(Failure::Failed(format!(
                "{} was unreachable moments ago",
                self.client.base()
            )));
        }
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => {
                self.set_down(false);
                Ok(v)
            }
            Ok(Err(e)) => {
                if matches!(e, speculum_client::Error::Transport { .. }) {
                    self.set_down(true);
                }
                Err(Failure::from_client(e))
            }
            Err(_) => {
                self.set_down(true);
                Err(Failure::Failed(format!(
                    "{} did not answer within {limit:?}",
                    self.client.base()
                )))
            }
        }
    }

    /// The 404 answered when the remote could not provide something.
    pub(crate) fn unknown(&self, code: ErrorCode, what: String, failure: &Failure) -> ApiError {
        let noun = if code == ErrorCode::BlobUnknown {
            "blob"
        } else {
            "manifest"
        };
        let (word, key) = (self.role.word(), self.role.detail_key());
        match failure {
            Failure::NotFound => ApiError::new(code)
                .message(format!("{noun} unknown to registry and to its {word}"))
                .detail(json!({ "reference": what, key: self.name })),
            Failure::Failed(why) => ApiError::new(code)
                .message(format!(
                    "{noun} unknown to registry; {word} {} failed: {why}",
                    self.name
                ))
                .detail(json!({
                    "reference": what,
                    key: self.name,
                    "error": why,
                })),
        }
    }

    /// Start downloading a blob of `remote_repo`; a failure is the 404 to
    /// answer.
    pub(crate) async fn open_blob(
        &self,
        remote_repo: &RepositoryName,
        digest: &Digest,
    ) -> ApiResult<speculum_client::ByteStream> {
        self.call(BLOB_START_TIMEOUT, self.client.get_blob(remote_repo, digest))
            .await
            .map_err(|f| {
                if let Failure::Failed(why) = &f {
                    tracing::warn!(remote = %self.name, %remote_repo, %digest, error = %why, "blob fetch failed");
                }
                self.unknown(ErrorCode::BlobUnknown, digest.to_string(), &f)
            })
    }
}
