//! Where and how the registry listens: `address`, `port`, `public-url`,
//! `tls-cert`, `tls-key` and `connections`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::{ConfigError, RawRegistry, Source};
use crate::limits::ConnectionLimits;

/// Where and how the registry listens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenSettings {
    /// The address and port to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The URL clients use (no trailing slash), if configured.
    pub public_url: Option<String>,
    /// Whether and how to serve TLS.
    pub tls: TlsSettings,
    /// Connection timeouts and the bound on connections.
    pub connections: ConnectionLimits,
}

impl ListenSettings {
    /// Plain HTTP on `addr` with the default connection limits.
    pub fn new(addr: SocketAddr) -> ListenSettings {
        ListenSettings {
            addr,
            public_url: None,
            tls: TlsSettings::Off,
            connections: ConnectionLimits::default(),
        }
    }
}

/// Whether and how the registry serves TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsSettings {
    /// Plain HTTP.
    Off,
    /// A certificate and key read from files at start.
    Files(TlsFiles),
    /// A self-signed certificate made at start for these names (the
    /// buildset profile); its CA goes into the connection info.
    Generated {
        /// Host names for the certificate.
        hostnames: Vec<String>,
        /// IP addresses for the certificate.
        ips: Vec<IpAddr>,
    },
}

impl TlsSettings {
    /// Whether TLS is served.
    pub fn is_on(&self) -> bool {
        !matches!(self, TlsSettings::Off)
    }
}

/// TLS files: the certificate chain and the private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Validate the listening keys of `raw`.
pub(super) fn validate(raw: &RawRegistry, at: &Source) -> Result<ListenSettings, ConfigError> {
    let address = raw
        .address
        .as_deref()
        .ok_or_else(|| at.err("registry.address", "is required"))?;
    let ip: IpAddr = address.trim().parse().map_err(|_| {
        at.err(
            "registry.address",
            format!("{address:?} is not an IP address (use '::' or '0.0.0.0' for every address)"),
        )
    })?;
    let port = raw
        .port
        .ok_or_else(|| at.err("registry.port", "is required"))?;
    let public_url = match &raw.public_url {
        None => None,
        Some(url) => Some(validate_public_url(url).map_err(|m| at.err("registry.public-url", m))?),
    };
    // TLS before connections: the order the keys were checked in before
    // the sections were split, so a file with two faults names the same one.
    let tls = tls(raw, at)?;
    let connections = raw
        .connections
        .validate()
        .map_err(|(key, m)| at.err(&format!("registry.connections.{key}"), m))?;
    Ok(ListenSettings {
        addr: SocketAddr::new(ip, port),
        public_url,
        tls,
        connections,
    })
}

/// TLS is on when both files are given; one without the other is an error.
fn tls(raw: &RawRegistry, at: &Source) -> Result<TlsSettings, ConfigError> {
    match (&raw.tls_cert, &raw.tls_key) {
        (None, None) => Ok(TlsSettings::Off),
        (Some(cert), Some(key)) => Ok(TlsSettings::Files(TlsFiles {
            cert: at.resolve(cert),
            key: at.resolve(key),
        })),
        (Some(_), None) => Err(at.err("registry.tls-key", "is required with tls-cert")),
        (None, Some(_)) => Err(at.err("registry.tls-cert", "is required with tls-key")),
    }
}

/// `http(s)://host[:port][/path]`, returned without a trailing slash.
fn validate_public_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with https:// or http://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let ok = !host.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]/~%".contains(&b));
    if ok {
        Ok(url.to_string())
    } else {
        Err(format!("{url:?} is not a valid URL"))
    }
}
