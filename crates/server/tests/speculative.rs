//! Speculative images (issue 10), in process: the intermediate registry
//! (IR) is a speculum registry with a password user and Bearer tokens,
//! served over plain HTTP on loopback (counting the requests it gets); the
//! buildset registry (BR) is called through its router. The token comes
//! from the IR's own token service, through the client library.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use speculum_oci::speculative::{
    EncodedManifest, ImageRegistration, Registration, SourceAccess, SourceImage,
};
use speculum_oci::{Digest, RepositoryName, media_type};
use speculum_server::{Access, AppState, AuthPolicy, Server, Speculative, User, router};
use speculum_storage::{Registry, body_from_bytes};
use tower::ServiceExt as _;

const BR_AUTH: &str = "Basic enV1bDpwdw=="; // zuul:pw

struct Ir {
    registry: Registry,
    root: tempfile::TempDir,
    _server: Server,
    addr: String,
    log: Arc<Mutex<Vec<(Method, String)>>>,
}

impl Ir {
    async fn start() -> Ir {
        let root = tempfile::tempdir().unwrap();
        let registry = Registry::filesystem(root.path()).await.unwrap();
        let auth = AuthPolicy::with_users(vec![User::plain("ir", "ir-pw", Access::Write)], false)
            .with_token_key(b"a-secret-for-tokens", "speculum", Duration::from_secs(600));
        let log: Arc<Mutex<Vec<(Method, String)>>> = Arc::default();
        let seen = log.clone();
        let inner =
            router(AppState::new(registry.clone(), auth)).map_request(move |req: Request<Body>| {
                seen.lock()
                    .unwrap()
                    .push((req.method().clone(), req.uri().path().to_string()));
                req
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(listener, Router::new().fallback_service(inner), None).unwrap();
        Ir {
            addr: server.local_addr().to_string(),
            registry,
            root,
            _server: server,
            log,
        }
    }

    fn blob_gets(&self, digest: &Digest) -> usize {
        let path = format!("/blobs/{digest}");
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(m, p)| *m == Method::GET && p.ends_with(&path))
            .count()
    }

    async fn blob(&self, repo: &str, data: &[u8]) -> (Digest, u64) {
        let digest = Digest::sha256(data);
        self.registry
            .put_blob(&name(repo), &digest, body_from_bytes(data.to_vec()))
            .await
            .unwrap();
        (digest, data.len() as u64)
    }

    /// An image of one config and one layer of `seed`-derived bytes.
    async fn image(&self, repo: &str, seed: u8) -> Image {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#);
        let (config, cs) = self.blob(repo, config.as_bytes()).await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i as u8) ^ seed).collect();
        let (layer, ls) = self.blob(repo, &data).await;
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": ls}],
        }))
        .unwrap();
        Image {
            digest: Digest::sha256(&bytes),
            bytes,
            config,
            layer,
            data,
        }
    }

    /// A pull token for `repos`, from the IR's token service.
    async fn token(&self, repos: &[&str]) -> String {
        let client = speculum_client::Registry::new(
            &self.addr,
            speculum_client::RegistryOptions {
                credentials: Some(speculum_client::Credentials::new("ir", "ir-pw")),
                insecure: true,
                certs_dirs: Some(Vec::new()),
                ..Default::default()
            },
        )
        .unwrap();
        let repos: Vec<RepositoryName> = repos.iter().map(|r| name(r)).collect();
        match client.pull_grant(&repos).await.unwrap() {
            speculum_client::PullGrant::Token { token, .. } => token.as_str().to_string(),
            other => panic!("no token: {other:?}"),
        }
    }

    fn source(&self, token: &str) -> SourceAccess {
        SourceAccess {
            registry: self.addr.clone(),
            token: Some(token.to_string()),
            ca: None,
            insecure: true,
        }
    }

    fn registration(&self, dest: &str, tag: &str, repo: &str, image: &Image) -> ImageRegistration {
        ImageRegistration {
            repository: dest.into(),
            tag: tag.into(),
            source: SourceImage {
                registry: self.addr.clone(),
                repository: repo.into(),
                reference: "b_latest".into(),
            },
            manifest: EncodedManifest::new(media_type::OCI_MANIFEST, &image.digest, &image.bytes),
            children: vec![],
        }
    }
}

struct Image {
    digest: Digest,
    bytes: Vec<u8>,
    config: Digest,
    layer: Digest,
    data: Vec<u8>,
}

fn name(s: &str) -> RepositoryName {
    s.parse().unwrap()
}

/// A buildset registry: user zuul, password pw, anonymous pull.
fn buildset(registry: &Registry) -> Router {
    router(
        AppState::new(registry.clone(), AuthPolicy::buildset("zuul", "pw"))
            .with_speculative(Speculative::new()),
    )
}

struct Resp {
    status: StatusCode,
    body: Result<Bytes, String>,
    digest: Option<String>,
}

impl Resp {
    fn json(&self) -> Value {
        self.body
            .as_ref()
            .ok()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null)
    }
}

async fn call(app: &Router, method: Method, path: &str, auth: Option<&str>, body: Vec<u8>) -> Resp {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Resp {
        status: parts.status,
        digest: parts
            .headers
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_string()),
        body: body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string()),
    }
}

async fn get(app: &Router, path: &str) -> Resp {
    call(app, Method::GET, path, None, Vec::new()).await
}

async fn register(app: &Router, registration: &Registration) -> Resp {
    let body = serde_json::to_vec(registration).unwrap();
    call(
        app,
        Method::PUT,
        "/speculum/v1/speculative",
        Some(BR_AUTH),
        body,
    )
    .await
}

#[tokio::test]
async fn a_registered_image_is_served_and_its_blobs_fetched_once() {
    let ir = Ir::start().await;
    let image = ir.image("org/app", 1).await;
    let token = ir.token(&["org/app"]).await;
    let local = Registry::memory();
    let br = buildset(&local);
    let r = register(
        &br,
        &Registration {
            sources: vec![ir.source(&token)],
            images: vec![ir.registration("org/app", "latest", "org/app", &image)],
        },
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["registered"][0]["held"], true);
    assert_eq!(
        r.json()["registered"][0]["digest"],
        image.digest.to_string()
    );

    let m = get(&br, "/v2/org/app/manifests/latest").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.body.unwrap(), image.bytes);
    let m = get(
        &br,
        &format!("/v2/docker.io/org/app/manifests/{}", image.digest),
    )
    .await;
    assert_eq!(m.status, 200);
    // An unregistered tag is not looked up in the IR.
    assert_eq!(get(&br, "/v2/org/app/manifests/other").await.status, 404);
    assert_eq!(ir.blob_gets(&image.layer), 0);

    // Five clients at once: one download, every one gets the whole blob.
    let path = format!("/v2/org/app/blobs/{}", image.layer);
    let all = futures_util::future::join_all((0..5).map(|_| get(&br, &path))).await;
    for r in all {
        assert_eq!(r.status, 200);
        assert_eq!(r.digest.as_deref(), Some(image.layer.to_string().as_str()));
        assert_eq!(r.body.unwrap(), image.data);
    }
    assert_eq!(ir.blob_gets(&image.layer), 1);
    // HEAD and a range are answered too (from storage now).
    let head = call(&br, Method::HEAD, &path, None, Vec::new()).await;
    assert_eq!(head.status, 200);
    // The config by HEAD: downloaded, then answered; the manifest is complete.
    let config = format!("/v2/org/app/blobs/{}", image.config);
    assert_eq!(
        call(&br, Method::HEAD, &config, None, Vec::new())
            .await
            .status,
        200
    );
    assert_eq!(ir.blob_gets(&image.config), 1);
    let stored = local
        .get_manifest(&name("org/app"), &"latest".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.digest, image.digest);
    // A blob nobody registered is no business of the IR's.
    let other = Digest::sha256(b"other");
    assert_eq!(
        get(&br, &format!("/v2/org/app/blobs/{other}")).await.status,
        404
    );
    assert_eq!(ir.blob_gets(&other), 0);
}

#[tokio::test]
async fn content_that_does_not_match_is_never_served_whole() {
    let ir = Ir::start().await;
    let image = ir.image("org/app", 2).await;
    // Damage the IR's copy of the layer (same length, other bytes).
    let hex = image.layer.hex();
    let file = ir
        .root
        .path()
        .join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    let mut bad = std::fs::read(&file).unwrap();
    bad[1000] ^= 0xff;
    std::fs::write(&file, bad).unwrap();
    let token = ir.token(&["org/app"]).await;
    let local = Registry::memory();
    let br = buildset(&local);
    let reg = Registration {
        sources: vec![ir.source(&token)],
        images: vec![ir.registration("org/app", "latest", "org/app", &image)],
    };
    assert_eq!(register(&br, &reg).await.status, 200);
    let path = format!("/v2/org/app/blobs/{}", image.layer);
    let r = get(&br, &path).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_err(), "a damaged blob was served whole");
    // Nothing stored; HEAD (download, then answer) says why.
    assert!(
        local
            .stat_blob(&name("org/app"), &image.layer)
            .await
            .is_err()
    );
    let r = call(&br, Method::HEAD, &path, None, Vec::new()).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_push_or_delete_replaces_a_registration_and_so_does_a_later_one() {
    let ir = Ir::start().await;
    let first = ir.image("org/app", 3).await;
    let second = ir.image("org/app", 4).await;
    let token = ir.token(&["org/app"]).await;
    let local = Registry::memory();
    let br = buildset(&local);
    let reg = |image: &Image| Registration {
        sources: vec![ir.source(&token)],
        images: vec![ir.registration("org/app", "latest", "org/app", image)],
    };
    assert_eq!(register(&br, &reg(&first)).await.status, 200);
    let r = register(&br, &reg(&second)).await;
    assert_eq!(
        r.json()["registered"][0]["replaced"],
        first.digest.to_string()
    );
    let m = get(&br, "/v2/org/app/manifests/latest").await;
    assert_eq!(
        m.digest.as_deref(),
        Some(second.digest.to_string().as_str())
    );

    // A build job pushes its own org/app:latest: the push wins, also once
    // the registered image's blobs are all fetched.
    let pushed = ir.image("elsewhere/x", 5).await;
    let config = br_blob_from(&ir, &pushed.config).await;
    local
        .put_blob(&name("org/app"), &pushed.config, body_from_bytes(config))
        .await
        .unwrap();
    local
        .put_blob(
            &name("org/app"),
            &pushed.layer,
            body_from_bytes(pushed.data.clone()),
        )
        .await
        .unwrap();
    let put = Request::builder()
        .method(Method::PUT)
        .uri("/v2/org/app/manifests/latest")
        .header("authorization", BR_AUTH)
        .header("content-type", media_type::OCI_MANIFEST)
        .body(Body::from(pushed.bytes.clone()))
        .unwrap();
    assert_eq!(br.clone().oneshot(put).await.unwrap().status(), 201);
    let m = get(&br, "/v2/org/app/manifests/latest").await;
    assert_eq!(
        m.digest.as_deref(),
        Some(pushed.digest.to_string().as_str())
    );
    for blob in [&second.config, &second.layer] {
        assert_eq!(
            get(&br, &format!("/v2/org/app/blobs/{blob}")).await.status,
            200
        );
    }
    let m = get(&br, "/v2/org/app/manifests/latest").await;
    assert_eq!(
        m.digest.as_deref(),
        Some(pushed.digest.to_string().as_str())
    );

    // Deleting a registered tag not stored yet forgets it.
    let r = register(
        &br,
        &Registration {
            sources: vec![ir.source(&token)],
            images: vec![ir.registration("org/app", "gone", "org/app", &first)],
        },
    )
    .await;
    assert_eq!(r.json()["registered"][0]["held"], true);
    let r = call(
        &br,
        Method::DELETE,
        "/v2/org/app/manifests/gone",
        Some(BR_AUTH),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(get(&br, "/v2/org/app/manifests/gone").await.status, 404);
}

async fn br_blob_from(ir: &Ir, digest: &Digest) -> Vec<u8> {
    use futures_util::StreamExt as _;
    let mut body = ir
        .registry
        .read_blob(&name("elsewhere/x"), digest, None)
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = body.reader.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// A change that spoils a good registration.
type Change = Box<dyn Fn(&mut Value)>;

#[tokio::test]
async fn strangers_and_bad_bodies_are_refused() {
    let local = Registry::memory();
    let br = buildset(&local);
    let put = |auth: Option<&'static str>, body: Vec<u8>| {
        let br = br.clone();
        async move { call(&br, Method::PUT, "/speculum/v1/speculative", auth, body).await }
    };
    let empty = br#"{"sources":[],"images":[]}"#.to_vec();
    assert_eq!(put(None, empty.clone()).await.status, 401);
    assert_eq!(
        put(Some("Basic enV1bDp3cm9uZw=="), empty.clone())
            .await
            .status,
        401
    );
    assert_eq!(
        put(Some("Bearer nonsense"), empty.clone()).await.status,
        401
    );
    let r = call(
        &br,
        Method::GET,
        "/speculum/v1/speculative",
        Some(BR_AUTH),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 405);

    // A reader may pull, not register.
    let reader = router(
        AppState::new(
            local.clone(),
            AuthPolicy::with_users(vec![User::plain("r", "rp", Access::Read)], false),
        )
        .with_speculative(Speculative::new()),
    );
    let r = call(
        &reader,
        Method::PUT,
        "/speculum/v1/speculative",
        Some("Basic cjpycA=="),
        empty.clone(),
    )
    .await;
    assert_eq!(r.status, 403);

    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let good = || {
        json!({
            "sources": [{"registry": "127.0.0.1:1", "token": "t", "insecure": true}],
            "images": [{
                "repository": "org/app", "tag": "latest",
                "source": {"registry": "127.0.0.1:1", "repository": "org/app", "reference": "b_latest"},
                "manifest": serde_json::to_value(EncodedManifest::new(
                    media_type::OCI_MANIFEST, &Digest::sha256(manifest), manifest)).unwrap(),
            }],
        })
    };
    let cases: Vec<(Change, &str, &str)> = vec![
        (
            Box::new(|v| v["images"][0]["tag"] = json!("-x")),
            "TAG_INVALID",
            "images[0].tag",
        ),
        (
            Box::new(|v| v["images"][0]["repository"] = json!("A/b")),
            "NAME_INVALID",
            "images[0].repository",
        ),
        (
            Box::new(|v| v["images"][0]["manifest"]["digest"] = json!(Digest::sha256(b"x"))),
            "DIGEST_INVALID",
            "images[0].manifest.digest",
        ),
        (
            Box::new(|v| v["images"][0]["manifest"]["digest"] = json!("md5:00")),
            "DIGEST_INVALID",
            "images[0].manifest.digest",
        ),
        (
            Box::new(|v| v["images"][0]["manifest"]["data"] = json!("%%%")),
            "REGISTRATION_INVALID",
            "images[0].manifest.data",
        ),
        (
            Box::new(|v| v["images"][0]["manifest"]["media_type"] = json!("text/plain")),
            "MANIFEST_INVALID",
            "images[0].manifest.media_type",
        ),
        (
            Box::new(|v| v["images"][0]["source"]["registry"] = json!("other:1")),
            "REGISTRATION_INVALID",
            "images[0].source.registry",
        ),
        (
            Box::new(|v| v["sources"][0]["token"] = json!("a b")),
            "REGISTRATION_INVALID",
            "sources[0].token",
        ),
        (
            Box::new(|v| v["sources"][0]["ca"] = json!("not a certificate")),
            "REGISTRATION_INVALID",
            "sources[0].ca",
        ),
        (
            Box::new(|v| {
                v["sources"][0]["ca"] =
                    json!("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
            }),
            "REGISTRATION_INVALID",
            "sources[0]",
        ),
        (
            Box::new(|v| v["password"] = json!("x")),
            "REGISTRATION_INVALID",
            "",
        ),
        (
            Box::new(|v| v["images"] = json!(7)),
            "REGISTRATION_INVALID",
            "",
        ),
    ];
    for (change, code, field) in cases {
        let mut v = good();
        change(&mut v);
        let r = put(Some(BR_AUTH), serde_json::to_vec(&v).unwrap()).await;
        assert_eq!(r.status, 400, "{v}: {:?}", r.body);
        let error = &r.json()["errors"][0];
        assert_eq!(error["code"], code, "{v}: {error}");
        if !field.is_empty() {
            assert_eq!(error["detail"]["field"], field, "{v}: {error}");
        }
    }
    let r = put(Some(BR_AUTH), b"\xff\xfe".to_vec()).await;
    assert_eq!(r.status, 400);
    // Nothing of all that was registered.
    assert_eq!(get(&br, "/v2/org/app/manifests/latest").await.status, 404);
    // The good one is taken.
    let r = put(Some(BR_AUTH), serde_json::to_vec(&good()).unwrap()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The intermediate profile takes no registrations.
    let serve = router(AppState::new(local, AuthPolicy::buildset("zuul", "pw")));
    let r = call(
        &serve,
        Method::PUT,
        "/speculum/v1/speculative",
        Some(BR_AUTH),
        empty,
    )
    .await;
    assert_eq!(r.status, 404);
}
