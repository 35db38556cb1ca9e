//! The buildset profile: an ephemeral registry for one Zuul buildset, as
//! [`Settings`] made in code ([`Settings::buildset`]) and started like any
//! other ([`RegistryServer::start`](crate::RegistryServer::start)).
//!
//! Embedded defaults only: temporary storage, a generated certificate, a
//! random password for one push user, anonymous pull. Once it accepts
//! connections it describes itself as a [`RegistryInfo`](crate::RegistryInfo),
//! exactly the `buildset_registry` dict that zuul-jobs passes around.
//!
//! It alone takes speculative-image registrations (`PUT
//! /speculum/v1/speculative`, the push user only): the lazy pull of the
//! images of the changes ahead (see the `speculative` module).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use speculum_storage::Durability;

use crate::auth::{Access, User};
use crate::config::{
    AuthSettings, FilesystemStorage, GcSettings, InfoSettings, ListenSettings, LogFormat,
    MetricsSettings, Profile, Settings, StorageBackend, StorageSettings, TlsSettings,
};
use crate::limits::ConnectionLimits;
use crate::notify::WebhookSettings;
use crate::start::StartError;

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

impl Settings {
    /// The settings of a buildset registry run with `options`; the
    /// password is generated here when `options` has none.
    pub fn buildset(options: BuildsetOptions) -> Result<Settings, StartError> {
        let password = match options.password.clone() {
            Some(p) => p,
            None => generate_password()?,
        };
        let host = options
            .hostnames
            .first()
            .cloned()
            .or_else(|| options.ips.first().map(IpAddr::to_string));
        let users = vec![User::plain(
            options.username.clone(),
            password.as_bytes(),
            Access::Write,
        )];
        Ok(Settings {
            source: None,
            profile: Profile::Buildset,
            listen: buildset_listen(&options),
            // Tokens are signed with a random secret made at start: they
            // die with the registry.
            auth: AuthSettings::new(users, true),
            storage: StorageSettings::new(StorageBackend::Filesystem(FilesystemStorage {
                root: options.root,
                // A buildset registry's storage does not outlive its
                // buildset, nor the node a power loss would end the
                // buildset with: no flushes.
                durability: Durability::PageCache,
            })),
            retention: Vec::new(),
            // No collection: the upload sweep is its only cleanup.
            gc: GcSettings {
                upload_max_age: options.upload_max_age,
                sweep_uploads: true,
                ..GcSettings::default()
            },
            webhooks: WebhookSettings::default(),
            upstreams: Vec::new(),
            metrics: MetricsSettings {
                serve: true,
                storage_figures: false,
            },
            log_format: LogFormat::default(),
            speculative: true,
            info: Some(InfoSettings {
                host,
                username: options.username,
                password,
            }),
        })
    }
}

/// TLS with a certificate generated for the given names, unless plain HTTP
/// was asked for.
fn buildset_listen(options: &BuildsetOptions) -> ListenSettings {
    let mut listen = ListenSettings::new(options.listen);
    listen.connections = options.connections;
    if !options.insecure_http {
        listen.tls = TlsSettings::Generated {
            hostnames: options.hostnames.clone(),
            ips: options.ips.clone(),
        };
    }
    listen
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
