//! Pull-through upstreams, in process: the upstream is another speculum
//! registry served over plain HTTP on loopback (counting the requests it
//! gets), the proxy is called through its router.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use speculum_oci::{Digest, Reference, RepositoryName, media_type};
use speculum_server::{AppState, AuthPolicy, Server, UpstreamSettings, Upstreams, router};
use speculum_storage::{Registry, body_from_bytes};
use tower::ServiceExt as _;

/// An upstream registry on loopback that records the paths it is asked for.
struct Upstream {
    registry: Registry,
    server: Option<Server>,
    url: String,
    log: Arc<Mutex<Vec<(Method, String)>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let registry = Registry::memory();
        let log: Arc<Mutex<Vec<(Method, String)>>> = Arc::default();
        let seen = log.clone();
        let inner = router(AppState::new(registry.clone(), AuthPolicy::open())).map_request(
            move |req: Request<Body>| {
                seen.lock()
                    .unwrap()
                    .push((req.method().clone(), req.uri().path().to_string()));
                req
            },
        );
        let app = Router::new().fallback_service(inner);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(listener, app, None).unwrap();
        let url = format!("http://{}", server.local_addr());
        Upstream {
            registry,
            server: Some(server),
            url,
            log,
        }
    }

    async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// How many requests for paths containing `part` it got.
    fn count(&self, method: Method, part: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| *m == method && p.contains(part))
            .count()
    }

    fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    async fn blob(&self, repo: &str, data: &[u8]) -> (Digest, u64) {
        let digest = Digest::sha256(data);
        self.registry
            .put_blob(&name(repo), &digest, body_from_bytes(data.to_vec()))
            .await
            .unwrap();
        (digest, data.len() as u64)
    }

    /// An image with one layer of `seed`-derived bytes; returns the manifest
    /// digest, its bytes, and the layer digest.
    async fn image(&self, repo: &str, reference: &str, seed: u8) -> (Digest, Bytes, Digest) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#);
        let (cd, cs) = self.blob(repo, config.as_bytes()).await;
        let layer: Vec<u8> = (0..200_000u32).map(|i| (i as u8) ^ seed).collect();
        let (ld, ls) = self.blob(repo, &layer).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}],
        }))
        .unwrap();
        let bytes = Bytes::from(manifest);
        let pushed = self
            .registry
            .put_manifest(
                &name(repo),
                &reference.parse().unwrap(),
                Some(media_type::OCI_MANIFEST),
                bytes.clone(),
            )
            .await
            .unwrap();
        (pushed.digest, bytes, ld)
    }
}

fn name(s: &str) -> RepositoryName {
    s.parse().unwrap()
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
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
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
}

async fn send(app: &Router, method: Method, path: &str) -> Resp {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", media_type::accept_all_manifests().as_str())
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get(app: &Router, path: &str) -> Resp {
    send(app, Method::GET, path).await
}

/// Wait (up to 10 s) until `registry` holds `reference` in `repo`: proxied
/// manifests are stored once their blobs are, in the background.
async fn stored(
    registry: &Registry,
    repo: &str,
    reference: &str,
) -> speculum_storage::StoredManifest {
    let reference: Reference = reference.parse().unwrap();
    let started = Instant::now();
    loop {
        if let Ok(m) = registry.get_manifest(&name(repo), &reference).await {
            return m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{repo}:{reference} was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy over `registry` with the given upstreams.
fn proxy(registry: &Registry, upstreams: Vec<UpstreamSettings>) -> Router {
    let state = AppState::new(registry.clone(), AuthPolicy::open())
        .with_upstreams(Upstreams::new(upstreams).unwrap());
    router(state)
}

#[tokio::test]
async fn serves_an_image_that_exists_only_upstream_and_caches_it() {
    let mut up = Upstream::start().await;
    let (digest, bytes, layer) = up.image("library/busybox", "v1", 1).await;
    let (qdigest, _, _) = up.image("org/app", "v1", 2).await;
    let local = Registry::memory();
    let app = proxy(
        &local,
        vec![
            UpstreamSettings::new("docker.io", &up.url).unwrap(),
            // Another namespace served by the same upstream.
            UpstreamSettings::new("quay.io", &up.url).unwrap(),
        ],
    );

    // docker.io: `busybox` is `library/busybox` upstream, as on Docker Hub;
    // `docker.io/busybox` is the same repository here.
    let r = get(&app, "/v2/busybox/manifests/v1").await;
    r.expect(200);
    assert_eq!(r.body, bytes);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert_eq!(r.header("content-type"), Some(media_type::OCI_MANIFEST));
    let r = send(&app, Method::HEAD, "/v2/docker.io/busybox/manifests/v1").await;
    r.expect(200);
    // Stored byte for byte, with its blobs, in the repository asked for.
    let held = stored(&local, "busybox", "v1").await;
    assert_eq!(held.bytes, bytes);
    let r = get(&app, &format!("/v2/busybox/blobs/{layer}")).await;
    r.expect(200);
    assert_eq!(r.body.len(), 200_000);
    assert_eq!(up.count(Method::GET, "/manifests/v1"), 1);
    assert_eq!(up.count(Method::GET, &format!("/blobs/{layer}")), 1);

    // quay.io via the path prefix and via `?ns=`.
    get(&app, "/v2/quay.io/org/app/manifests/v1")
        .await
        .expect(200);
    stored(&local, "quay.io/org/app", "v1").await;
    let r = get(&app, "/v2/org/app/manifests/v1?ns=quay.io").await;
    r.expect(200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(qdigest.to_string().as_str())
    );

    // Proxied content is visible only where it was fetched for.
    assert!(
        local
            .stat_blob(&name("quay.io/org/app"), &layer)
            .await
            .is_err()
    );
    get(&app, &format!("/v2/ghcr.io/x/blobs/{layer}"))
        .await
        .expect(404);

    // Served from the cache once the upstream is gone: by digest always, by
    // tag within the TTL.
    up.stop().await;
    let r = get(&app, &format!("/v2/busybox/manifests/{digest}")).await;
    r.expect(200);
    assert_eq!(r.body, bytes);
    get(&app, "/v2/busybox/manifests/v1").await.expect(200);
    get(&app, &format!("/v2/busybox/blobs/{layer}"))
        .await
        .expect(200);
}

#[tokio::test]
async fn namespaces_without_upstream_and_filtered_repositories_answer_404() {
    let up = Upstream::start().await;
    up.image("library/busybox", "v1", 1).await;
    up.image("private/thing", "v1", 3).await;
    up.image("ghcr.io/x/y", "v1", 4).await;
    let local = Registry::memory();
    let settings = UpstreamSettings::new("docker.io", &up.url)
        .unwrap()
        .repositories("library/.*")
        .unwrap();
    let app = proxy(&local, vec![settings]);

    get(&app, "/v2/busybox/manifests/v1").await.expect(200);
    let r = get(&app, "/v2/private/thing/manifests/v1").await;
    r.expect(404);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    // No upstream for ghcr.io: a plain 404, the upstream is not asked.
    up.clear();
    let r = get(&app, "/v2/ghcr.io/x/y/manifests/v1").await;
    r.expect(404);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    assert_eq!(up.count(Method::GET, ""), 0);

    // Not in the upstream either: 404 that says so.
    let r = get(&app, "/v2/library/nothing/manifests/v1").await;
    r.expect(404);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    assert_eq!(r.json()["errors"][0]["detail"]["upstream"], "docker.io");

    // A registry with no upstreams at all (the buildset profile).
    let bare = router(AppState::new(Registry::memory(), AuthPolicy::open()));
    get(&bare, "/v2/busybox/manifests/v1").await.expect(404);
}

#[tokio::test]
async fn a_down_upstream_gives_a_fast_404_never_a_500() {
    // A port that was free a moment ago: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let app = proxy(
        &Registry::memory(),
        vec![UpstreamSettings::new("quay.io", &url).unwrap()],
    );
    let started = Instant::now();
    let r = get(&app, "/v2/quay.io/org/app/manifests/v1").await;
    r.expect(404);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let detail = &r.json()["errors"][0]["detail"];
    assert_eq!(detail["upstream"], "quay.io");
    assert!(
        detail["error"].as_str().unwrap().contains("reach"),
        "{detail}"
    );
    let digest = Digest::sha256(b"x");
    let r = get(&app, &format!("/v2/quay.io/org/app/blobs/{digest}")).await;
    r.expect(404);
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    let r = send(
        &app,
        Method::HEAD,
        &format!("/v2/quay.io/org/app/manifests/{digest}"),
    )
    .await;
    r.expect(404);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tags_are_rechecked_after_the_ttl() {
    let mut up = Upstream::start().await;
    let (old, old_bytes, _) = up.image("library/app", "latest", 1).await;
    let local = Registry::memory();
    let ttl = Duration::from_millis(300);
    let app = proxy(
        &local,
        vec![
            UpstreamSettings::new("docker.io", &up.url)
                .unwrap()
                .tag_ttl(ttl),
        ],
    );
    let r = get(&app, "/v2/library/app/manifests/latest").await;
    r.expect(200);
    assert_eq!(r.body, old_bytes);

    // Moved upstream: the cached tag is served until the TTL runs out.
    let (new, new_bytes, _) = up.image("library/app", "latest", 2).await;
    assert_ne!(old, new);
    let r = get(&app, "/v2/library/app/manifests/latest").await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(old.to_string().as_str())
    );
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    up.clear();
    let r = get(&app, "/v2/library/app/manifests/latest").await;
    r.expect(200);
    assert_eq!(r.body, new_bytes);
    assert_eq!(up.count(Method::HEAD, "/manifests/latest"), 1);
    // The old manifest is still there by digest.
    get(&app, &format!("/v2/library/app/manifests/{old}"))
        .await
        .expect(200);

    // Unchanged: one HEAD, no GET.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    up.clear();
    get(&app, "/v2/library/app/manifests/latest")
        .await
        .expect(200);
    assert_eq!(up.count(Method::HEAD, "/manifests/latest"), 1);
    assert_eq!(up.count(Method::GET, "/manifests/"), 0);

    // Upstream gone after the TTL: the cached tag is served.
    up.stop().await;
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let r = get(&app, "/v2/library/app/manifests/latest").await;
    r.expect(200);
    assert_eq!(r.body, new_bytes);
}

#[tokio::test]
async fn concurrent_requests_download_a_blob_once() {
    let up = Upstream::start().await;
    let data = vec![7u8; 1 << 20];
    let (digest, _) = up.blob("org/big", &data).await;
    let app = proxy(
        &Registry::memory(),
        vec![UpstreamSettings::new("quay.io", &up.url).unwrap()],
    );
    let path = format!("/v2/quay.io/org/big/blobs/{digest}");
    let answers = futures_util::future::join_all((0..8).map(|_| get(&app, &path))).await;
    for r in answers {
        r.expect(200);
        assert_eq!(r.body.len(), data.len());
    }
    assert_eq!(up.count(Method::GET, "/blobs/"), 1);
    // A blob the upstream does not have: 404 BLOB_UNKNOWN.
    let r = get(
        &app,
        &format!("/v2/quay.io/org/big/blobs/{}", Digest::sha256(b"nope")),
    )
    .await;
    r.expect(404);
    assert_eq!(r.code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn an_index_is_served_at_once_and_stored_when_its_children_are() {
    let up = Upstream::start().await;
    let (a, a_bytes, a_layer) = up.image("org/multi", "amd64", 1).await;
    let (b, b_bytes, b_layer) = up.image("org/multi", "arm64", 2).await;
    let child = |d: &Digest, bytes: &Bytes, arch: &str| {
        json!({"mediaType": media_type::OCI_MANIFEST, "digest": d, "size": bytes.len(),
               "platform": {"os": "linux", "architecture": arch}})
    };
    let index = Bytes::from(
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [child(&a, &a_bytes, "amd64"), child(&b, &b_bytes, "arm64")],
        }))
        .unwrap(),
    );
    let index_digest = up
        .registry
        .put_manifest(
            &name("org/multi"),
            &"v1".parse().unwrap(),
            Some(media_type::OCI_INDEX),
            index.clone(),
        )
        .await
        .unwrap()
        .digest;
    let local = Registry::memory();
    let app = proxy(
        &local,
        vec![UpstreamSettings::new("quay.io", &up.url).unwrap()],
    );
    let repo = name("quay.io/org/multi");

    let r = get(&app, "/v2/quay.io/org/multi/manifests/v1").await;
    r.expect(200);
    assert_eq!(r.body, index);
    assert_eq!(r.header("content-type"), Some(media_type::OCI_INDEX));
    // Lazy: no child was fetched, nothing stored yet.
    assert_eq!(up.count(Method::GET, &format!("/manifests/{a}")), 0);
    assert!(
        local
            .resolve(&repo, &Reference::Digest(index_digest.clone()))
            .await
            .unwrap()
            .is_none()
    );

    // One platform: its manifest and blobs only.
    get(&app, &format!("/v2/quay.io/org/multi/manifests/{a}"))
        .await
        .expect(200);
    get(&app, &format!("/v2/quay.io/org/multi/blobs/{a_layer}"))
        .await
        .expect(200);
    assert_eq!(up.count(Method::GET, &format!("/blobs/{b_layer}")), 0);
    // Still served (from memory) by tag and by digest.
    get(&app, "/v2/quay.io/org/multi/manifests/v1")
        .await
        .expect(200);
    get(
        &app,
        &format!("/v2/quay.io/org/multi/manifests/{index_digest}"),
    )
    .await
    .expect(200);

    // The other platform completes the index, which is then stored.
    get(&app, &format!("/v2/quay.io/org/multi/manifests/{b}"))
        .await
        .expect(200);
    let held = stored(&local, "quay.io/org/multi", "v1").await;
    assert_eq!(held.digest, index_digest);
    assert_eq!(held.bytes, index);
}

#[tokio::test]
async fn upstream_credentials_are_sent() {
    // An upstream that requires a user for pulls.
    let registry = Registry::memory();
    let policy = AuthPolicy::with_users(
        vec![speculum_server::User::plain(
            "mirror",
            "pw",
            speculum_server::Access::Read,
        )],
        false,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::start(
        listener,
        router(AppState::new(registry.clone(), policy)),
        None,
    )
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    let up = Upstream {
        registry,
        server: Some(server),
        url: url.clone(),
        log: Arc::default(),
    };
    let (digest, _, _) = up.image("team/app", "v1", 5).await;

    let anonymous = proxy(
        &Registry::memory(),
        vec![UpstreamSettings::new("quay.io", &url).unwrap()],
    );
    let r = get(&anonymous, "/v2/quay.io/team/app/manifests/v1").await;
    r.expect(404);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");

    let app = proxy(
        &Registry::memory(),
        vec![
            UpstreamSettings::new("quay.io", &url)
                .unwrap()
                .credentials("mirror", "pw"),
        ],
    );
    let r = get(&app, "/v2/quay.io/team/app/manifests/v1").await;
    r.expect(200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
}

#[tokio::test]
async fn a_misbehaving_upstream_gives_404_never_500() {
    // An upstream that answers 500 to manifests of `broken/*`, sends bytes
    // that do not match the digest asked for, and a truncated blob.
    let good_blob = Bytes::from_static(b"the real content of the blob");
    let good_digest = Digest::sha256(&good_blob);
    let fake = Router::new().fallback(move |req: Request<Body>| async move {
        let path = req.uri().path().to_string();
        let status_body = |status: u16, body: &'static str| {
            axum::response::Response::builder()
                .status(status)
                .header("content-type", media_type::OCI_MANIFEST)
                .body(Body::from(body))
                .unwrap()
        };
        if path == "/v2/" {
            status_body(200, "{}")
        } else if path.starts_with("/v2/broken/") {
            status_body(500, "oops")
        } else if path.contains("/manifests/") {
            // Valid JSON, but not what any digest names, and not a manifest.
            status_body(
                200,
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
            )
        } else {
            status_body(200, "not the blob")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::start(listener, fake, None).unwrap();
    let url = format!("http://{}", server.local_addr());
    let app = proxy(
        &Registry::memory(),
        vec![UpstreamSettings::new("quay.io", &url).unwrap()],
    );
    for path in [
        "/v2/quay.io/broken/app/manifests/v1".to_string(),
        "/v2/quay.io/org/app/manifests/v1".to_string(),
        format!("/v2/quay.io/org/app/manifests/{}", Digest::sha256(b"m")),
    ] {
        let r = get(&app, &path).await;
        r.expect(404);
        assert_eq!(r.code(), "MANIFEST_UNKNOWN", "{path}");
    }
    let r = get(&app, &format!("/v2/quay.io/org/app/blobs/{good_digest}")).await;
    r.expect(404);
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("upstream quay.io failed")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn tags_pushed_here_that_the_upstream_lacks_are_kept() {
    let up = Upstream::start().await;
    // The "proxy" registry got this image by a push, not from the upstream.
    let here = Upstream::start().await;
    let (digest, bytes, _) = here.image("myorg/app", "build1_latest", 9).await;
    let ttl = Duration::from_millis(100);
    let app = proxy(
        &here.registry,
        vec![
            UpstreamSettings::new("docker.io", &up.url)
                .unwrap()
                .tag_ttl(ttl),
        ],
    );
    for _ in 0..2 {
        let r = get(&app, "/v2/myorg/app/manifests/build1_latest").await;
        r.expect(200);
        assert_eq!(r.body, bytes);
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        tokio::time::sleep(ttl + Duration::from_millis(20)).await;
    }
    // Asked upstream (HEAD), which does not have it.
    assert!(up.count(Method::HEAD, "/manifests/build1_latest") >= 1);
}
