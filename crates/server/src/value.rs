//! Value helpers shared by every config section: durations as written in a
//! config file, and regular expressions that must match a whole name.
//!
//! A leaf module: it imports nothing from the rest of the crate, so every
//! section (`config`, `auth`, `notify`, `upstream`, `limits`) can use it
//! without the sections importing one another.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A duration in a config file: a number of seconds (as zuul-registry's
/// `expiration`) or a string such as `90s`, `12h` or `7days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurationValue(pub(crate) Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or a duration such as \"12h\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue(Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationValue, E> {
                u64::try_from(v)
                    .map(|v| DurationValue(Duration::from_secs(v)))
                    .map_err(|_| E::custom(format!("a duration cannot be negative: {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationValue, E> {
                parse_duration(v).map(DurationValue).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parse a duration written as text in any config section: a number of
/// seconds (`"90"`) or a human duration (`90s`, `12h`, `7days`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration {t:?}: {e}"))
}

/// A regular expression that must match the whole text, as every pattern
/// in the config does (retention, webhook filters, upstream repositories).
pub(crate) fn whole_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// `bytes` without its trailing newlines (a secret or password file written
/// by `echo`).
pub(crate) fn trim_newline(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn patterns_match_whole_names() {
        let r = whole_match("a|b").unwrap();
        assert!(r.is_match("a") && !r.is_match("ab"));
        assert_eq!(trim_newline(b"x\r\n"), b"x");
    }
}
