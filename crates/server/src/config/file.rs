//! The file as text: `%(NAME)` environment substitution before parsing,
//! and serde_norway's errors turned into errors that name the key.

use std::path::Path;

use super::ConfigError;

/// A serde_norway error as a [`ConfigError`]: the key path (serde_norway
/// puts it before the first `: `) becomes the key, and the line is kept.
pub(super) fn yaml_error(path: &Path, e: &serde_norway::Error) -> ConfigError {
    let text = e.to_string();
    let location = e
        .location()
        .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
        .unwrap_or_default();
    // serde_norway writes "registry.users[0]: unknown field `x`, ... at line 3 column 5".
    let (key, message) = match text.split_once(": ") {
        Some((key, rest)) if looks_like_key_path(key) => (Some(key.to_string()), rest.to_string()),
        _ => (None, text.clone()),
    };
    let message = match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    ConfigError::new(path, key.as_deref(), format!("{message}{location}"))
}

fn looks_like_key_path(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(' ')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-[]".contains(&b))
}

/// Replace `%(ZUUL_NAME)` and `%(SPECULUM_NAME)` with the environment's
/// values. Other `%(` text is left alone.
pub(super) fn substitute_env(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("%(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = &after[..name_len];
        let closed = after[name_len..].starts_with(')');
        let ours = name.starts_with("ZUUL_") || name.starts_with("SPECULUM_");
        if closed && ours {
            let value = env(name).ok_or_else(|| {
                ConfigError::new(
                    path,
                    None,
                    format!("environment variable {name} is not set (used as %({name}))"),
                )
            })?;
            out.push_str(&value);
            rest = &after[name_len + 1..];
        } else {
            out.push_str("%(");
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
