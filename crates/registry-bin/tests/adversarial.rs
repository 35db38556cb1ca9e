//! Attacks and misuses against the binary (a buildset registry on plain
//! HTTP, and `serve` with a writer, a reader and TLS): hostile names and
//! references, missing, wrong, forged, tampered, expired and misdirected
//! credentials, a reader pushing, Basic credentials sent in clear to a TLS
//! port, oversize requests. Every answer must be a 4xx with a spec error
//! body, and a refused request must leave nothing in storage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use speculum_server::token::{Claims, Grant, TokenKey};
use speculum_testkit::http::{Response, request};

mod common;

use common::{ZUUL_PW as AUTH, buildset_on as start, files_under};

/// `zuul:wrong`.
const WRONG: &str = "Basic enV1bDp3cm9uZw==";

/// Every file under the storage root but `tmp/` (where a request may stage
/// something for an instant), with its size.
fn stored(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(PathBuf, u64)> = files_under(root)
        .into_iter()
        .map(|path| {
            let size = path.metadata().unwrap().len();
            (path.strip_prefix(root).unwrap().to_path_buf(), size)
        })
        .filter(|(p, _)| !p.starts_with("tmp"))
        .collect();
    out.sort();
    out
}

/// A client error with a spec body (HEAD answers carry none).
fn assert_spec_error(what: &str, method: &str, r: &Response) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    if method == "HEAD" {
        return;
    }
    let body: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("{what}: not JSON: {:?}", String::from_utf8_lossy(&r.body)));
    let code = body["errors"][0]["code"].as_str().unwrap_or_default();
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
        "{what}: {body}"
    );
}

fn token(port: u16, auth: &str, scope: &str) -> String {
    let r = request(
        port,
        Some(auth),
        "GET",
        &format!("/auth/token?service=speculum&scope={scope}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    body["token"].as_str().unwrap().to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn hostile_names_and_references_are_client_errors_that_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("storage");
    let registry = start(&root);
    let port = registry.info().port;
    let before = stored(&root);
    let long_name = format!("org/{}", "a".repeat(300));
    let long_tag = "t".repeat(200);
    let names = [
        "..",
        "org/..",
        "org/%2e%2e",
        "%2e%2e/etc",
        "%2fetc",
        "/abs",
        "Org/App",
        "org//app",
        "org/app/",
        "org/-app",
        "org/app%00",
        "org/a%0ab",
        "org/a%20b",
        "_blobs",
        "org/_tags",
        &long_name,
    ];
    let references = [
        "..",
        "%2e%2e",
        "-tag",
        ".hidden",
        "a/b",
        &long_tag,
        "t%00",
        "t%0a",
        "sha256:zz",
        "sha256:..%2f",
    ];
    let mut tried = 0;
    for name in names {
        for (method, path, body) in [
            ("GET", format!("/v2/{name}/manifests/latest"), &b""[..]),
            (
                "HEAD",
                format!("/v2/{name}/blobs/sha256:{}", "a".repeat(64)),
                b"",
            ),
            ("POST", format!("/v2/{name}/blobs/uploads/"), b""),
            ("PUT", format!("/v2/{name}/manifests/latest"), b"{}"),
            ("GET", format!("/v2/{name}/tags/list"), b""),
            ("DELETE", format!("/v2/{name}/manifests/latest"), b""),
        ] {
            let r = request(
                port,
                Some(AUTH),
                method,
                &path,
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
                body,
            );
            assert_spec_error(&format!("{method} {path}"), method, &r);
            tried += 1;
        }
    }
    for reference in references {
        for method in ["GET", "HEAD", "PUT", "DELETE"] {
            let path = format!("/v2/org/app/manifests/{reference}");
            let r = request(
                port,
                Some(AUTH),
                method,
                &path,
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
                b"{}",
            );
            assert_spec_error(&format!("{method} {path}"), method, &r);
            tried += 1;
        }
        let path = format!("/v2/org/app/blobs/uploads/{reference}");
        assert_spec_error(
            &format!("PATCH {path}"),
            "PATCH",
            &request(port, Some(AUTH), "PATCH", &path, &[], b"x"),
        );
    }
    // A chunk whose length does not fit in 64 bits (a debug build used to panic on it).
    let session = request(
        port,
        Some(AUTH),
        "POST",
        "/v2/org/app/blobs/uploads/",
        &[],
        b"",
    );
    assert_eq!(session.status, 202);
    let location = session.header("location").unwrap().to_string();
    let r = request(
        port,
        Some(AUTH),
        "PATCH",
        &location,
        &[("Content-Range", "0-18446744073709551615")],
        b"",
    );
    assert_spec_error("an endless Content-Range", "PATCH", &r);
    request(port, Some(AUTH), "DELETE", &location, &[], b"");
    assert!(tried > 100);
    assert_eq!(
        stored(&root),
        before,
        "a refused request left something in storage"
    );
}

#[test]
fn credentials_missing_wrong_forged_tampered_expired_or_for_another_repository_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("storage");
    let registry = start(&root);
    let port = registry.info().port;
    let before = stored(&root);
    let upload = |auth: Option<&str>, repo: &str| {
        request(
            port,
            auth,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            b"",
        )
    };

    // No credentials: 401 with a Bearer challenge naming the scope.
    let r = upload(None, "org/a");
    assert_spec_error("no credentials", "POST", &r);
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=") && challenge.contains("repository:org/a:"),
        "{challenge}"
    );
    // A wrong password, directly and at the token endpoint.
    assert_eq!(upload(Some(WRONG), "org/a").status, 401);
    let r = request(
        port,
        Some(WRONG),
        "GET",
        "/auth/token?service=speculum&scope=repository:org/a:push",
        &[],
        b"",
    );
    assert_spec_error("wrong password for a token", "GET", &r);
    assert_eq!(r.status, 401);

    let good = token(port, AUTH, "repository:org/a:push,pull");
    assert_eq!(
        upload(Some(&bearer(&good)), "org/a").status,
        202,
        "the genuine token works"
    );
    let after_genuine = stored(&root);

    // Another repository than the token's.
    let r = upload(Some(&bearer(&good)), "org/b");
    assert_spec_error("token of another repository", "POST", &r);
    // Tampered: the payload now names org/b, the signature is org/a's.
    let parts: Vec<&str> = good.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
        .unwrap()
        .replace("org/a", "org/b");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload),
        parts[2]
    );
    assert_spec_error(
        "tampered token",
        "POST",
        &upload(Some(&bearer(&tampered)), "org/b"),
    );
    // Unsigned (alg none).
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_spec_error(
        "unsigned token",
        "POST",
        &upload(Some(&bearer(&none)), "org/a"),
    );
    // Forged with another key, and expired (also forged: the registry's key never leaves it,
    // so its refusal is the signature's; the key check comes first either way).
    let forger = TokenKey::new(
        b"not-the-registry-secret",
        "speculum",
        Duration::from_secs(300),
    );
    let grant = Grant {
        kind: "repository".into(),
        name: "org/a".into(),
        actions: vec!["push".into(), "pull".into()],
    };
    let forged = forger.sign(&forger.claims("zuul", vec![grant.clone()], SystemTime::now()));
    assert_spec_error(
        "forged token",
        "POST",
        &upload(Some(&bearer(&forged)), "org/a"),
    );
    let old: Claims = forger.claims(
        "zuul",
        vec![grant],
        SystemTime::now() - Duration::from_secs(86_400),
    );
    assert_spec_error(
        "expired token",
        "POST",
        &upload(Some(&bearer(&forger.sign(&old))), "org/a"),
    );
    // Garbage in the header.
    for header in [
        "Bearer",
        "Bearer a.b",
        "Basic !!!",
        "Basic ",
        "Digest x",
        &format!("Bearer {}", "a".repeat(20_000)),
    ] {
        assert_spec_error(header, "POST", &upload(Some(header), "org/a"));
    }
    // Only the genuine token's session was stored.
    let mut left = stored(&root);
    left.retain(|entry| !after_genuine.contains(entry));
    assert!(left.is_empty(), "refused requests stored {left:?}");
    assert!(before.len() <= after_genuine.len());
}

#[test]
fn oversize_requests_get_spec_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("storage");
    let registry = start(&root);
    let port = registry.info().port;
    let before = stored(&root);
    let long = format!("/v2/org/app/manifests/{}", "a".repeat(16 * 1024));
    assert_spec_error(
        "a 16 KiB URL",
        "GET",
        &request(port, Some(AUTH), "GET", &long, &[], b""),
    );
    let big = vec![b' '; 5 << 20];
    let r = request(
        port,
        Some(AUTH),
        "PUT",
        "/v2/org/app/manifests/big",
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &big,
    );
    assert_spec_error("a 5 MiB manifest", "PUT", &r);
    assert_eq!(r.status, 413);
    assert_eq!(stored(&root), before);
}

/// A `serve` with a writer (alice), a reader (bob) and a known token secret;
/// over TLS when `tls` is set.
fn serve_with_users(dir: &Path, tls: bool) -> common::Serve {
    std::fs::write(
        dir.join("htpasswd"),
        common::htpasswd_line("alice", "alice-pw"),
    )
    .unwrap();
    std::fs::write(
        dir.join("htpasswd-read"),
        common::htpasswd_line("bob", "bob-pw"),
    )
    .unwrap();
    std::fs::write(dir.join("secret"), format!("{}\n", common::SECRET)).unwrap();
    let port = speculum_testkit::free_port();
    let tls_keys = if tls {
        let files = common::make_tls(dir);
        format!(
            "  tls-cert: {}\n  tls-key: {}\n",
            files.cert.display(),
            files.key.display()
        )
    } else {
        String::new()
    };
    let config = dir.join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  secret-file: secret\n  \
             htpasswd: htpasswd\n  htpasswd-read: htpasswd-read\n{tls_keys}  \
             storage: {{driver: filesystem, root: data}}\n"
        ),
    )
    .unwrap();
    common::Serve::start(&config, port, &[])
}

#[test]
fn expired_tokens_and_readers_cannot_push() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with_users(dir.path(), false);
    let port = serve.port;
    let before = stored(&dir.path().join("data"));
    let upload = |auth: &str| {
        request(
            port,
            Some(auth),
            "POST",
            "/v2/org/a/blobs/uploads/",
            &[],
            b"",
        )
    };
    // Signed with the registry's own secret: the same token made now is accepted,
    // so the refusal of the old one is its expiry, not its signature.
    let key = TokenKey::new(
        common::SECRET.as_bytes(),
        "speculum",
        Duration::from_secs(300),
    );
    let grant = Grant {
        kind: "repository".into(),
        name: "org/a".into(),
        actions: vec!["push".into(), "pull".into()],
    };
    let fresh = key.sign(&key.claims("alice", vec![grant.clone()], SystemTime::now()));
    let old = key.sign(&key.claims(
        "alice",
        vec![grant],
        SystemTime::now() - Duration::from_secs(3600),
    ));
    let r = upload(&bearer(&old));
    assert_spec_error("expired token", "POST", &r);
    assert_eq!(r.status, 401);
    let stored_before_fresh = stored(&dir.path().join("data"));
    assert_eq!(
        stored_before_fresh, before,
        "an expired token stored something"
    );
    assert_eq!(
        upload(&bearer(&fresh)).status,
        202,
        "the same token, made now, is accepted"
    );
    // A reader's push: 403 DENIED, with a detail that makes docker give up at once.
    let bob = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bob:bob-pw")
    );
    let r = upload(&bob);
    assert_spec_error("a reader's push", "POST", &r);
    assert_eq!(r.status, 403);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(!body["errors"][0]["detail"].is_null(), "{body}");
    serve.stop();
}

#[test]
fn plain_http_with_basic_credentials_to_a_tls_port_gets_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with_users(dir.path(), true);
    let alice = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:alice-pw")
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    use std::io::{Read as _, Write as _};
    let head = format!(
        "POST /v2/org/a/blobs/uploads/ HTTP/1.0\r\nAuthorization: {alice}\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    // No HTTP answer: the TLS handshake failed (at most a TLS alert came back), and
    // nothing was stored.
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(files_under(&dir.path().join("data").join("uploads")).is_empty());
    let log = serve.log();
    assert!(!log.contains("alice-pw"), "{log}");
    serve.stop();
}
