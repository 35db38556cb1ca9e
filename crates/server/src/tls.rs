//! TLS: the buildset registry's generated certificate and the rustls config.
//!
//! The generated certificate is a small chain: a fresh CA (ECDSA P-256, cheap
//! to make) that signs a server certificate carrying every name clients use.
//! The CA is what the registry hands out (`cert` in the connection info):
//! clients install it as a trusted CA (skopeo's cert dir, docker's certs.d,
//! the system store). A single self-signed certificate that is also a CA
//! would do for Go and OpenSSL clients, but rustls (webpki) refuses a CA
//! certificate as a server certificate, and speculum's own helper uses rustls.
//!
//! Only the ring crypto provider is used.
//!
//! ALPN prefers HTTP/1.1, with HTTP/2 for clients that offer only that. A
//! registry's work is large streams, and over HTTP/2 every stream of a
//! client shares one connection (one task, so one core for its TLS), cut
//! into the client's 16 KiB DATA frames under flow control: a 200 MB blob
//! PUT with curl took three to four times as long over HTTP/2 as over
//! HTTP/1.1, and a GET a quarter more server CPU. Go clients (docker,
//! podman, skopeo) offer both, and over HTTP/1.1 open a connection per
//! concurrent layer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The host alias that zuul-jobs maps the buildset registry's address to.
pub const BUILDSET_ALIAS: &str = "zuul-jobs.buildset-registry";

/// A TLS setup failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Generating the certificate failed.
    #[error("generating the certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The certificate or key file cannot be read or parsed.
    #[error("cannot load TLS files: {0}")]
    Files(String),
}

/// A generated CA and the server certificate it signed.
pub struct GeneratedCert {
    /// The CA certificate in PEM: what clients trust.
    pub ca_pem: String,
    /// The server certificate in PEM.
    pub cert_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for GeneratedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCert")
            .field("ca_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

impl GeneratedCert {
    /// The CA certificate in DER, for clients that build a root store.
    pub fn ca_der(&self) -> Option<&CertificateDer<'static>> {
        self.chain.last()
    }

    /// The server's private key in PEM (PKCS#8), for writing a key file
    /// (tests and examples of the file-based TLS setup).
    pub fn key_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.key_der);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// The server certificate followed by the CA, in PEM: a chain file.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.ca_pem)
    }
}

/// Generate a CA and a server certificate for `hostnames` and `ips`, plus the
/// alias `zuul-jobs.buildset-registry`, `127.0.0.1` and `::1`. The common name
/// is the first host name, or the alias.
pub fn generate_certificate(
    hostnames: &[String],
    ips: &[IpAddr],
) -> Result<GeneratedCert, TlsError> {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "speculum buildset registry CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate_for(alg)?)?;

    let mut names: Vec<String> = vec![BUILDSET_ALIAS.to_string()];
    names.extend(hostnames.iter().cloned());
    let loopback = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    names.extend(ips.iter().chain(loopback.iter()).map(IpAddr::to_string));
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));

    let mut params = CertificateParams::new(names)?;
    let cn = hostnames.first().map_or(BUILDSET_ALIAS, String::as_str);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(alg)?;
    let cert = params.signed_by(&key, &ca)?;

    Ok(GeneratedCert {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        chain: vec![cert.der().clone(), ca.der().clone()],
        key_der: key.serialize_der(),
    })
}

/// A rustls server configuration (ring provider, HTTP/1.1 and HTTP/2) that
/// presents `cert`'s chain.
pub fn server_config(cert: &GeneratedCert) -> Result<Arc<ServerConfig>, TlsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone()));
    build_server_config(cert.chain.clone(), key)
}

/// The one way a server configuration is built: ring provider, safe
/// protocol versions, HTTP/1.1 preferred to HTTP/2 by ALPN (see the module
/// docs).
fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A rustls server configuration (ring provider, HTTP/1.1 and HTTP/2) from
/// PEM files: a certificate chain and a private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config_from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = |path: &std::path::Path, e: rustls::pki_types::pem::Error| {
        TlsError::Files(format!("{}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::Files(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e))?;
    build_server_config(chain, private)
}
