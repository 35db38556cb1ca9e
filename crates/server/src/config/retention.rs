//! What expires and when it is collected: `expiration`, `retention` and
//! `gc`. Patterns are compiled here, once; the server and `prune` use the
//! compiled rules.

use std::time::Duration;

use serde::Deserialize;
use speculum_storage::RetentionRule;

use super::{ConfigError, RawRegistry, Source};
use crate::value::DurationValue;

/// One `retention:` rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRetentionRule {
    /// Repositories the rule applies to (a regular expression over the whole
    /// name; default: every repository).
    repositories: Option<String>,
    /// Tags the rule applies to (a regular expression over the whole tag;
    /// default: the intermediate registry's `<build>_<tag>`).
    tags: Option<String>,
    /// The age from which matching tags expire.
    older_than: DurationValue,
}

/// `gc:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawGc {
    interval: Option<DurationValue>,
    grace: Option<DurationValue>,
    uploads: Option<DurationValue>,
}

/// One validated retention rule: tags of repositories matching
/// `repositories` whose names match `tags`, last pushed at least
/// `older_than` ago, expire. Patterns are regular expressions over the
/// whole name; `rule` is their compiled form.
#[derive(Debug, Clone)]
pub struct RetentionRuleSettings {
    /// The repository pattern.
    pub repositories: String,
    /// The tag pattern.
    pub tags: String,
    /// The age from which matching tags expire.
    pub older_than: Duration,
    /// The compiled rule.
    pub rule: RetentionRule,
}

impl RetentionRuleSettings {
    /// Every repository.
    pub const ALL_REPOSITORIES: &'static str = ".*";
    /// The intermediate registry's tags: `<zuul.build>_<tag>`, as storage
    /// defines them.
    pub const INTERMEDIATE_TAGS: &'static str = RetentionRule::INTERMEDIATE_TAGS;

    /// Compile a rule; the error is the message for the pattern at fault.
    pub fn new(
        repositories: &str,
        tags: &str,
        older_than: Duration,
    ) -> Result<RetentionRuleSettings, String> {
        let rule = RetentionRule::new(repositories, tags, older_than).map_err(|e| e.to_string())?;
        Ok(RetentionRuleSettings {
            repositories: repositories.to_string(),
            tags: tags.to_string(),
            older_than,
            rule,
        })
    }
}

/// Garbage collection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcSettings {
    /// Run a prune this often while serving (`None`: never; use
    /// `speculum-registry prune`).
    pub interval: Option<Duration>,
    /// How long untagged manifests and unreferenced blobs survive after
    /// their push (a push must finish within it).
    pub grace: Duration,
    /// How long an abandoned upload session survives.
    pub upload_max_age: Duration,
    /// Remove abandoned upload sessions on a timer of their own, every
    /// quarter of `upload_max_age`: for a registry that never prunes (the
    /// buildset profile), so that abandoned uploads still go.
    pub sweep_uploads: bool,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            interval: None,
            grace: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
            sweep_uploads: false,
        }
    }
}

/// `expiration` (zuul-registry's single rule) or `retention` (a list), not
/// both; every pattern compiled.
pub(super) fn retention(
    raw: &RawRegistry,
    at: &Source,
) -> Result<Vec<RetentionRuleSettings>, ConfigError> {
    let rules: Vec<(Option<&str>, Option<&str>, Duration)> = match (raw.expiration, &raw.retention)
    {
        (Some(_), Some(_)) => {
            return Err(at.err(
                "registry.retention",
                "give either expiration or retention, not both",
            ));
        }
        (Some(DurationValue(age)), None) => vec![(None, None, age)],
        (None, Some(rules)) => rules
            .iter()
            .map(|r| (r.repositories.as_deref(), r.tags.as_deref(), r.older_than.0))
            .collect(),
        (None, None) => Vec::new(),
    };
    let mut compiled = Vec::with_capacity(rules.len());
    for (i, (repositories, tags, older_than)) in rules.into_iter().enumerate() {
        let repositories = repositories.unwrap_or(RetentionRuleSettings::ALL_REPOSITORIES);
        let tags = tags.unwrap_or(RetentionRuleSettings::INTERMEDIATE_TAGS);
        let rule = RetentionRule::new(repositories, tags, older_than).map_err(|e| {
            // Storage compiles the repository pattern first: the one that
            // failed names the key.
            let what = if e.pattern == repositories {
                "repositories"
            } else {
                "tags"
            };
            at.err(&format!("registry.retention[{i}].{what}"), e.to_string())
        })?;
        let rule = RetentionRuleSettings {
            repositories: repositories.to_string(),
            tags: tags.to_string(),
            older_than,
            rule,
        };
        compiled.push(rule);
    }
    Ok(compiled)
}

/// `gc:`; every key optional.
pub(super) fn gc(raw: &RawRegistry, at: &Source) -> Result<GcSettings, ConfigError> {
    let mut gc = GcSettings::default();
    let Some(raw_gc) = &raw.gc else {
        return Ok(gc);
    };
    if let Some(DurationValue(d)) = raw_gc.interval {
        if d < Duration::from_secs(1) {
            return Err(at.err("registry.gc.interval", "must be at least 1s"));
        }
        gc.interval = Some(d);
    }
    if let Some(DurationValue(d)) = raw_gc.grace {
        gc.grace = d;
    }
    if let Some(DurationValue(d)) = raw_gc.uploads {
        gc.upload_max_age = d;
    }
    Ok(gc)
}
