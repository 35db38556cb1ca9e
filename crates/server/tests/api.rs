//! In-process tests of every endpoint and error path, run against both
//! storage backends (memory, and the filesystem on a temporary directory).

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use speculum_oci::{Algorithm, Digest, media_type};
use speculum_server::{AppState, AuthPolicy, router};
use speculum_storage::Registry;
use tower::ServiceExt as _;

const USER: &str = "zuul";
const PASSWORD: &str = "s3cret:pw";

struct Fixture {
    app: Router,
    /// For the filesystem backend: the directory that holds `root/`, so a test
    /// can check nothing was written outside it.
    dir: Option<tempfile::TempDir>,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// The spec error code of an error body.
    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    #[track_caller]
    fn expect(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }
    #[track_caller]
    fn expect_error(&self, status: u16, code: &str) {
        self.expect(status);
        assert_eq!(self.code(), code);
        assert!(self.header("docker-distribution-api-version").is_some());
    }
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

impl Fixture {
    fn new(registry: Registry, dir: Option<tempfile::TempDir>) -> Fixture {
        let app = router(AppState::new(
            registry,
            AuthPolicy::buildset(USER, PASSWORD),
        ));
        Fixture { app, dir }
    }

    async fn memory() -> Fixture {
        Fixture::new(Registry::memory(), None)
    }

    async fn fs() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::filesystem(&dir.path().join("root"))
            .await
            .unwrap();
        Fixture::new(registry, Some(dir))
    }

    /// Send a request without credentials.
    async fn anon(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = self
            .app
            .clone()
            .oneshot(builder.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            headers
                .get("docker-distribution-api-version")
                .map(|v| v.to_str().unwrap()),
            Some("registry/2.0"),
            "{method} {uri}"
        );
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Send a request as the push user.
    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let auth = basic(USER, PASSWORD);
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.anon(method, uri, &all, body).await
    }

    async fn get(&self, uri: &str) -> Resp {
        self.anon("GET", uri, &[], Body::empty()).await
    }

    /// Push a blob monolithically; returns its digest.
    async fn blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::sha256(data);
        self.send(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[],
            data.to_vec(),
        )
        .await
        .expect(201);
        digest
    }

    async fn manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Resp {
        self.send(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            body.to_vec(),
        )
        .await
    }

    /// Push a small OCI image (config + one layer); returns the manifest bytes.
    async fn image(&self, repo: &str, tag: &str, seed: &str) -> Vec<u8> {
        let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
        let layer = format!("layer of {seed}");
        let c = self.blob(repo, config.as_bytes()).await;
        let l = self.blob(repo, layer.as_bytes()).await;
        let m = oci_manifest(&c, config.len(), &[(&l, layer.len())]);
        self.manifest(repo, tag, media_type::OCI_MANIFEST, &m)
            .await
            .expect(201);
        m
    }

    /// Files under the fixture's directory other than `root` (none expected).
    fn stray_files(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "root")
            .collect()
    }
}

fn oci_manifest(config: &Digest, config_size: usize, layers: &[(&Digest, usize)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": media_type::OCI_CONFIG, "digest": config, "size": config_size},
        "layers": layers.iter().map(|(d, s)| json!({
            "mediaType": media_type::OCI_LAYER_GZIP, "digest": d, "size": s
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn docker_manifest(config: &Digest, config_size: usize, layers: &[(&Digest, usize)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST_V2,
        "config": {"mediaType": media_type::DOCKER_CONFIG, "digest": config, "size": config_size},
        "layers": layers.iter().map(|(d, s)| json!({
            "mediaType": media_type::DOCKER_LAYER_GZIP, "digest": d, "size": s
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn index(media: &str, children: &[(&Digest, usize, &str)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media,
        "manifests": children.iter().map(|(d, s, t)| json!({
            "mediaType": t, "digest": d, "size": s,
            "platform": {"architecture": "amd64", "os": "linux"}
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

// ---------------------------------------------------------------- base

async fn base(f: Fixture) {
    // Anonymous: 401 with a Bearer challenge, even though anonymous pulls
    // are allowed (Docker reads challenges only from this probe).
    let r = f
        .anon(
            "GET",
            "/v2/",
            &[("host", "reg.example:5000")],
            Body::empty(),
        )
        .await;
    r.expect_error(401, "UNAUTHORIZED");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"http://reg.example:5000/auth/token\",service=\"speculum\"")
    );
    f.get("/v2").await.expect(401);
    f.send("GET", "/v2", &[], Body::empty()).await.expect(200);
    let r = f.send("GET", "/v2/", &[], Body::empty()).await;
    r.expect(200);
    assert!(r.header("www-authenticate").is_none());
    let r = f
        .anon(
            "GET",
            "/v2/",
            &[("authorization", &basic(USER, "wrong"))],
            Body::empty(),
        )
        .await;
    r.expect_error(401, "UNAUTHORIZED");
    assert!(r.header("www-authenticate").is_some());
    f.get("/v3/").await.expect(404);
    f.get("/v2/a/unknown/x").await.expect(404);
}

// ---------------------------------------------------------------- blobs and uploads

async fn monolithic_upload(f: Fixture) {
    let data = b"hello monolithic".to_vec();
    let digest = Digest::sha256(&data);
    let r = f
        .send(
            "POST",
            &format!("/v2/a/b/blobs/uploads/?digest={digest}"),
            &[],
            data.clone(),
        )
        .await;
    r.expect(201);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/a/b/blobs/{digest}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );

    let r = f
        .anon(
            "HEAD",
            &format!("/v2/a/b/blobs/{digest}"),
            &[],
            Body::empty(),
        )
        .await;
    r.expect(200);
    assert_eq!(
        r.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert!(r.body.is_empty());
    let r = f.get(&format!("/v2/a/b/blobs/{digest}")).await;
    r.expect(200);
    assert_eq!(r.body, data);
    assert_eq!(
        r.header("content-length"),
        Some(data.len().to_string().as_str())
    );

    // Monolithic with the wrong digest stores nothing.
    let wrong = Digest::sha256(b"something else");
    f.send(
        "POST",
        &format!("/v2/a/b/blobs/uploads/?digest={wrong}"),
        &[],
        data.clone(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");
    f.anon(
        "HEAD",
        &format!("/v2/a/b/blobs/{wrong}"),
        &[],
        Body::empty(),
    )
    .await
    .expect(404);
}

async fn chunked_upload(f: Fixture) {
    let r = f
        .send("POST", "/v2/a/b/blobs/uploads/", &[], Body::empty())
        .await;
    r.expect(202);
    let location = r.header("location").unwrap().to_string();
    assert!(location.starts_with("/v2/a/b/blobs/uploads/"), "{location}");
    assert_eq!(r.header("range"), Some("0-0"));
    let id = r.header("docker-upload-uuid").unwrap().to_string();
    assert!(location.ends_with(&id));

    let r = f
        .send(
            "PATCH",
            &location,
            &[("content-range", "0-4"), ("content-length", "5")],
            b"01234".to_vec(),
        )
        .await;
    r.expect(202);
    assert_eq!(r.header("range"), Some("0-4"));
    let location = r.header("location").unwrap().to_string();

    // Out of order: starts past the end, or overlaps.
    for range in ["10-14", "2-6"] {
        let r = f
            .send(
                "PATCH",
                &location,
                &[("content-range", range)],
                b"xxxxx".to_vec(),
            )
            .await;
        r.expect_error(416, "RANGE_INVALID");
    }
    // Malformed Content-Range.
    let r = f
        .send(
            "PATCH",
            &location,
            &[("content-range", "five-ten")],
            b"xxxxx".to_vec(),
        )
        .await;
    assert!(r.status.is_client_error());

    let r = f
        .send(
            "PATCH",
            &location,
            &[("content-range", "5-9")],
            b"56789".to_vec(),
        )
        .await;
    r.expect(202);
    assert_eq!(r.header("range"), Some("0-9"));

    let r = f.send("GET", &location, &[], Body::empty()).await;
    r.expect(204);
    assert_eq!(r.header("range"), Some("0-9"));
    assert_eq!(r.header("docker-upload-uuid"), Some(id.as_str()));

    let digest = Digest::sha256(b"0123456789");
    let r = f
        .send(
            "PUT",
            &format!("{location}?digest={digest}"),
            &[],
            Body::empty(),
        )
        .await;
    r.expect(201);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/a/b/blobs/{digest}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert_eq!(
        f.get(&format!("/v2/a/b/blobs/{digest}"))
            .await
            .expect(200)
            .body,
        "0123456789"
    );
    // The session is gone.
    f.send("GET", &location, &[], Body::empty())
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

async fn streamed_upload(f: Fixture) {
    let r = f
        .send("POST", "/v2/s/blobs/uploads/", &[], Body::empty())
        .await;
    let location = r.expect(202).header("location").unwrap().to_string();
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..50)
        .map(|i| Ok(Bytes::from(vec![i as u8; 1000])))
        .collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let r = f.send("PATCH", &location, &[], body).await;
    r.expect(202);
    assert_eq!(r.header("range"), Some("0-49999"));
    let location = r.header("location").unwrap().to_string();
    // The final PUT carries the last part of the blob.
    let mut all: Vec<u8> = (0..50u8).flat_map(|i| vec![i; 1000]).collect();
    all.extend_from_slice(b"tail");
    let digest = Digest::sha256(&all);
    f.send(
        "PUT",
        &format!("{location}?digest={digest}"),
        &[],
        b"tail".to_vec(),
    )
    .await
    .expect(201);
    let r = f.get(&format!("/v2/s/blobs/{digest}")).await;
    assert_eq!(r.expect(200).body, all);
}

async fn upload_errors(f: Fixture) {
    // Unknown ids, valid-looking or not.
    for id in ["0f6e3e8c-1b7e-4f0e-9c1e-3b8f1c2d4e5f", "nope", "a.b"] {
        let uri = format!("/v2/a/blobs/uploads/{id}");
        f.send("GET", &uri, &[], Body::empty())
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        f.send("PATCH", &uri, &[], b"x".to_vec())
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        let d = Digest::sha256(b"x");
        f.send("PUT", &format!("{uri}?digest={d}"), &[], b"x".to_vec())
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        f.send("DELETE", &uri, &[], Body::empty())
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    }
    let r = f
        .send("POST", "/v2/a/blobs/uploads/", &[], Body::empty())
        .await;
    let location = r.expect(202).header("location").unwrap().to_string();
    f.send("PATCH", &location, &[], b"abc".to_vec())
        .await
        .expect(202);
    // Finishing needs a valid digest, and it must match.
    f.send("PUT", &location, &[], Body::empty())
        .await
        .expect_error(400, "DIGEST_INVALID");
    f.send(
        "PUT",
        &format!("{location}?digest=sha256:abc"),
        &[],
        Body::empty(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");
    let wrong = Digest::sha256(b"not abc");
    f.send(
        "PUT",
        &format!("{location}?digest={wrong}"),
        &[],
        Body::empty(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");
    f.anon("HEAD", &format!("/v2/a/blobs/{wrong}"), &[], Body::empty())
        .await
        .expect(404);

    // Cancel.
    let r = f
        .send("POST", "/v2/a/blobs/uploads/", &[], Body::empty())
        .await;
    let location = r.expect(202).header("location").unwrap().to_string();
    f.send("DELETE", &location, &[], Body::empty())
        .await
        .expect(204);
    f.send("GET", &location, &[], Body::empty())
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");

    // Wrong methods.
    f.send("PUT", "/v2/a/blobs/uploads/", &[], Body::empty())
        .await
        .expect_error(405, "UNSUPPORTED");
    f.send("POST", "/v2/a/manifests/x", &[], Body::empty())
        .await
        .expect_error(405, "UNSUPPORTED");
}

async fn sha512_blobs(f: Fixture) {
    let data = b"sha512 content".to_vec();
    let digest = Digest::of(Algorithm::Sha512, &data);
    f.send(
        "POST",
        &format!("/v2/x/blobs/uploads/?digest={digest}"),
        &[],
        data.clone(),
    )
    .await
    .expect(201);
    assert_eq!(
        f.get(&format!("/v2/x/blobs/{digest}"))
            .await
            .expect(200)
            .body,
        data
    );
    // Chunked too.
    let r = f
        .send("POST", "/v2/y/blobs/uploads/", &[], Body::empty())
        .await;
    let location = r.expect(202).header("location").unwrap().to_string();
    f.send("PATCH", &location, &[], data.clone())
        .await
        .expect(202);
    f.send(
        "PUT",
        &format!("{location}?digest={digest}"),
        &[],
        Body::empty(),
    )
    .await
    .expect(201);
    f.anon("HEAD", &format!("/v2/y/blobs/{digest}"), &[], Body::empty())
        .await
        .expect(200);
}

async fn blob_errors_and_delete(f: Fixture) {
    let d = f.blob("a", b"to delete").await;
    for bad in [
        "sha256:abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:ZZ",
        "nodigest",
    ] {
        f.get(&format!("/v2/a/blobs/{bad}"))
            .await
            .expect_error(400, "DIGEST_INVALID");
    }
    let missing = Digest::sha256(b"missing");
    f.get(&format!("/v2/a/blobs/{missing}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    // Deleting needs credentials.
    f.anon("DELETE", &format!("/v2/a/blobs/{d}"), &[], Body::empty())
        .await
        .expect_error(401, "UNAUTHORIZED");
    f.send("DELETE", &format!("/v2/a/blobs/{d}"), &[], Body::empty())
        .await
        .expect(202);
    f.get(&format!("/v2/a/blobs/{d}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
}

async fn blob_ranges(f: Fixture) {
    let d = f.blob("r", b"0123456789").await;
    let uri = format!("/v2/r/blobs/{d}");
    let r = f
        .anon("GET", &uri, &[("range", "bytes=2-5")], Body::empty())
        .await;
    r.expect(206);
    assert_eq!(r.body, "2345");
    assert_eq!(r.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(r.header("content-length"), Some("4"));
    let r = f
        .anon("GET", &uri, &[("range", "bytes=7-")], Body::empty())
        .await;
    assert_eq!(r.expect(206).body, "789");
    let r = f
        .anon("GET", &uri, &[("range", "bytes=-2")], Body::empty())
        .await;
    assert_eq!(r.expect(206).body, "89");
    let r = f
        .anon("GET", &uri, &[("range", "bytes=10-20")], Body::empty())
        .await;
    r.expect(416);
    assert_eq!(r.header("content-range"), Some("bytes */10"));
}

async fn mount(f: Fixture) {
    let d = f.blob("src/repo", b"mount me").await;
    let r = f
        .send(
            "POST",
            &format!("/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo"),
            &[],
            Body::empty(),
        )
        .await;
    r.expect(201);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/dst/repo/blobs/{d}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(
        f.get(&format!("/v2/dst/repo/blobs/{d}"))
            .await
            .expect(200)
            .body,
        "mount me"
    );
    // Not mountable: a session instead.
    let missing = Digest::sha256(b"nowhere");
    let r = f
        .send(
            "POST",
            &format!("/v2/dst/repo/blobs/uploads/?mount={missing}&from=src/repo"),
            &[],
            Body::empty(),
        )
        .await;
    r.expect(202);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/v2/dst/repo/blobs/uploads/")
    );
    let r = f
        .send(
            "POST",
            &format!("/v2/dst/repo/blobs/uploads/?mount={d}&from=..%2Fetc"),
            &[],
            Body::empty(),
        )
        .await;
    r.expect(202);
    f.send(
        "POST",
        "/v2/dst/repo/blobs/uploads/?mount=sha256:short&from=src/repo",
        &[],
        Body::empty(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");
}

// ---------------------------------------------------------------- manifests

async fn manifest_types(f: Fixture) {
    let cfg = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";
    let c = f.blob("m", cfg).await;
    let l = f.blob("m", b"layer").await;

    let docker = docker_manifest(&c, cfg.len(), &[(&l, 5)]);
    let oci = oci_manifest(&c, cfg.len(), &[(&l, 5)]);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("docker", media_type::DOCKER_MANIFEST_V2, docker.clone()),
        ("oci", media_type::OCI_MANIFEST, oci.clone()),
        (
            "dlist",
            media_type::DOCKER_MANIFEST_LIST,
            index(
                media_type::DOCKER_MANIFEST_LIST,
                &[(
                    &Digest::sha256(&docker),
                    docker.len(),
                    media_type::DOCKER_MANIFEST_V2,
                )],
            ),
        ),
        (
            "ociindex",
            media_type::OCI_INDEX,
            index(
                media_type::OCI_INDEX,
                &[(&Digest::sha256(&oci), oci.len(), media_type::OCI_MANIFEST)],
            ),
        ),
    ];
    for (tag, media, body) in &cases {
        let digest = Digest::sha256(body);
        let r = f.manifest("m", tag, media, body).await;
        r.expect(201);
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        assert_eq!(
            r.header("location"),
            Some(format!("/v2/m/manifests/{digest}").as_str())
        );
        assert!(r.header("oci-subject").is_none());
        for reference in [tag.to_string(), digest.to_string()] {
            let r = f.get(&format!("/v2/m/manifests/{reference}")).await;
            r.expect(200);
            assert_eq!(&r.body[..], &body[..], "{tag}");
            assert_eq!(r.header("content-type"), Some(*media));
            assert_eq!(
                r.header("docker-content-digest"),
                Some(digest.to_string().as_str())
            );
            let r = f
                .anon(
                    "HEAD",
                    &format!("/v2/m/manifests/{reference}"),
                    &[],
                    Body::empty(),
                )
                .await;
            r.expect(200);
            assert!(r.body.is_empty());
            assert_eq!(
                r.header("content-length"),
                Some(body.len().to_string().as_str())
            );
            assert_eq!(r.header("content-type"), Some(*media));
        }
    }
    // Push by digest.
    let digest = Digest::sha256(&oci);
    f.manifest("m2", &digest.to_string(), media_type::OCI_MANIFEST, &oci)
        .await;
    f.blob("m2", cfg).await;
    f.blob("m2", b"layer").await;
    f.manifest("m2", &digest.to_string(), media_type::OCI_MANIFEST, &oci)
        .await
        .expect(201);
    f.get(&format!("/v2/m2/manifests/{digest}"))
        .await
        .expect(200);
    // Pushing by a digest the bytes do not have.
    let other = Digest::sha256(b"other");
    f.manifest("m2", &other.to_string(), media_type::OCI_MANIFEST, &oci)
        .await
        .expect_error(400, "DIGEST_INVALID");
    f.get("/v2/m/manifests/nope")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

async fn manifest_errors(f: Fixture) {
    let cfg = b"{}";
    let c = f.blob("bad", cfg).await;
    let good = oci_manifest(&c, 2, &[]);
    f.manifest("bad", "malformed", media_type::OCI_MANIFEST, b"{not json")
        .await
        .expect_error(400, "MANIFEST_INVALID");
    f.manifest("bad", "weird", "application/x-unknown", &good)
        .await
        .expect_error(400, "MANIFEST_INVALID");
    f.manifest("bad", "sha256:1234", media_type::OCI_MANIFEST, &good)
        .await
        .expect_error(400, "DIGEST_INVALID");
    f.manifest("bad", "-badtag", media_type::OCI_MANIFEST, &good)
        .await
        .expect(400);
    // Missing blob.
    let missing = Digest::sha256(b"missing layer");
    let m = oci_manifest(&c, 2, &[(&missing, 13)]);
    f.manifest("bad", "missing", media_type::OCI_MANIFEST, &m)
        .await
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    // Larger than the limit, with and without a declared length.
    let mut big = b"{\"schemaVersion\":2,\"pad\":\"".to_vec();
    big.resize(5 * 1024 * 1024, b'a');
    big.extend_from_slice(b"\"}");
    let r = f
        .manifest("bad", "big", media_type::OCI_MANIFEST, &big)
        .await;
    assert!(r.status.is_client_error(), "{}", r.status);
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(65536)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let r = f
        .send(
            "PUT",
            "/v2/bad/manifests/big2",
            &[("content-type", media_type::OCI_MANIFEST)],
            Body::from_stream(futures_util::stream::iter(chunks)),
        )
        .await;
    r.expect_error(413, "SIZE_INVALID");
    for tag in ["malformed", "weird", "missing", "big", "big2"] {
        f.get(&format!("/v2/bad/manifests/{tag}")).await.expect(404);
    }
    let r = f.get("/v2/bad/tags/list").await;
    if r.status == StatusCode::OK {
        assert_eq!(r.json()["tags"], json!([]));
    } else {
        r.expect_error(404, "NAME_UNKNOWN");
    }
}

/// Issue 9: a reference that is not a valid tag (nor a digest) names no
/// manifest on GET/HEAD (404, as the conformance tests expect), but is a
/// client error on PUT and DELETE (400 TAG_INVALID).
async fn invalid_tag_references(f: Fixture) {
    let m = f.image("inv", "v1", "inv").await;
    let long = "a".repeat(129);
    for bad in [".INVALID_MANIFEST_NAME", "-x", long.as_str(), "a%2Fb"] {
        let uri = format!("/v2/inv/manifests/{bad}");
        f.get(&uri).await.expect_error(404, "MANIFEST_UNKNOWN");
        let r = f.anon("HEAD", &uri, &[], Body::empty()).await;
        r.expect(404);
        assert!(r.body.is_empty());
        f.manifest("inv", bad, media_type::OCI_MANIFEST, &m)
            .await
            .expect_error(400, "TAG_INVALID");
        f.send("DELETE", &uri, &[], Body::empty())
            .await
            .expect_error(400, "TAG_INVALID");
    }
    // A malformed digest stays DIGEST_INVALID.
    f.get("/v2/inv/manifests/sha256:1234")
        .await
        .expect_error(400, "DIGEST_INVALID");
    assert_eq!(
        f.get("/v2/inv/tags/list").await.expect(200).json()["tags"],
        json!(["v1"])
    );
}

/// Issue 9: `PUT .../manifests/<digest>?tag=a&tag=b` stores the manifest,
/// points each tag at it and answers `OCI-Tag: a, b`; one invalid tag
/// refuses the whole push.
async fn push_by_digest_with_tags(f: Fixture) {
    let m = f.image("pt", "seed", "pt").await;
    let digest = Digest::sha256(&m);
    let other = {
        let cfg = b"{\"os\":\"other\"}";
        let c = f.blob("pt", cfg).await;
        oci_manifest(&c, cfg.len(), &[])
    };
    let od = Digest::sha256(&other);
    // One invalid tag among valid ones: nothing stored, no tag moved.
    let r = f
        .manifest(
            "pt",
            &format!("{od}?tag=good&tag=-bad"),
            media_type::OCI_MANIFEST,
            &other,
        )
        .await;
    r.expect_error(400, "TAG_INVALID");
    f.get(&format!("/v2/pt/manifests/{od}"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    f.get("/v2/pt/manifests/good")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    // Valid tags (one repeated): stored, tagged, listed once each.
    let r = f
        .manifest(
            "pt",
            &format!("{digest}?tag=a&tag=b&tag=a"),
            media_type::OCI_MANIFEST,
            &m,
        )
        .await;
    r.expect(201);
    assert_eq!(r.header("oci-tag"), Some("a, b"));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    for tag in ["a", "b"] {
        let r = f.get(&format!("/v2/pt/manifests/{tag}")).await;
        r.expect(200);
        assert_eq!(r.body, m);
    }
    assert_eq!(
        f.get("/v2/pt/tags/list").await.expect(200).json()["tags"],
        json!(["a", "b", "seed"])
    );
    // Tags move: `a` now names the other manifest.
    let r = f
        .manifest(
            "pt",
            &format!("{od}?tag=a"),
            media_type::OCI_MANIFEST,
            &other,
        )
        .await;
    r.expect(201);
    assert_eq!(r.header("oci-tag"), Some("a"));
    assert_eq!(f.get("/v2/pt/manifests/a").await.expect(200).body, other);
    // Without `tag` parameters, no header.
    let r = f
        .manifest("pt", &od.to_string(), media_type::OCI_MANIFEST, &other)
        .await;
    r.expect(201);
    assert!(r.header("oci-tag").is_none());
}

async fn tag_repush_other_format(f: Fixture) {
    let cfg = b"{\"os\":\"linux\"}";
    let c = f.blob("t", cfg).await;
    let docker = docker_manifest(&c, cfg.len(), &[]);
    let oci = oci_manifest(&c, cfg.len(), &[]);
    f.manifest("t", "v1", media_type::DOCKER_MANIFEST_V2, &docker)
        .await
        .expect(201);
    f.manifest("t", "v1", media_type::OCI_MANIFEST, &oci)
        .await
        .expect(201);
    let r = f.get("/v2/t/manifests/v1").await;
    r.expect(200);
    assert_eq!(r.body, oci);
    assert_eq!(r.header("content-type"), Some(media_type::OCI_MANIFEST));
}

async fn delete_manifests(f: Fixture) {
    let m = f.image("d", "a", "x").await;
    f.manifest("d", "b", media_type::OCI_MANIFEST, &m)
        .await
        .expect(201);
    f.anon("DELETE", "/v2/d/manifests/a", &[], Body::empty())
        .await
        .expect_error(401, "UNAUTHORIZED");
    f.send("DELETE", "/v2/d/manifests/a", &[], Body::empty())
        .await
        .expect(202);
    f.get("/v2/d/manifests/a")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    assert_eq!(f.get("/v2/d/manifests/b").await.expect(200).body, m);
    assert_eq!(
        f.get("/v2/d/tags/list").await.expect(200).json()["tags"],
        json!(["b"])
    );
    let digest = Digest::sha256(&m);
    f.send(
        "DELETE",
        &format!("/v2/d/manifests/{digest}"),
        &[],
        Body::empty(),
    )
    .await
    .expect(202);
    f.get(&format!("/v2/d/manifests/{digest}"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    f.send("DELETE", "/v2/d/manifests/never", &[], Body::empty())
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

async fn referrers(f: Fixture) {
    let subject = f.image("art", "v1", "subject").await;
    let sd = Digest::sha256(&subject);
    let empty = f.blob("art", b"{}").await;
    let artifact = |kind: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": kind,
            "config": {"mediaType": media_type::OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": media_type::OCI_EMPTY, "digest": empty, "size": 2}],
            "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": sd, "size": subject.len()},
            "annotations": {"org.example": kind},
        }))
        .unwrap()
    };
    let sig = artifact("application/vnd.example.sig");
    let sbom = artifact("application/vnd.example.sbom");
    for body in [&sig, &sbom] {
        let d = Digest::sha256(body);
        let r = f
            .manifest("art", &d.to_string(), media_type::OCI_MANIFEST, body)
            .await;
        r.expect(201);
        assert_eq!(r.header("oci-subject"), Some(sd.to_string().as_str()));
    }
    let r = f.get(&format!("/v2/art/referrers/{sd}")).await;
    r.expect(200);
    assert_eq!(r.header("content-type"), Some(media_type::OCI_INDEX));
    assert!(r.header("oci-filters-applied").is_none());
    let index = r.json();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], media_type::OCI_INDEX);
    let list = index["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let mut types: Vec<&str> = list
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/vnd.example.sbom",
            "application/vnd.example.sig"
        ]
    );

    let r = f
        .get(&format!(
            "/v2/art/referrers/{sd}?artifactType=application/vnd.example.sig"
        ))
        .await;
    r.expect(200);
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let list = r.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], Digest::sha256(&sig).to_string());
    assert_eq!(
        list[0]["annotations"]["org.example"],
        "application/vnd.example.sig"
    );

    let nothing = Digest::sha256(b"no referrers");
    for uri in [
        format!("/v2/art/referrers/{nothing}"),
        format!("/v2/unknown/repo/referrers/{sd}"),
    ] {
        let r = f.get(&uri).await;
        r.expect(200);
        assert_eq!(r.json()["manifests"], json!([]));
    }
    f.get("/v2/art/referrers/sha256:short")
        .await
        .expect_error(400, "DIGEST_INVALID");
}

// ---------------------------------------------------------------- listing

async fn pagination(f: Fixture) {
    let m = f.image("p/q", "t0", "p").await;
    for i in 1..5 {
        f.manifest("p/q", &format!("t{i}"), media_type::OCI_MANIFEST, &m)
            .await
            .expect(201);
    }
    let all = f.get("/v2/p/q/tags/list").await;
    assert_eq!(
        all.expect(200).json(),
        json!({"name": "p/q", "tags": ["t0", "t1", "t2", "t3", "t4"]})
    );

    let mut uri = "/v2/p/q/tags/list?n=2".to_string();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = f.get(&uri).await;
        r.expect(200);
        for t in r.json()["tags"].as_array().unwrap() {
            seen.push(t.as_str().unwrap().to_string());
        }
        match r.header("link") {
            Some(link) => {
                assert!(link.ends_with(">; rel=\"next\""), "{link}");
                uri = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string();
                assert!(uri.starts_with("/v2/p/q/tags/list?last="), "{uri}");
                assert!(uri.contains("n=2"), "{uri}");
            }
            None => break,
        }
    }
    assert_eq!(seen, ["t0", "t1", "t2", "t3", "t4"]);
    let r = f.get("/v2/p/q/tags/list?n=2&last=t3").await;
    assert_eq!(r.expect(200).json()["tags"], json!(["t4"]));
    assert!(r.header("link").is_none());
    f.get("/v2/p/q/tags/list?n=abc")
        .await
        .expect_error(400, "PAGINATION_NUMBER_INVALID");
    f.get("/v2/never/pushed/tags/list")
        .await
        .expect_error(404, "NAME_UNKNOWN");

    for repo in ["c1", "c2", "c3/x"] {
        f.image(repo, "v", repo).await;
    }
    let r = f.get("/v2/_catalog").await;
    assert_eq!(
        r.expect(200).json()["repositories"],
        json!(["c1", "c2", "c3/x", "p/q"])
    );
    let r = f.get("/v2/_catalog?n=2").await;
    assert_eq!(r.expect(200).json()["repositories"], json!(["c1", "c2"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/_catalog?last=c2&n=2>; rel=\"next\"")
    );
    let r = f.get("/v2/_catalog?n=2&last=c2").await;
    assert_eq!(r.expect(200).json()["repositories"], json!(["c3/x", "p/q"]));
}

// ---------------------------------------------------------------- names, namespaces, auth

async fn traversal(f: Fixture) {
    let cfg = b"{}";
    let d = Digest::sha256(cfg);
    let body = oci_manifest(&d, 2, &[]);
    for name in [
        "%2e%2e/x",
        "../x",
        "a//b",
        "a/../../b",
        "%2E%2E/%2e%2e/trav",
        "a/%2f/b",
        "./a",
        "A/b",
        "a%00b",
    ] {
        let r = f
            .manifest(name, "pwn", media_type::OCI_MANIFEST, &body)
            .await;
        r.expect_error(400, "NAME_INVALID");
        let r = f
            .send(
                "POST",
                &format!("/v2/{name}/blobs/uploads/?digest={d}"),
                &[],
                cfg.to_vec(),
            )
            .await;
        r.expect_error(400, "NAME_INVALID");
        f.get(&format!("/v2/{name}/tags/list"))
            .await
            .expect_error(400, "NAME_INVALID");
        f.get(&format!("/v2/{name}/blobs/{d}"))
            .await
            .expect_error(400, "NAME_INVALID");
    }
    let r = f.get("/v2/_catalog").await;
    assert_eq!(r.expect(200).json()["repositories"], json!([]));
    assert_eq!(f.stray_files(), Vec::<String>::new());
    // A namespace cannot smuggle a path either.
    f.get("/v2/x/tags/list?ns=..%2Fetc")
        .await
        .expect_error(400, "NAME_INVALID");
}

async fn namespaces(f: Fixture) {
    // containerd: the upstream host comes as ?ns=.
    let r = f
        .send(
            "POST",
            "/v2/org/app/blobs/uploads/?ns=quay.io",
            &[],
            Body::empty(),
        )
        .await;
    let location = r.expect(202).header("location").unwrap().to_string();
    assert!(
        location.starts_with("/v2/org/app/blobs/uploads/"),
        "{location}"
    );
    assert!(location.ends_with("?ns=quay.io"), "{location}");
    let cfg = b"{\"ns\":\"quay\"}";
    let r = f.send("PATCH", &location, &[], cfg.to_vec()).await;
    let location = r.expect(202).header("location").unwrap().to_string();
    assert!(location.ends_with("?ns=quay.io"), "{location}");
    let c = Digest::sha256(cfg);
    let r = f
        .send("PUT", &format!("{location}&digest={c}"), &[], Body::empty())
        .await;
    r.expect(201);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/org/app/blobs/{c}?ns=quay.io").as_str())
    );
    let m = oci_manifest(&c, cfg.len(), &[]);
    f.manifest("org/app", "v1?ns=quay.io", media_type::OCI_MANIFEST, &m)
        .await
        .expect(201);

    assert_eq!(
        f.get("/v2/_catalog").await.json()["repositories"],
        json!(["quay.io/org/app"])
    );
    assert_eq!(
        f.get("/v2/quay.io/org/app/manifests/v1")
            .await
            .expect(200)
            .body,
        m
    );
    assert_eq!(
        f.get("/v2/org/app/manifests/v1?ns=quay.io")
            .await
            .expect(200)
            .body,
        m
    );
    assert_eq!(
        f.get("/v2/quay.io/org/app/manifests/v1?ns=quay.io")
            .await
            .expect(200)
            .body,
        m
    );
    f.get("/v2/org/app/manifests/v1")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    f.anon(
        "HEAD",
        &format!("/v2/org/app/blobs/{c}?ns=quay.io"),
        &[],
        Body::empty(),
    )
    .await
    .expect(200);
    let tags = f.get("/v2/org/app/tags/list?ns=quay.io").await;
    assert_eq!(tags.expect(200).json()["tags"], json!(["v1"]));

    // docker.io is stored un-prefixed; `docker.io/x` is `x`.
    let m2 = f.image("docker.io/library/py", "3", "py").await;
    assert_eq!(
        f.get("/v2/library/py/manifests/3").await.expect(200).body,
        m2
    );
    assert_eq!(
        f.get("/v2/library/py/manifests/3?ns=docker.io")
            .await
            .expect(200)
            .body,
        m2
    );
    assert_eq!(
        f.get("/v2/docker.io/library/py/manifests/3")
            .await
            .expect(200)
            .body,
        m2
    );
    let repos = f.get("/v2/_catalog").await.json()["repositories"].clone();
    assert_eq!(repos, json!(["library/py", "quay.io/org/app"]));
}

async fn auth(f: Fixture) {
    let m = f.image("auth/img", "v1", "auth").await;
    // Anonymous pull, and pull with wrong (Docker Hub) credentials.
    assert_eq!(f.get("/v2/auth/img/manifests/v1").await.expect(200).body, m);
    let wrong = basic("hubuser", "hubpassword");
    let r = f
        .anon(
            "GET",
            "/v2/auth/img/manifests/v1",
            &[("authorization", &wrong)],
            Body::empty(),
        )
        .await;
    r.expect(200);
    f.anon(
        "GET",
        "/v2/auth/img/tags/list",
        &[("authorization", "Bearer xyz")],
        Body::empty(),
    )
    .await
    .expect(200);
    // Push without, or with wrong, credentials.
    let d = Digest::sha256(b"z");
    let wrong_pw = basic(USER, "wrong");
    let bad_scheme = "Basic !!!notbase64";
    for headers in [
        vec![],
        vec![("authorization", wrong_pw.as_str())],
        vec![("authorization", bad_scheme)],
    ] {
        let r = f
            .anon("PUT", "/v2/auth/img/manifests/v2", &headers, m.clone())
            .await;
        r.expect_error(401, "UNAUTHORIZED");
        assert_eq!(
            r.header("www-authenticate"),
            Some(
                "Bearer realm=\"http://localhost/auth/token\",service=\"speculum\",\
                 scope=\"repository:auth/img:pull,push\""
            )
        );
        let r = f
            .anon(
                "POST",
                &format!("/v2/auth/img/blobs/uploads/?digest={d}"),
                &headers,
                b"z".to_vec(),
            )
            .await;
        r.expect_error(401, "UNAUTHORIZED");
        let r = f
            .anon(
                "POST",
                "/v2/auth/img/blobs/uploads/",
                &headers,
                Body::empty(),
            )
            .await;
        r.expect_error(401, "UNAUTHORIZED");
    }
    f.get("/v2/auth/img/manifests/v2").await.expect(404);
    f.anon(
        "HEAD",
        &format!("/v2/auth/img/blobs/{d}"),
        &[],
        Body::empty(),
    )
    .await
    .expect(404);
}

macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::memory().await).await;
                }
            )*
        }
        mod fs {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::fs().await).await;
                }
            )*
        }
    };
}

backend_tests!(
    base,
    monolithic_upload,
    chunked_upload,
    streamed_upload,
    upload_errors,
    sha512_blobs,
    blob_errors_and_delete,
    blob_ranges,
    mount,
    manifest_types,
    manifest_errors,
    tag_repush_other_format,
    invalid_tag_references,
    push_by_digest_with_tags,
    delete_manifests,
    referrers,
    pagination,
    traversal,
    namespaces,
    auth,
);

/// Issue 9: a user may hold only so many upload sessions open; past the
/// bound, starting one is `429 TOOMANYREQUESTS` with a message that says
/// why, and a cancelled or finished session frees its slot. A monolithic
/// push (its session lives only for the request) is not refused.
#[tokio::test]
async fn upload_sessions_per_user_are_bounded() {
    let app = router(
        AppState::new(Registry::memory(), AuthPolicy::buildset(USER, PASSWORD))
            .with_uploads_per_user(2),
    );
    let f = Fixture { app, dir: None };
    let start = || f.send("POST", "/v2/app/blobs/uploads/", &[], Body::empty());
    let first = start().await;
    first.expect(202);
    start().await.expect(202);
    let refused = start().await;
    refused.expect_error(429, "TOOMANYREQUESTS");
    let message = refused.json()["errors"][0]["message"].to_string();
    assert!(message.contains("too many upload sessions"), "{message}");
    f.blob("app", b"monolithic").await;

    let location = first.header("location").unwrap().to_string();
    f.send("DELETE", &location, &[], Body::empty())
        .await
        .expect(204);
    let third = start().await;
    third.expect(202);
    start().await.expect_error(429, "TOOMANYREQUESTS");
    let location = third.header("location").unwrap().to_string();
    let digest = Digest::sha256(b"done");
    f.send(
        "PUT",
        &format!("{location}?digest={digest}"),
        &[],
        b"done".to_vec(),
    )
    .await
    .expect(201);
    start().await.expect(202);
}
