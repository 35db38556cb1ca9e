//! `storage: {driver: s3, ...}`: a bucket of an S3-compatible store.
//!
//! ```yaml
//! storage:
//!   driver: s3
//!   bucket: speculum                  # must exist
//!   endpoint: https://swift.example.org:8080   # absent: AWS itself
//!   region: us-east-1                 # default
//!   prefix: registry                  # default: the bucket's root
//!   path-style: true                  # default; false: bucket in the host name
//!   access-key-id-file: /etc/speculum/s3-access-key      # else $AWS_ACCESS_KEY_ID
//!   secret-access-key-file: /etc/speculum/s3-secret-key  # else $AWS_SECRET_ACCESS_KEY
//!   ca: /etc/speculum/s3-ca.pem       # a private CA to trust
//!   redirect: false                   # true: blob GETs answer 307 to a pre-signed URL
//!   part-size-mib: 8                  # multipart part size, at least 5
//! ```
//!
//! Credentials come from files or the environment, never from the config
//! file itself, which is often in a repository or a world-readable place.

use std::path::Path;

use speculum_storage::S3Config;

use super::{RawStorage, S3Storage};
use crate::config::{ConfigError, Source};
use crate::value::trim_newline;

/// The smallest part Swift and Ceph accept (except the last).
const MIN_PART_MIB: usize = 5;

/// The first S3 key set in `raw`, for a driver that has none.
pub(super) fn first_key(raw: &RawStorage) -> Option<&'static str> {
    [
        ("bucket", raw.bucket.is_some()),
        ("endpoint", raw.endpoint.is_some()),
        ("region", raw.region.is_some()),
        ("prefix", raw.prefix.is_some()),
        ("path-style", raw.path_style.is_some()),
        ("access-key-id-file", raw.access_key_id_file.is_some()),
        (
            "secret-access-key-file",
            raw.secret_access_key_file.is_some(),
        ),
        ("access-key-id", raw.access_key_id.is_some()),
        ("secret-access-key", raw.secret_access_key.is_some()),
        ("ca", raw.ca.is_some()),
        ("redirect", raw.redirect.is_some()),
        ("part-size-mib", raw.part_size_mib.is_some()),
    ]
    .into_iter()
    .find_map(|(key, set)| set.then_some(key))
}

pub(super) fn validate(raw: &RawStorage, at: &Source) -> Result<S3Storage, ConfigError> {
    for (key, set) in [
        ("access-key-id", raw.access_key_id.is_some()),
        ("secret-access-key", raw.secret_access_key.is_some()),
    ] {
        if set {
            return Err(at.err(
                &format!("registry.storage.{key}"),
                format!(
                    "credentials are not read from the config file: use {key}-file, \
                     or leave it out and set ${}",
                    env_name(key)
                ),
            ));
        }
    }
    let config = S3Config {
        bucket: bucket(raw, at)?,
        endpoint: endpoint(raw, at)?,
        region: raw.region.clone().unwrap_or_else(|| "us-east-1".into()),
        prefix: raw.prefix.clone().unwrap_or_default(),
        path_style: raw.path_style.unwrap_or(true),
        access_key_id: credential(raw.access_key_id_file.as_deref(), "access-key-id", at)?,
        secret_access_key: credential(
            raw.secret_access_key_file.as_deref(),
            "secret-access-key",
            at,
        )?,
        ca_pem: ca(raw, at)?,
        part_size: part_size(raw, at)?,
    };
    Ok(S3Storage {
        config,
        redirect: raw.redirect.unwrap_or(false),
    })
}

fn env_name(key: &str) -> &'static str {
    if key == "access-key-id" {
        "AWS_ACCESS_KEY_ID"
    } else {
        "AWS_SECRET_ACCESS_KEY"
    }
}

/// S3's rule for bucket names: 3 to 63 lowercase letters, digits, dots and
/// hyphens, starting and ending with a letter or digit.
fn bucket(raw: &RawStorage, at: &Source) -> Result<String, ConfigError> {
    let key = "registry.storage.bucket";
    let name = raw
        .bucket
        .as_deref()
        .ok_or_else(|| at.err(key, "is required for driver s3"))?;
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().next_back());
    if !valid {
        return Err(at.err(
            key,
            format!(
                "{name:?} is not a bucket name (3-63 lowercase letters, digits, dots and hyphens)"
            ),
        ));
    }
    Ok(name.to_owned())
}

fn endpoint(raw: &RawStorage, at: &Source) -> Result<Option<String>, ConfigError> {
    let Some(url) = raw.endpoint.as_deref() else {
        return Ok(None);
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(Some(url.trim_end_matches('/').to_owned())),
        _ => Err(at.err(
            "registry.storage.endpoint",
            format!("{url:?} is not an http:// or https:// URL"),
        )),
    }
}

/// A credential from its file, else from the environment.
fn credential(file: Option<&Path>, key: &str, at: &Source) -> Result<String, ConfigError> {
    let file_key = format!("registry.storage.{key}-file");
    let value = match file {
        Some(path) => {
            let path = at.resolve(path);
            let bytes = std::fs::read(&path)
                .map_err(|e| at.err(&file_key, format!("{}: {e}", path.display())))?;
            String::from_utf8(trim_newline(&bytes).to_vec())
                .map_err(|_| at.err(&file_key, format!("{}: not UTF-8", path.display())))?
        }
        None => (at.env)(env_name(key)).ok_or_else(|| {
            at.err(
                &file_key,
                format!("is required for driver s3 unless ${} is set", env_name(key)),
            )
        })?,
    };
    if value.trim().is_empty() {
        return Err(at.err(&file_key, "the credential is empty"));
    }
    Ok(value)
}

fn ca(raw: &RawStorage, at: &Source) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(path) = raw.ca.as_deref() else {
        return Ok(None);
    };
    let path = at.resolve(path);
    let pem = std::fs::read(&path)
        .map_err(|e| at.err("registry.storage.ca", format!("{}: {e}", path.display())))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(at.err(
            "registry.storage.ca",
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(Some(pem))
}

fn part_size(raw: &RawStorage, at: &Source) -> Result<usize, ConfigError> {
    match raw.part_size_mib {
        None => Ok(S3Config::DEFAULT_PART_SIZE),
        Some(n) if (MIN_PART_MIB..=5 * 1024).contains(&n) => Ok(n << 20),
        Some(n) => Err(at.err(
            "registry.storage.part-size-mib",
            format!("{n} is outside 5..=5120 (stores refuse parts under 5 MiB)"),
        )),
    }
}
