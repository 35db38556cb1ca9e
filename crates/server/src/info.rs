//! The connection info a registry announces once it listens: the
//! `buildset_registry` dict that zuul-jobs passes around (`host, port,
//! username, password, cert`).

use std::fmt;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Serialize;

use crate::config::InfoSettings;

/// How to reach a running buildset registry: the `buildset_registry` dict.
#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct RegistryInfo {
    /// Host name or IP address clients connect to.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The push user.
    pub username: String,
    /// The push user's password.
    pub password: String,
    /// The CA certificate to trust, in PEM (empty over plain HTTP).
    pub cert: String,
}

impl fmt::Debug for RegistryInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl RegistryInfo {
    /// The info of `settings` for a registry bound to `addr` whose clients
    /// trust `cert`.
    pub(crate) fn new(settings: &InfoSettings, addr: SocketAddr, cert: String) -> RegistryInfo {
        let host = settings.host.clone().unwrap_or_else(|| {
            if addr.ip().is_unspecified() {
                Ipv4Addr::LOCALHOST.to_string()
            } else {
                addr.ip().to_string()
            }
        });
        RegistryInfo {
            host,
            port: addr.port(),
            username: settings.username.clone(),
            password: settings.password.clone(),
            cert,
        }
    }
}

/// Write `info` as JSON to `path` with mode 0600, atomically: a temporary
/// file in the same directory, then a rename, so readers never see half of it.
/// (No fsync: the file describes a process that would not survive a crash.)
pub fn write_info_file(path: &Path, info: &RegistryInfo) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".speculum-info-")
        .tempfile_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    serde_json::to_writer(&mut tmp, info)?;
    tmp.write_all(b"\n")?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
