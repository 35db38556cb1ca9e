//! Webhooks end to end: pushes, promotions, deletes and mounts through the
//! real router reach a local HTTP receiver in the `distribution` and
//! `dockerhub` formats, signed; deliveries wait on disk while the receiver
//! is down and across a registry restart, and none is sent twice once it was
//! accepted.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, Uri};
use base64::Engine as _;
use serde_json::{Value, json};
use speculum_oci::{Digest, media_type};
use speculum_server::{
    AppState, AuthPolicy, Notifier, NotifierOptions, RegistryServer, SIGNATURE_HEADER, Settings,
    WebhooksConfig, router, webhook_signature,
};
use speculum_storage::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

const USER: &str = "zuul";
const PASSWORD: &str = "pw";
const SECRET: &str = "hook-secret";
/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(20);

// ---- the receiver -------------------------------------------------------

#[derive(Debug, Clone)]
struct Got {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// A webhook receiver on loopback that records what it accepts and answers
/// 500 to the first `fail` requests.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    fail: Arc<AtomicU32>,
    attempts: Arc<AtomicU32>,
}

impl Receiver {
    /// Serve on `addr` (port 0 for any).
    async fn serve(&self, addr: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind(addr).await.unwrap();
        let local = listener.local_addr().unwrap();
        let app = Router::new().fallback(record).with_state(self.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (local, task)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until `n` requests were accepted.
    async fn wait_for(&self, n: usize) -> Vec<Got> {
        let start = tokio::time::Instant::now();
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "only {} of {n} deliveries arrived: {:?}",
                got.len(),
                got.iter().map(|g| g.json()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    r.attempts.fetch_add(1, Ordering::SeqCst);
    let failing = r
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.got.lock().unwrap().push(Got { uri, headers, body });
    StatusCode::OK
}

/// A loopback address nothing listens on (yet).
async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---- the registry -------------------------------------------------------

fn notifier(root: &Path, endpoints: Value) -> Notifier {
    let config: WebhooksConfig = serde_json::from_value(json!({ "endpoints": endpoints })).unwrap();
    let settings = config.settings(root, root).unwrap();
    Notifier::start(
        settings,
        NotifierOptions {
            public_url: Some("https://registry.test".into()),
            source_addr: "registry.test:443".into(),
            private: true,
        },
    )
    .unwrap()
}

struct Registryd {
    app: Router,
    notifier: Notifier,
}

impl Registryd {
    async fn start(root: &Path, endpoints: Value) -> Registryd {
        let registry = Registry::filesystem(&root.join("storage")).await.unwrap();
        let notifier = notifier(root, endpoints);
        let state = AppState::new(registry, AuthPolicy::buildset(USER, PASSWORD))
            .with_notifier(notifier.clone());
        Registryd {
            app: router(state),
            notifier,
        }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> StatusCode {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "registry.test")
            .header("user-agent", "webhook-test/1")
            .header("authorization", format!("Basic {auth}"));
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        response.status()
    }

    async fn put_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::sha256(data);
        let status = self
            .send(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                None,
                Bytes::copy_from_slice(data),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        digest
    }

    /// Push a one-layer image to `repo:tag`; returns the manifest's digest
    /// and size.
    async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Digest, usize) {
        let config = self.put_blob(repo, b"{}").await;
        let layer_digest = self.put_blob(repo, layer).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": config.to_string(), "size": 2},
            "layers": [{"mediaType": media_type::OCI_LAYER_GZIP, "digest": layer_digest.to_string(), "size": layer.len()}],
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        self.put_manifest(repo, tag, &bytes).await;
        (Digest::sha256(&bytes), bytes.len())
    }

    async fn put_manifest(&self, repo: &str, reference: &str, bytes: &[u8]) {
        let status = self
            .send(
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                Some(media_type::OCI_MANIFEST),
                Bytes::copy_from_slice(bytes),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }

    /// Wait until no delivery is pending.
    async fn drained(&self) {
        let start = tokio::time::Instant::now();
        while self.notifier.stats().iter().any(|s| s.pending > 0) {
            assert!(start.elapsed() < DEADLINE, "{:?}", self.notifier.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn pending_files(root: &Path, endpoint: &str) -> usize {
    std::fs::read_dir(root.join("_webhooks").join(endpoint))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count()
}

#[track_caller]
fn check_signature(got: &Got) {
    assert_eq!(
        got.header(SIGNATURE_HEADER),
        webhook_signature(SECRET.as_bytes(), &got.body),
        "signature"
    );
    assert!(got.header(SIGNATURE_HEADER).starts_with("sha256="));
}

// ---- tests --------------------------------------------------------------

#[tokio::test]
async fn distribution_events_for_push_promote_delete_and_mount() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    let (addr, _server) = receiver.serve("127.0.0.1:0".parse().unwrap()).await;
    let reg = Registryd::start(
        dir.path(),
        json!([{
            "name": "audit", "url": format!("http://{addr}/events"),
            "events": ["push", "delete", "mount"], "secret": SECRET,
            "headers": {"X-Site": ["a", "b"], "Authorization": "Bearer t0k"},
        }]),
    )
    .await;

    let (digest, size) = reg
        .push_image("myorg/app", "change_1_latest", b"layer-1")
        .await;
    let got = receiver.wait_for(1).await;
    let first = &got[0];
    assert_eq!(
        first.header("content-type"),
        "application/vnd.docker.distribution.events.v2+json"
    );
    assert_eq!(first.header("authorization"), "Bearer t0k");
    assert_eq!(
        first
            .headers
            .get_all("x-site")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    check_signature(first);
    let body = first.json();
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(
        first.header("x-speculum-delivery"),
        ev["id"].as_str().unwrap()
    );
    assert_eq!(ev["action"], "push");
    assert_eq!(ev["target"]["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(ev["target"]["digest"], digest.to_string());
    assert_eq!(ev["target"]["size"], size);
    assert_eq!(ev["target"]["length"], size);
    assert_eq!(ev["target"]["repository"], "myorg/app");
    assert_eq!(ev["target"]["tag"], "change_1_latest");
    assert_eq!(
        ev["target"]["url"],
        format!("https://registry.test/v2/myorg/app/manifests/{digest}")
    );
    assert_eq!(ev["request"]["method"], "PUT");
    assert_eq!(ev["request"]["host"], "registry.test");
    assert_eq!(ev["request"]["useragent"], "webhook-test/1");
    assert!(!ev["request"]["id"].as_str().unwrap().is_empty());
    assert_eq!(ev["actor"]["name"], USER);
    assert_eq!(ev["source"]["addr"], "registry.test:443");
    assert!(!ev["source"]["instanceID"].as_str().unwrap().is_empty());
    assert!(ev["timestamp"].as_str().unwrap().contains('T'));
    uuid_like(ev["id"].as_str().unwrap());

    // Promotion: the same manifest pushed under its final tag.
    let manifest = manifest_bytes(&reg, "myorg/app", "change_1_latest").await;
    reg.put_manifest("myorg/app", "latest", &manifest).await;
    // The temporary tag goes away, and a blob is mounted elsewhere.
    assert_eq!(
        reg.send(
            "DELETE",
            "/v2/myorg/app/manifests/change_1_latest",
            None,
            Bytes::new()
        )
        .await,
        StatusCode::ACCEPTED
    );
    let layer = Digest::sha256(b"layer-1");
    assert_eq!(
        reg.send(
            "POST",
            &format!("/v2/other/app/blobs/uploads/?mount={layer}&from=myorg/app"),
            None,
            Bytes::new()
        )
        .await,
        StatusCode::CREATED
    );
    let got = receiver.wait_for(4).await;
    let evs: Vec<Value> = got.iter().map(|g| g.json()["events"][0].clone()).collect();
    assert_eq!(evs[1]["action"], "push");
    assert_eq!(evs[1]["target"]["tag"], "latest");
    assert_eq!(evs[1]["target"]["digest"], digest.to_string());
    assert_eq!(evs[2]["action"], "delete");
    assert_eq!(evs[2]["target"]["tag"], "change_1_latest");
    assert_eq!(evs[2]["target"]["repository"], "myorg/app");
    assert_eq!(evs[3]["action"], "mount");
    assert_eq!(evs[3]["target"]["repository"], "other/app");
    assert_eq!(evs[3]["target"]["fromRepository"], "myorg/app");
    assert_eq!(evs[3]["target"]["digest"], layer.to_string());
    assert_eq!(evs[3]["target"]["size"], 7);
    for g in &got {
        check_signature(g);
    }
    reg.drained().await;
    assert_eq!(pending_files(dir.path(), "audit"), 0);
    let stats = &reg.notifier.stats()[0];
    assert_eq!((stats.sent, stats.failed, stats.pending), (4, 0, 0));
    reg.notifier.shutdown().await;
}

fn uuid_like(s: &str) {
    assert_eq!(s.len(), 36, "{s}");
    assert_eq!(s.matches('-').count(), 4, "{s}");
}

async fn manifest_bytes(reg: &Registryd, repo: &str, reference: &str) -> Vec<u8> {
    let response = reg
        .app
        .clone()
        .oneshot(
            Request::get(format!("/v2/{repo}/manifests/{reference}"))
                .header("accept", media_type::OCI_MANIFEST)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn dockerhub_payload_with_token_in_url_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    let (addr, _server) = receiver.serve("127.0.0.1:0".parse().unwrap()).await;
    let reg = Registryd::start(
        dir.path(),
        json!([{
            "name": "cd", "format": "dockerhub", "secret": SECRET,
            "url": format!("http://{addr}/codestream/api/registry-webhook-listeners/1?token=abc123"),
            "repositories": "myorg/.*", "tags": "v[0-9.]+",
        }]),
    )
    .await;
    reg.push_image("myorg/app", "latest", b"l1").await; // tag filtered out
    reg.push_image("other/app", "v1", b"l2").await; // repository filtered out
    let (digest, _) = reg.push_image("myorg/app", "v1.2", b"l3").await;
    // By digest: no tag, never sent in this format.
    let manifest = manifest_bytes(&reg, "myorg/app", "v1.2").await;
    reg.put_manifest("myorg/app", &digest.to_string(), &manifest)
        .await;
    reg.push_image("quay.io/org/tool", "v2", b"l4").await; // filtered out

    let got = receiver.wait_for(1).await;
    reg.drained().await;
    assert_eq!(
        receiver.got().len(),
        1,
        "only myorg/app:v1.2 passes the filters"
    );
    let g = &got[0];
    assert_eq!(g.uri.query(), Some("token=abc123"));
    assert_eq!(g.header("content-type"), "application/json");
    check_signature(g);
    let body = g.json();
    assert_eq!(body["push_data"]["tag"], "v1.2");
    assert_eq!(body["push_data"]["pusher"], USER);
    assert_eq!(body["push_data"]["images"], json!([]));
    let pushed_at = body["push_data"]["pushed_at"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - pushed_at).abs() < 120, "{pushed_at} vs {now}");
    let r = &body["repository"];
    assert_eq!(r["repo_name"], "myorg/app");
    assert_eq!(r["namespace"], "myorg");
    assert_eq!(r["name"], "app");
    assert_eq!(r["owner"], "myorg");
    assert_eq!(r["status"], "Active");
    assert_eq!(r["is_private"], true);
    assert_eq!(r["is_official"], false);
    assert_eq!(r["is_trusted"], false);
    assert_eq!(r["star_count"], 0);
    assert_eq!(r["comment_count"], 0);
    for key in ["description", "full_description", "dockerfile", "repo_url"] {
        assert!(r[key].is_string(), "{key}");
    }
    assert!(r["date_created"].is_i64());
    assert!(body["callback_url"].is_string());
    reg.notifier.shutdown().await;
}

#[tokio::test]
async fn deliveries_wait_for_a_receiver_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr().await;
    let receiver = Receiver::default();
    // Fails twice with a 500 once it is up, too.
    receiver.fail.store(2, Ordering::SeqCst);
    let reg = Registryd::start(
        dir.path(),
        json!([{
            "name": "late", "url": format!("http://{addr}/"), "secret": SECRET,
            "backoff": "50ms", "max-backoff": "200ms", "timeout": "2s",
        }]),
    )
    .await;
    for n in 0..3 {
        reg.push_image(
            "myorg/app",
            &format!("t{n}"),
            format!("layer {n}").as_bytes(),
        )
        .await;
    }
    // The receiver is down: the deliveries wait on disk.
    let start = tokio::time::Instant::now();
    while reg.notifier.stats()[0].failed < 2 {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reg.notifier.stats()[0].pending, 3);
    assert_eq!(pending_files(dir.path(), "late"), 3);
    let text = reg.notifier.metrics_text();
    assert!(
        text.contains("speculum_webhook_pending{endpoint=\"late\"} 3"),
        "{text}"
    );

    let (_, _server) = receiver.serve(addr).await;
    let got = receiver.wait_for(3).await;
    reg.drained().await;
    let tags: Vec<String> = got
        .iter()
        .map(|g| {
            g.json()["events"][0]["target"]["tag"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(tags, ["t0", "t1", "t2"], "in order of creation");
    for g in &got {
        check_signature(g);
    }
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 5);
    let stats = &reg.notifier.stats()[0];
    assert_eq!(stats.sent, 3);
    assert!(stats.failed >= 4, "{stats:?}");
    assert_eq!(pending_files(dir.path(), "late"), 0);
    reg.notifier.shutdown().await;
}

#[tokio::test]
async fn a_restart_loses_nothing_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr().await;
    let endpoints = json!([
        {"name": "dist", "url": format!("http://{addr}/dist"), "backoff": "50ms",
         "max-backoff": "100ms", "events": ["push", "delete"]},
        {"name": "hub", "url": format!("http://{addr}/hub?token=x"), "format": "dockerhub",
         "backoff": "50ms", "max-backoff": "100ms"},
    ]);
    {
        let reg = Registryd::start(dir.path(), endpoints.clone()).await;
        reg.push_image("myorg/app", "v1", b"a").await;
        reg.push_image("myorg/app", "v2", b"b").await;
        assert_eq!(
            reg.send("DELETE", "/v2/myorg/app/manifests/v1", None, Bytes::new())
                .await,
            StatusCode::ACCEPTED
        );
        assert_eq!(pending_files(dir.path(), "dist"), 3);
        assert_eq!(pending_files(dir.path(), "hub"), 2);
        // The registry goes away with everything undelivered.
    }
    let receiver = Receiver::default();
    let (_, _server) = receiver.serve(addr).await;
    let reg = Registryd::start(dir.path(), endpoints.clone()).await;
    assert_eq!(reg.notifier.stats()[0].pending, 3);
    let got = receiver.wait_for(5).await;
    reg.drained().await;
    let mut dist = Vec::new();
    let mut hub = Vec::new();
    for g in &got {
        if g.uri.path() == "/dist" {
            let ev = &g.json()["events"][0];
            dist.push(format!(
                "{} {}",
                ev["action"].as_str().unwrap(),
                ev["target"]["tag"].as_str().unwrap()
            ));
        } else {
            hub.push(g.json()["push_data"]["tag"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(dist, ["push v1", "push v2", "delete v1"]);
    assert_eq!(hub, ["v1", "v2"]);
    assert_eq!(pending_files(dir.path(), "dist"), 0);
    reg.notifier.shutdown().await;
    drop(reg);

    // A third start has nothing to send: no delivery comes twice.
    let reg = Registryd::start(dir.path(), endpoints).await;
    assert!(reg.notifier.stats().iter().all(|s| s.pending == 0));
    reg.push_image("myorg/app", "v3", b"c").await;
    receiver.wait_for(7).await;
    reg.drained().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.got().len(), 7);
    let ids: std::collections::HashSet<String> = receiver
        .got()
        .iter()
        .map(|g| g.header("x-speculum-delivery").to_string())
        .collect();
    // Four events (push v1, push v2, delete v1, push v3): both endpoints see
    // the same id for the same event, and no id twice per endpoint.
    assert_eq!(ids.len(), 4);
    reg.notifier.shutdown().await;
}

#[tokio::test]
async fn gives_up_after_max_retries_without_blocking_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    let (addr, _server) = receiver.serve("127.0.0.1:0".parse().unwrap()).await;
    receiver.fail.store(2, Ordering::SeqCst);
    let reg = Registryd::start(
        dir.path(),
        json!([{"name": "bounded", "url": format!("http://{addr}/"), "max-retries": 1,
                "backoff": "20ms"}]),
    )
    .await;
    reg.push_image("myorg/app", "dropped", b"x").await;
    reg.push_image("myorg/app", "kept", b"y").await;
    let got = receiver.wait_for(1).await;
    reg.drained().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["events"][0]["target"]["tag"], "kept");
    let stats = &reg.notifier.stats()[0];
    assert_eq!((stats.sent, stats.failed, stats.abandoned), (1, 2, 1));
    let dead = std::fs::read_dir(dir.path().join("_webhooks/bounded/dead"))
        .unwrap()
        .count();
    assert_eq!(dead, 1);
    reg.notifier.shutdown().await;
}

#[tokio::test]
async fn a_webhook_failure_never_fails_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr().await;
    let reg = Registryd::start(
        dir.path(),
        json!([{"name": "down", "url": format!("http://{addr}/"), "backoff": "1h"}]),
    )
    .await;
    // Make the queue unwritable: the push still succeeds.
    let queue = dir.path().join("_webhooks/down");
    std::fs::remove_dir_all(&queue).unwrap();
    std::fs::write(&queue, b"not a directory").unwrap();
    reg.push_image("myorg/app", "v1", b"z").await;
    assert_eq!(reg.notifier.stats()[0].pending, 0);
    reg.notifier.shutdown().await;
}

#[tokio::test]
async fn serve_config_starts_webhooks_and_exports_their_counters() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    let (addr, _server) = receiver.serve("127.0.0.1:0".parse().unwrap()).await;
    std::fs::write(dir.path().join("hook.key"), format!("{SECRET}\n")).unwrap();
    let yaml = format!(
        r#"
registry:
  address: 127.0.0.1
  port: 0
  public-url: https://ir.example.org
  users: [{{name: {USER}, pass: {PASSWORD}, access: write}}]
  storage: {{driver: filesystem, root: data}}
  webhooks:
    queue-dir: queue
    endpoints:
      - name: cd
        url: http://{addr}/hook?token=t0k
        format: dockerhub
        secret-file: hook.key
        timeout: 2s
"#
    );
    let path = dir.path().join("registry.yaml");
    let settings = Settings::parse(&yaml, &path, |_| None).unwrap();
    assert_eq!(settings.webhooks.queue_dir, dir.path().join("queue"));
    let server = RegistryServer::start(&settings).await.unwrap();
    let reg = Registryd {
        app: router(server.state().clone()),
        notifier: server.state().notifier().clone(),
    };
    reg.push_image("myorg/app", "v1", b"served").await;
    let got = receiver.wait_for(1).await;
    check_signature(&got[0]);
    assert_eq!(got[0].uri.query(), Some("token=t0k"));
    let body = got[0].json();
    assert_eq!(body["repository"]["repo_name"], "myorg/app");
    assert_eq!(
        body["repository"]["is_private"],
        !settings.auth.anonymous_read
    );
    assert_eq!(
        body["repository"]["repo_url"],
        "https://ir.example.org/v2/myorg/app/tags/list"
    );
    reg.drained().await;
    let response = reg
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("speculum_webhook_sent_total{endpoint=\"cd\"} 1"),
        "{text}"
    );
    assert!(text.contains("speculum_webhook_pending{endpoint=\"cd\"} 0"));
    assert!(text.contains("speculum_webhook_failed_total{endpoint=\"cd\"} 0"));
    drop(reg);
    server.shutdown().await;
}

#[test]
fn serve_config_errors_name_the_webhook_key() {
    let path = Path::new("/etc/speculum/registry.yaml");
    let base = "registry:\n  address: 127.0.0.1\n  port: 5000\n  storage: {driver: filesystem, root: /data}\n  webhooks:\n    endpoints:\n";
    for (endpoint, key) in [
        (
            "      - {name: a, url: 'ftp://x/'}\n",
            "registry.webhooks.endpoints[0].url",
        ),
        (
            "      - {name: a, url: 'http://x/', format: dockerhub, events: [mount]}\n",
            "registry.webhooks.endpoints[0].events",
        ),
        (
            "      - {name: a, url: 'http://x/', retries: 3}\n",
            "retries",
        ),
    ] {
        let err = Settings::parse(&format!("{base}{endpoint}"), path, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err} should name {key}");
        assert!(err.contains("registry.yaml"), "{err}");
    }
    let ok = Settings::parse(
        &format!("{base}      - {{name: a, url: 'http://x/'}}\n"),
        path,
        |_| None,
    )
    .unwrap();
    assert_eq!(ok.webhooks.queue_dir, Path::new("/data/_webhooks"));
    assert_eq!(ok.webhooks.endpoints.len(), 1);
}
