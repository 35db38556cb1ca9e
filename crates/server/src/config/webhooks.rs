//! `webhooks:`: its keys are checked by the `notify` module, which owns
//! them; this maps its errors under `registry.`.

use std::path::Path;

use super::{ConfigError, RawRegistry, Source};
use crate::notify::{NotifyError, WebhookSettings};

/// Validate `webhooks`; the queue goes under `queue_parent` unless
/// `queue-dir` says otherwise.
pub(super) fn validate(
    raw: &RawRegistry,
    queue_parent: &Path,
    at: &Source,
) -> Result<WebhookSettings, ConfigError> {
    raw.webhooks
        .settings(queue_parent, at.base)
        .map_err(|e| match e {
            NotifyError::Config { key, message } => at.err(&format!("registry.{key}"), message),
            other => at.err("registry.webhooks", other.to_string()),
        })
}
