//! `upstreams:`: its keys are checked by the `upstream` module, which owns
//! them; this maps its errors under `registry.`.

use super::{ConfigError, RawRegistry, Source};
use crate::upstream::{UpstreamSettings, validate_upstreams};

/// Validate `upstreams`.
pub(super) fn validate(
    raw: &RawRegistry,
    at: &Source,
) -> Result<Vec<UpstreamSettings>, ConfigError> {
    validate_upstreams(&raw.upstreams, Some(at.base))
        .map_err(|e| at.err(&format!("registry.{}", e.key), e.message))
}
