//! The buildset profile: an ephemeral registry for one Zuul buildset.
//!
//! Embedded defaults only: temporary storage, a generated certificate, a
//! random password for one push user, anonymous pull. Once it accepts
//! connections it describes itself as a [`RegistryInfo`], exactly the
//! `buildset_registry` dict that zuul-jobs passes around.
//!
//! It alone takes speculative-image registrations (`PUT
//! /speculum/v1/speculative`, the push user only): the lazy pull of the
//! images of the changes ahead (see the `speculative` module).

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use speculum_storage::Registry;
use tokio::net::TcpListener;

use crate::auth::AuthPolicy;
use crate::limits::ConnectionLimits;
use crate::serve::Server;
use crate::tls::{TlsError, generate_certificate, server_config};
use crate::{AppState, Speculative, router};

/// How to run a buildset registry.
#[derive(Debug, Clone)]
pub struct BuildsetOptions {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Host names to put in the certificate (the first is the info's host).
    pub hostnames: Vec<String>,
    /// IP addresses to put in the certificate.
    pub ips: Vec<IpAddr>,
    /// Keep storage here; otherwise a temporary directory removed on shutdown.
    pub root: Option<PathBuf>,
    /// The push user.
    pub username: String,
    /// The push user's password; generated when `None`.
    pub password: Option<String>,
    /// Serve plain HTTP instead of TLS.
    pub insecure_http: bool,
    /// Connection timeouts and the bound on connections.
    pub connections: ConnectionLimits,
    /// Remove upload sessions started this long ago (default: one hour,
    /// [`BUILDSET_UPLOAD_MAX_AGE`]).
    pub upload_max_age: Duration,
}

/// How long a buildset registry keeps an upload session: an hour. `serve`
/// keeps one for a day (its `gc.uploads`), for slow pushes from far away;
/// a buildset registry lives for one buildset, next to its clients, so an
/// upload that has not finished within an hour was abandoned, and left
/// alone for a day it would outlive the registry (1.1 GB once piled up in
/// one run).
pub const BUILDSET_UPLOAD_MAX_AGE: Duration = Duration::from_secs(3600);

impl Default for BuildsetOptions {
    fn default() -> Self {
        BuildsetOptions {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)),
            hostnames: Vec::new(),
            ips: Vec::new(),
            root: None,
            username: "zuul".to_string(),
            password: None,
            insecure_http: false,
            connections: ConnectionLimits::default(),
            upload_max_age: BUILDSET_UPLOAD_MAX_AGE,
        }
    }
}

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

/// Why a buildset registry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Preparing storage failed.
    #[error("cannot prepare storage: {0}")]
    Storage(String),
    /// Generating the certificate or TLS config failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Reading the password or the OS RNG failed.
    #[error("cannot make the password: {0}")]
    Password(String),
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(String),
}

/// A running buildset registry.
#[derive(Debug)]
pub struct BuildsetServer {
    server: Server,
    info: RegistryInfo,
    root: PathBuf,
    temp: Option<tempfile::TempDir>,
    expiry: tokio::task::JoinHandle<()>,
}

impl BuildsetServer {
    /// Prepare storage, generate the certificate and password, bind, and
    /// start serving. When this returns, the registry accepts connections.
    pub async fn start(options: BuildsetOptions) -> Result<BuildsetServer, StartError> {
        let password = match options.password {
            Some(p) => p,
            None => generate_password()?,
        };
        let (root, temp) = match &options.root {
            Some(root) => {
                std::fs::create_dir_all(root)
                    .map_err(|e| StartError::Storage(format!("{}: {e}", root.display())))?;
                (root.clone(), None)
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("speculum-buildset-")
                    .tempdir()
                    .map_err(|e| StartError::Storage(e.to_string()))?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        // A buildset registry's storage does not outlive its buildset, nor
        // the node a power loss would end the buildset with: no flushes.
        let registry = Registry::filesystem_with(&root, speculum_storage::Durability::PageCache)
            .await
            .map_err(|e| StartError::Storage(e.to_string()))?;
        crate::intermediate::remove_stale_scratch(&registry).await;
        let expiry = tokio::spawn(expire_uploads(registry.clone(), options.upload_max_age));

        let (tls, cert) = if options.insecure_http {
            (None, String::new())
        } else {
            let generated = generate_certificate(&options.hostnames, &options.ips)?;
            (Some(server_config(&generated)?), generated.ca_pem)
        };

        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: options.listen,
                    source,
                })?;
        // Tokens are signed with a random secret made now: they die with
        // the registry.
        let auth = AuthPolicy::buildset(options.username.clone(), password.as_bytes())
            .with_tls(!options.insecure_http);
        let state = AppState::new(registry, auth).with_speculative(Speculative::new());
        let app = router(state);
        let server =
            Server::start_with(listener, app, tls, options.connections).map_err(|source| {
                StartError::Bind {
                    addr: options.listen,
                    source,
                }
            })?;
        let addr = server.local_addr();

        let host = options
            .hostnames
            .first()
            .cloned()
            .or_else(|| options.ips.first().map(IpAddr::to_string))
            .unwrap_or_else(|| {
                if addr.ip().is_unspecified() {
                    Ipv4Addr::LOCALHOST.to_string()
                } else {
                    addr.ip().to_string()
                }
            });
        let info = RegistryInfo {
            host,
            port: addr.port(),
            username: options.username,
            password,
            cert,
        };
        tracing::info!(
            %addr,
            tls = !options.insecure_http,
            root = %root.display(),
            temporary = temp.is_some(),
            max_connections = options.connections.max_connections(),
            "buildset registry ready"
        );
        Ok(BuildsetServer {
            server,
            info,
            root,
            temp,
            expiry,
        })
    }

    /// The connection info.
    pub fn info(&self) -> &RegistryInfo {
        &self.info
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where storage lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stop serving, then remove temporary storage.
    pub async fn shutdown(self) {
        self.expiry.abort();
        self.server.shutdown().await;
        if let Some(temp) = self.temp {
            let path = temp.path().to_path_buf();
            if let Err(e) = temp.close() {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove temporary storage");
            }
        }
        tracing::info!("buildset registry stopped");
    }
}

/// Remove abandoned upload sessions, as `serve`'s collection does, for as
/// long as the registry runs: checked every quarter of `max_age` (at least
/// a second, at most ten minutes), so a session goes at most that late.
async fn expire_uploads(registry: Registry, max_age: Duration) {
    let period = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(period).await;
        match registry.expire_uploads(max_age).await {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => tracing::info!(count = ids.len(), "abandoned uploads removed"),
            Err(e) => tracing::error!(error = %e, "cannot remove abandoned uploads"),
        }
    }
}

/// 32 alphanumeric characters from the OS RNG.
fn generate_password() -> Result<String, StartError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = rustls::crypto::ring::default_provider().secure_random;
    let mut out = String::with_capacity(32);
    let mut buf = [0u8; 64];
    while out.len() < 32 {
        rng.fill(&mut buf)
            .map_err(|e| StartError::Password(format!("{e:?}")))?;
        // Rejection sampling keeps every character equally likely.
        for &b in &buf {
            if usize::from(b) < ALPHABET.len() * 4 && out.len() < 32 {
                out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
