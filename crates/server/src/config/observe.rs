//! What the registry tells its operator: `metrics` and `log-format`.

use serde::Deserialize;

use super::RawRegistry;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What is measured and served at `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Whether `/metrics` answers (404 otherwise). Requests are counted
    /// either way.
    pub serve: bool,
    /// Whether storage is measured (blobs, bytes, upload sessions) every
    /// minute.
    pub storage_figures: bool,
}

/// `metrics` (default: on) turns both on or off.
pub(super) fn metrics(raw: &RawRegistry) -> MetricsSettings {
    let on = raw.metrics.unwrap_or(true);
    MetricsSettings {
        serve: on,
        storage_figures: on,
    }
}

/// `log-format` (default: text).
pub(super) fn log_format(raw: &RawRegistry) -> LogFormat {
    raw.log_format.unwrap_or_default()
}
