//! The buildset profile over real loopback sockets: TLS with the generated
//! certificate, the info file, auth, and shutdown.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use speculum_server::{BuildsetOptions, RegistryInfo, RegistryServer, Settings, write_info_file};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A buildset registry run with `options`, started as `speculum-registry
/// buildset` starts it.
async fn start(options: BuildsetOptions) -> RegistryServer {
    let settings = Settings::buildset(options).unwrap();
    RegistryServer::start(&settings).await.unwrap()
}

/// One HTTP/1.1 request with `Connection: close`; returns the raw response.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request_head: &str) -> String {
    stream.write_all(request_head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn tls_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    tls_client_offering(ca_pem, &[b"http/1.1"])
}

/// A client trusting `ca_pem` that offers `alpn`, in its order of preference.
fn tls_client_offering(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_request(addr: SocketAddr, info: &RegistryInfo, name: &str, head: &str) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let stream = tls_client(&info.cert)
        .connect(server_name, tcp)
        .await
        .unwrap();
    http(stream, head).await
}

/// The protocol the server picks for a client offering `alpn`.
async fn negotiated(addr: SocketAddr, ca_pem: &str, alpn: &[&[u8]]) -> Option<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tls_client_offering(ca_pem, alpn)
        .connect(name, tcp)
        .await
        .unwrap();
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// A client offering both protocols (as Go's and curl's do, HTTP/2 first)
/// gets HTTP/1.1, which streams blobs faster (see the server's `tls`
/// module); a client offering only HTTP/2 still gets it, and is served.
#[tokio::test]
async fn alpn_prefers_http1_and_still_speaks_h2() {
    let server = start(BuildsetOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..BuildsetOptions::default()
    })
    .await;
    let info = server.info().unwrap().clone();
    let addr = server.local_addr();
    assert_eq!(
        negotiated(addr, &info.cert, &[b"h2", b"http/1.1"])
            .await
            .as_deref(),
        Some(&b"http/1.1"[..])
    );
    assert_eq!(
        negotiated(addr, &info.cert, &[b"h2"]).await.as_deref(),
        Some(&b"h2"[..])
    );

    // The HTTP/2-only client is served: the connection preface, then the
    // server's SETTINGS frame (type 4 in the fifth byte of a frame header).
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = tls_client_offering(&info.cert, &[b"h2"])
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 4, "a SETTINGS frame: {header:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn buildset_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let options = BuildsetOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        hostnames: vec!["registry.example".to_string()],
        ips: vec!["192.0.2.7".parse().unwrap()],
        ..BuildsetOptions::default()
    };
    let server = start(options).await;
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let root = server.root().unwrap().to_path_buf();
    assert!(root.exists());

    let info = server.info().unwrap().clone();
    assert_eq!(info.host, "registry.example");
    assert_eq!(info.port, addr.port());
    assert_eq!(info.username, "zuul");
    assert_eq!(info.password.len(), 32);
    assert!(info.cert.starts_with("-----BEGIN CERTIFICATE-----"));

    // The info file: 0600, the exact dict.
    let path = dir.path().join("info.json");
    write_info_file(&path, &info).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["cert", "host", "password", "port", "username"]);
    assert_eq!(json["port"], addr.port());
    assert_eq!(json["cert"], info.cert);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left behind"
    );

    // /v2/ over TLS, trusting only the generated CA, under every name it covers.
    for name in [
        "127.0.0.1",
        "zuul-jobs.buildset-registry",
        "registry.example",
        "192.0.2.7",
    ] {
        let head = "GET /v2/ HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n";
        let response = tls_request(addr, &info, name, head).await;
        assert!(response.starts_with("HTTP/1.1 401"), "{name}: {response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer realm=\"https://r/auth/token\""),
            "{response}"
        );
        assert!(
            response
                .to_ascii_lowercase()
                .contains("docker-distribution-api-version: registry/2.0")
        );
    }

    // Push needs the password; a wrong one is refused.
    let put = |auth: Option<String>| {
        let auth = auth
            .map(|a| format!("Authorization: Basic {a}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: r\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let response = tls_request(addr, &info, "127.0.0.1", &put(None)).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"https://r/auth/token\",service=\"speculum\",scope=\"repository:x:pull,push\"")
    );
    let wrong = put(Some(b64(format!("zuul:{}x", info.password))));
    let response = tls_request(addr, &info, "127.0.0.1", &wrong).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    let right = put(Some(b64(format!("zuul:{}", info.password))));
    let response = tls_request(addr, &info, "127.0.0.1", &right).await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");

    // HEAD keeps Content-Length and sends no body.
    let head = "HEAD /v2/ HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n";
    let response = tls_request(addr, &info, "127.0.0.1", head).await;
    assert!(response.ends_with("\r\n\r\n"), "{response:?}");

    server.shutdown().await;
    assert!(!root.exists(), "temporary storage removed on shutdown");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn buildset_plain_http_ipv6_and_fixed_password() {
    let root = tempfile::tempdir().unwrap();
    let listen: SocketAddr = "[::1]:0".parse().unwrap();
    if std::net::TcpListener::bind(listen).is_err() {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    let options = BuildsetOptions {
        listen,
        root: Some(root.path().join("store")),
        username: "pusher".to_string(),
        password: Some("fixed".to_string()),
        insecure_http: true,
        ..BuildsetOptions::default()
    };
    let server = start(options).await;
    let info = server.info().unwrap().clone();
    assert_eq!(info.host, "::1");
    assert_eq!(info.username, "pusher");
    assert_eq!(info.password, "fixed");
    assert!(info.cert.is_empty());
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let response = http(
        tcp,
        "GET /v2/_catalog HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("{\"repositories\":[]}"), "{response}");
    server.shutdown().await;
    assert!(root.path().join("store").exists(), "--root storage is kept");
}

/// Issue 9: a buildset registry removes an upload its client abandoned
/// once it is older than `upload_max_age` (`--upload-expiry`, one hour by
/// default, two seconds here), as `serve`'s collection does: its data goes
/// and the session is unknown. A finished push stays.
#[tokio::test]
async fn buildset_expires_abandoned_uploads() {
    let root = tempfile::tempdir().unwrap();
    let options = BuildsetOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        root: Some(root.path().to_path_buf()),
        password: Some("pw".to_string()),
        insecure_http: true,
        upload_max_age: std::time::Duration::from_secs(2),
        ..BuildsetOptions::default()
    };
    let server = start(options).await;
    let auth = base64::engine::general_purpose::STANDARD.encode("zuul:pw");
    let addr = server.local_addr();
    let request = |head: String| async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        http(tcp, &head).await
    };
    let post = format!(
        "POST /v2/app/blobs/uploads/ HTTP/1.1\r\nHost: r\r\nAuthorization: Basic {auth}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let response = request(post).await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let location = response
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .to_string();
    let uploads = root.path().join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1);

    let start = std::time::Instant::now();
    while std::fs::read_dir(&uploads).unwrap().count() > 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the abandoned upload was not removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(start.elapsed() >= std::time::Duration::from_secs(1));
    let patch = format!(
        "PATCH {location} HTTP/1.1\r\nHost: r\r\nAuthorization: Basic {auth}\r\n\
         Content-Length: 4\r\nConnection: close\r\n\r\nmore"
    );
    let response = request(patch).await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains("BLOB_UPLOAD_UNKNOWN"), "{response}");
    server.shutdown().await;
}
