//! Retention: which tags expire.
//!
//! A policy is a list of rules; a tag expires when any rule matches its
//! repository and its name and the tag was last pushed at least the rule's
//! age ago. The usual rule is the intermediate registry's: tags named
//! `<zuul.build>_<tag>` (a 32-hex-digit build id, an underscore, the image's
//! tag) expire after the configured `expiration`
//! ([`RetentionPolicy::intermediate_registry`]). A tag whose push time is
//! unknown never expires on that run (see [`crate::TagInfo::pushed_at`]).

use std::time::Duration;

use regex::Regex;

/// A pattern of a [`RetentionRule`] that is not a valid regular expression.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {message}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// Why it does not compile.
    pub message: String,
}

/// One retention rule: tags of matching repositories whose names match and
/// that were last pushed at least `older_than` ago expire.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    repositories: Pattern,
    tags: Pattern,
    older_than: Duration,
}

/// What a rule matches names with.
#[derive(Debug, Clone)]
enum Pattern {
    /// Every name.
    Any,
    /// `<zuul.build>_<tag>`: 32 lowercase hex digits, `_`, at least one more
    /// character (the same as [`RetentionRule::INTERMEDIATE_TAGS`]).
    IntermediateTag,
    /// A regular expression anchored at both ends.
    Regex(Regex),
}

impl Pattern {
    /// Compile `pattern` so that it must match the whole name.
    fn whole(pattern: &str) -> Result<Pattern, PatternError> {
        let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| PatternError {
            pattern: pattern.to_string(),
            message: e.to_string(),
        })?;
        Ok(Pattern::Regex(regex))
    }

    fn is_match(&self, name: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::IntermediateTag => {
                let b = name.as_bytes();
                b.len() > 33
                    && b[..32]
                        .iter()
                        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
                    && b[32] == b'_'
            }
            Pattern::Regex(r) => r.is_match(name),
        }
    }
}

impl RetentionRule {
    /// The tag pattern of the intermediate registry: `<zuul.build>_<tag>`.
    pub const INTERMEDIATE_TAGS: &'static str = "[0-9a-f]{32}_.+";

    /// A rule over the repositories whose names match `repositories` and the
    /// tags whose names match `tags` (regular expressions that must match
    /// the whole name: `.*` is every name), expiring tags last pushed at
    /// least `older_than` ago.
    pub fn new(
        repositories: &str,
        tags: &str,
        older_than: Duration,
    ) -> Result<RetentionRule, PatternError> {
        Ok(RetentionRule {
            repositories: Pattern::whole(repositories)?,
            tags: Pattern::whole(tags)?,
            older_than,
        })
    }

    /// The intermediate registry's rule: in every repository, tags
    /// `<zuul.build>_<tag>` older than `expiration`.
    pub fn intermediate_registry(expiration: Duration) -> RetentionRule {
        RetentionRule {
            repositories: Pattern::Any,
            tags: Pattern::IntermediateTag,
            older_than: expiration,
        }
    }

    /// The age from which matching tags expire.
    pub fn older_than(&self) -> Duration {
        self.older_than
    }

    /// Whether a tag of `repository` named `tag`, last pushed `age` ago,
    /// expires under this rule.
    pub fn expires(&self, repository: &str, tag: &str, age: Duration) -> bool {
        age >= self.older_than && self.repositories.is_match(repository) && self.tags.is_match(tag)
    }
}

/// A list of [`RetentionRule`]s; empty (the default) expires nothing.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    /// The rules; a tag expires when any of them says so.
    pub rules: Vec<RetentionRule>,
}

impl RetentionPolicy {
    /// A policy of the given rules.
    pub fn new(rules: Vec<RetentionRule>) -> RetentionPolicy {
        RetentionPolicy { rules }
    }

    /// The intermediate registry's default: one
    /// [`RetentionRule::intermediate_registry`] rule.
    pub fn intermediate_registry(expiration: Duration) -> RetentionPolicy {
        RetentionPolicy::new(vec![RetentionRule::intermediate_registry(expiration)])
    }

    /// Whether the policy expires nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a tag of `repository` named `tag`, last pushed `age` ago,
    /// expires under any rule.
    pub fn expires(&self, repository: &str, tag: &str, age: Duration) -> bool {
        self.rules.iter().any(|r| r.expires(repository, tag, age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: &str = "0123456789abcdef0123456789abcdef";
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn intermediate_rule() {
        let rule = RetentionRule::intermediate_registry(DAY);
        assert!(rule.expires("org/app", &format!("{BUILD}_latest"), DAY));
        assert!(rule.expires("quay.io/a/b", &format!("{BUILD}_v1.2"), 2 * DAY));
        // Too young.
        assert!(!rule.expires("org/app", &format!("{BUILD}_latest"), DAY / 2));
        // Not an intermediate-registry tag.
        for tag in [
            "latest",
            &format!("{BUILD}_"),
            &format!("{BUILD}latest"),
            &format!("x{BUILD}_latest"),
            "0123456789ABCDEF0123456789ABCDEF_latest",
            "0123456789abcdef_latest",
        ] {
            assert!(!rule.expires("org/app", tag, 10 * DAY), "{tag}");
        }
    }

    /// The built-in matcher and the documented pattern agree.
    #[test]
    fn intermediate_matcher_is_the_pattern() {
        let regex = Pattern::whole(RetentionRule::INTERMEDIATE_TAGS).unwrap();
        for tag in [
            format!("{BUILD}_latest"),
            format!("{BUILD}_x"),
            format!("{BUILD}__"),
            format!("{BUILD}_"),
            BUILD.to_string(),
            format!("{BUILD}0_latest"),
            "0123456789abcdeg0123456789abcdef_latest".to_string(),
            "latest".to_string(),
            String::new(),
        ] {
            assert_eq!(
                Pattern::IntermediateTag.is_match(&tag),
                regex.is_match(&tag),
                "{tag}"
            );
        }
    }

    #[test]
    fn patterns_match_whole_names() {
        let rule = RetentionRule::new("org/.*", "change_[0-9]+_.+", DAY).unwrap();
        assert!(rule.expires("org/app", "change_12_latest", DAY));
        assert!(!rule.expires("other/org/app", "change_12_latest", DAY));
        assert!(!rule.expires("org/app", "xchange_12_latest", DAY));
        let err = RetentionRule::new("(", ".*", DAY).unwrap_err();
        assert_eq!(err.pattern, "(");
        assert!(err.to_string().starts_with("invalid pattern \"(\""));
    }

    #[test]
    fn policy_is_any_rule() {
        let policy = RetentionPolicy::new(vec![
            RetentionRule::new("a", "x", DAY).unwrap(),
            RetentionRule::new("b", "y", 2 * DAY).unwrap(),
        ]);
        assert!(policy.expires("a", "x", DAY));
        assert!(!policy.expires("b", "y", DAY));
        assert!(policy.expires("b", "y", 2 * DAY));
        assert!(!policy.expires("a", "y", 9 * DAY));
        assert!(!RetentionPolicy::default().expires("a", "x", 9 * DAY));
    }
}
