//! Attacks and misuses against the binary (a buildset registry on loopback,
//! plain HTTP): hostile names and references, missing, wrong, forged,
//! tampered, expired and misdirected credentials, oversize requests. Every
//! answer must be a 4xx with a spec error body, and a refused request must
//! leave nothing in storage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use speculum_server::token::{Claims, Grant, TokenKey};
use speculum_testkit::http::{Response, request};
use speculum_testkit::{BuildsetOptions, BuildsetRegistry};

const BIN: &str = env!("CARGO_BIN_EXE_speculum-registry");
/// `zuul:pw`.
const AUTH: &str = "Basic enV1bDpwdw==";
/// `zuul:wrong`.
const WRONG: &str = "Basic enV1bDp3cm9uZw==";

fn start(root: &Path) -> BuildsetRegistry {
    BuildsetRegistry::start(
        BuildsetOptions::new(BIN)
            .insecure_http(true)
            .password("pw")
            .root(root),
    )
}

/// Every file under the storage root but `tmp/` (where a request may stage
/// something for an instant), with its size.
fn stored(root: &Path) -> Vec<(PathBuf, u64)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push((
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    path.metadata().unwrap().len(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.retain(|(p, _)| !p.starts_with("tmp"));
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
