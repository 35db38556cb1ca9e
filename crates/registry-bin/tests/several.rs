//! Several `speculum-registry serve` processes on one S3 bucket, behind
//! haproxy, as a site runs them for capacity and for restarts without
//! downtime: every process has the same token secret and users, its own port
//! and its own webhook queue on local disk. Real stores (Swift by default,
//! Ceph RGW too: each scenario runs on both), real clients (skopeo), the
//! binary as built. Everything binds 127.0.0.1; every process started here
//! is stopped by its PID, and every wait is bounded.
//!
//! What holds across processes:
//! - an upload session started on one process continues on any other, and a
//!   manifest pushed through one is served by all at once;
//! - a process killed in the middle of a push leaves nothing partial behind,
//!   and the client's retry through the balancer succeeds;
//! - one garbage collection at a time across processes (the store's lease),
//!   and a collection never removes what another process just wrote;
//! - each process delivers the webhook events of the pushes it took, once,
//!   from its own queue;
//! - each process's `/metrics` counts its own requests.
//!
//! The example in `examples/several-processes/` is run here too, so the
//! README's instructions keep working.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use speculum_oci::Digest;
use speculum_testkit::http::{Response, request};
use speculum_testkit::{
    CmdOutput, DEFAULT_TIMEOUT, Haproxy, Image, ImageSpec, S3Store, free_port, random_bytes, run,
};
use tempfile::TempDir;

mod common;

use common::{BIN, SECRET, Serve, ZUUL_PW, files_under, make_tls};

/// The user every process knows, as skopeo's `--creds`.
const CREDS: &str = "zuul:pw";
/// How long a wait for something asynchronous (a delivery, a health check) may take.
const WAIT: Duration = Duration::from_secs(30);

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

// ---- the processes ------------------------------------------------------

/// `n` serve processes on one fresh bucket of `store`, and haproxy in front.
struct Cluster {
    dir: TempDir,
    store: &'static S3Store,
    bucket: String,
    configs: Vec<PathBuf>,
    serves: Vec<Serve>,
    proxy: Haproxy,
}

impl Cluster {
    /// Starts `n` processes whose configs end with `extra` (YAML under
    /// `registry:`, indented two spaces; `{dir}` is replaced by the process's
    /// own directory), then haproxy, and waits until haproxy sees them up.
    fn start(store: &'static S3Store, n: usize, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let bucket = store.fresh_bucket("several");
        std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("s3-key-id"), store.access_key_id()).unwrap();
        std::fs::write(dir.path().join("s3-secret"), store.secret_access_key()).unwrap();
        let mut configs = Vec::new();
        let mut serves = Vec::new();
        for i in 0..n {
            let own = dir.path().join(format!("p{i}"));
            std::fs::create_dir_all(&own).unwrap();
            let port = free_port();
            let config = own.join("registry.yaml");
            let text = format!(
                "registry:\n  address: 127.0.0.1\n  port: {port}\n  secret-file: ../secret\n  \
                 users: [{{name: zuul, pass: pw, access: write}}]\n  \
                 storage:\n    driver: s3\n    bucket: {bucket}\n    endpoint: {endpoint}\n    \
                 region: {region}\n    prefix: registry\n    path-style: true\n    \
                 access-key-id-file: ../s3-key-id\n    secret-access-key-file: ../s3-secret\n{extra}",
                endpoint = store.endpoint(),
                region = store.region(),
                extra = extra.replace("{dir}", &own.display().to_string()),
            );
            std::fs::write(&config, text).unwrap();
            serves.push(Serve::start(&config, port, &[]));
            configs.push(config);
        }
        let ports: Vec<u16> = serves.iter().map(|s| s.port).collect();
        let proxy = Haproxy::start(&ports);
        proxy.wait_for_states(&vec!["UP"; n], WAIT);
        Cluster {
            dir,
            store,
            bucket,
            configs,
            serves,
            proxy,
        }
    }

    fn ports(&self) -> Vec<u16> {
        self.serves.iter().map(|s| s.port).collect()
    }

    /// The last lines of every log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, serve) in self.serves.iter().enumerate() {
            out.push_str(&format!("--- serve p{i} (port {}) ---\n", serve.port));
            out.push_str(&tail(&serve.log(), 40));
        }
        out.push_str("--- haproxy ---\n");
        out.push_str(&tail(&self.proxy.log(), 40));
        out.push_str(&format!(
            "--- the {} store's logs are in {} ---\n",
            self.store.store(),
            self.store.dir().join("log").display()
        ));
        out
    }

    /// SIGTERM to each process still running: each must exit cleanly.
    fn stop(self) {
        for serve in self.serves {
            if serve.child.is_some() {
                serve.stop();
            }
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

/// `kill -9` the process of `serve`, and reap it.
fn kill_9(serve: &mut Serve) {
    let mut child = serve.child.take().unwrap();
    let out = run(
        Command::new("kill").args(["-9", &child.id().to_string()]),
        Duration::from_secs(10),
    );
    assert!(out.success(), "{}", out.describe());
    child.wait().unwrap();
}

// ---- requests -------------------------------------------------------------

/// One request as `zuul` (HTTP Basic, which every endpoint takes).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(port, Some(ZUUL_PW), method, path, headers, body)
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// A `Location` header as a path (with its query, if any).
fn location_path(r: &Response) -> String {
    let location = r
        .header("location")
        .unwrap_or_else(|| panic!("no Location in {:?}", r.headers));
    if location.starts_with('/') {
        location.to_string()
    } else {
        format!("/{}", location.splitn(4, '/').nth(3).unwrap())
    }
}

/// `path` with `key=value` added to its query.
fn with_query(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{key}={value}")
}

/// The value of one sample of a process's `/metrics` (0 when absent).
fn metric(port: u16, sample: &str) -> u64 {
    let r = request(port, None, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "/metrics on {port}: {}", text(&r));
    text(&r)
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn requests_total(route: &str, method: &str, status: u16) -> String {
    format!(
        "speculum_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
    )
}

// ---- skopeo -------------------------------------------------------------------

/// skopeo copy of `image` to `docker://HOST/NAME` over plain HTTP.
fn push(image: &Image, host: &str, name: &str) -> CmdOutput {
    let dest = format!("docker://{host}/{name}");
    common::push(&image.oci_ref(), &dest, Some(CREDS), None)
}

/// skopeo copy of `docker://HOST/NAME` into a new OCI layout under `dir`;
/// skopeo checks every blob's digest as it reads it.
fn pull(host: &str, name: &str, dir: &Path) -> CmdOutput {
    let layout = tempfile::tempdir_in(dir).unwrap().keep();
    let src = format!("docker://{host}/{name}");
    let dest = format!("oci:{}:pulled", layout.display());
    common::pull(&src, &dest, Some(CREDS), None)
}

/// skopeo inspect: the manifest digest `docker://HOST/NAME` has.
fn inspect(host: &str, name: &str) -> CmdOutput {
    common::inspect(&format!("docker://{host}/{name}"), Some(CREDS), None)
}

fn host(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

// ---- what a process serves ------------------------------------------------

/// What is wrong with `repo:reference` as the process on `port` serves it,
/// if anything: the manifest must parse and every blob it names must be
/// there, whole (digest and size checked).
fn check_complete(port: u16, repo: &str, reference: &str) -> Option<String> {
    let accept = [(
        "Accept",
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
    )];
    let r = http(
        port,
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &accept,
        b"",
    );
    if r.status != 200 {
        return Some(format!(
            "{repo}:{reference} on {port}: manifest {} {}",
            r.status,
            text(&r)
        ));
    }
    let manifest: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(e) => return Some(format!("{repo}:{reference} on {port}: manifest {e}")),
    };
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(manifest["layers"].as_array().cloned().unwrap_or_default());
    for d in descriptors {
        let digest = d["digest"].as_str().unwrap_or_default();
        let size = d["size"].as_u64().unwrap_or_default();
        let blob = http(port, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"");
        if blob.status != 200
            || Digest::sha256(&blob.body).to_string() != digest
            || blob.body.len() as u64 != size
        {
            return Some(format!(
                "{repo}:{reference} on {port}: blob {digest}: {}, {} of {size} bytes",
                blob.status,
                blob.body.len()
            ));
        }
    }
    None
}

/// Every repository of the catalog and every tag of each, as the process on
/// `port` lists them.
fn listed(port: u16) -> BTreeMap<String, Vec<String>> {
    let r = http(port, "GET", "/v2/_catalog", &[], b"");
    assert_eq!(r.status, 200, "catalog on {port}: {}", text(&r));
    let catalog: Value = serde_json::from_slice(&r.body).unwrap();
    let mut out = BTreeMap::new();
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap().to_string();
        let r = http(port, "GET", &format!("/v2/{repo}/tags/list"), &[], b"");
        let tags: Vec<String> = if r.status == 200 {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["tags"]
                .as_array()
                .map(|t| t.iter().map(|t| t.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        } else {
            assert_eq!(r.status, 404, "tags of {repo} on {port}: {}", text(&r));
            Vec::new()
        };
        out.insert(repo, tags);
    }
    out
}

/// Panics unless every tag the process on `port` lists is a complete image.
fn assert_nothing_partial(port: u16, logs: impl Fn() -> String) {
    for (repo, tags) in listed(port) {
        for tag in tags {
            if let Some(problem) = check_complete(port, &repo, &tag) {
                panic!(
                    "a listed tag is not a complete image: {problem}\n{}",
                    logs()
                );
            }
        }
    }
}

// ---- scenario 1: one session, several processes ----------------------------

/// A chunked upload started on one process goes on on a second, is checked
/// on the third and finished on the first (each request sent straight to a
/// process, as a balancer may route them); every process then serves the
/// blob. A manifest pushed to one process is pulled from the others at once,
/// and a push through haproxy from each process directly.
fn upload_and_push_move_between_processes(store: &'static S3Store) {
    let c = Cluster::start(store, 3, "");
    let ports = c.ports();
    let (a, b, cc) = (ports[0], ports[1], ports[2]);
    let repo = "moving/app";
    // A first chunk over 5 MiB (a multipart part), a second that stays in
    // the tail, and a last one with the final PUT.
    let data = random_bytes(13 << 20, 1);
    let (one, two) = (6 << 20, 9 << 20);
    let digest = Digest::sha256(&data);

    let r = http(a, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    assert_eq!(r.status, 202, "POST on A: {}\n{}", text(&r), c.logs());
    let at_a = location_path(&r);
    let range = format!("0-{}", one - 1);
    let r = http(
        b,
        "PATCH",
        &at_a,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
        ],
        &data[..one],
    );
    assert_eq!(r.status, 202, "PATCH on B: {}\n{}", text(&r), c.logs());
    assert_eq!(r.header("range"), Some(range.as_str()));
    let at_b = location_path(&r);
    let range = format!("{one}-{}", two - 1);
    let r = http(
        cc,
        "PATCH",
        &at_b,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
        ],
        &data[one..two],
    );
    assert_eq!(r.status, 202, "PATCH on C: {}\n{}", text(&r), c.logs());
    let so_far = format!("0-{}", two - 1);
    assert_eq!(r.header("range"), Some(so_far.as_str()));
    let at_c = location_path(&r);
    // Every process reports the session's progress the same way.
    for port in [a, b, cc] {
        let r = http(port, "GET", &at_c, &[], b"");
        assert_eq!(
            r.status,
            204,
            "status on {port}: {}\n{}",
            text(&r),
            c.logs()
        );
        assert_eq!(r.header("range"), Some(so_far.as_str()), "on {port}");
    }
    let r = http(
        a,
        "PUT",
        &with_query(&at_c, "digest", &digest.to_string()),
        &[("Content-Type", "application/octet-stream")],
        &data[two..],
    );
    assert_eq!(r.status, 201, "PUT on A: {}\n{}", text(&r), c.logs());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    for port in [a, b, cc, c.proxy.port()] {
        let r = http(port, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"");
        assert_eq!(r.status, 200, "blob on {port}");
        assert!(
            r.body == data,
            "blob on {port}: {} bytes differ",
            r.body.len()
        );
        // The finished session is gone everywhere.
        let r = http(port, "GET", &at_c, &[], b"");
        assert_eq!(r.status, 404, "finished session on {port}: {}", text(&r));
    }

    // A push to one process, pulled from every other at once.
    let images = c.dir.path().join("images");
    let image = ImageSpec::new(&[300_000, 40_000])
        .seed(11)
        .write_layout(&images.join("one"), "v1");
    let out = push(&image, &host(b), "moving/pushed:v1");
    assert!(out.success(), "{}\n{}", out.describe(), c.logs());
    for port in [a, cc, c.proxy.port()] {
        let out = inspect(&host(port), "moving/pushed:v1");
        assert!(out.success(), "{}\n{}", out.describe(), c.logs());
        assert_eq!(out.stdout.trim(), image.manifest.to_string());
        let out = pull(&host(port), "moving/pushed:v1", c.dir.path());
        assert!(out.success(), "pull from {port}: {}", out.describe());
    }
    // Through haproxy (every request to the next process), then from each.
    let image = ImageSpec::new(&[7 << 20, 50_000])
        .seed(12)
        .write_layout(&images.join("two"), "v1");
    let out = push(&image, &c.proxy.host(), "moving/balanced:v1");
    assert!(out.success(), "{}\n{}", out.describe(), c.logs());
    for port in [a, b, cc] {
        let out = inspect(&host(port), "moving/balanced:v1");
        assert!(out.success(), "{}\n{}", out.describe(), c.logs());
        assert_eq!(out.stdout.trim(), image.manifest.to_string());
        let out = pull(&host(port), "moving/balanced:v1", c.dir.path());
        assert!(out.success(), "pull from {port}: {}", out.describe());
        assert_eq!(check_complete(port, "moving/balanced", "v1"), None);
    }
    // Each process took part of the balanced push.
    for port in [a, b, cc] {
        let uploads = metric(port, &requests_total("upload", "PUT", 201))
            + metric(port, &requests_total("upload", "PATCH", 202))
            + metric(port, &requests_total("uploads", "POST", 202));
        assert!(uploads > 0, "no upload request reached {port}");
    }
    c.stop();
}

// ---- scenario 2: kill -9 during a push ----------------------------------------

/// A process killed with SIGKILL while it receives a layer of a push through
/// haproxy: the client's retry through haproxy succeeds (haproxy stops
/// sending to the dead process), the image is whole on each remaining
/// process, and no process lists anything partial.
fn killed_process_mid_push_leaves_nothing_partial(store: &'static S3Store) {
    let mut c = Cluster::start(store, 3, "");
    let images = c.dir.path().join("images");
    // Something complete before the crash, which must stay so.
    let before = ImageSpec::new(&[200_000])
        .seed(20)
        .write_layout(&images.join("before"), "v1");
    let out = push(&before, &c.proxy.host(), "crash/before:v1");
    assert!(out.success(), "{}\n{}", out.describe(), c.logs());
    // Six layers of 12 MiB: each PATCH takes a while, and every process
    // gets some of them.
    let image = ImageSpec::new(&[12 << 20; 6])
        .seed(21)
        .write_layout(&images.join("big"), "v1");
    let proxy_host = c.proxy.host();
    let first = {
        let image = image.clone();
        let proxy_host = proxy_host.clone();
        thread::spawn(move || push(&image, &proxy_host, "crash/big:v1"))
    };
    // Kill the first process seen receiving a layer's bytes: an upload
    // request in flight, and request bytes arriving since the last look.
    let ports = c.ports();
    let bytes_in = |port| metric(port, "speculum_http_request_bytes_total");
    let mut last: Vec<u64> = ports.iter().map(|&p| bytes_in(p)).collect();
    let start = Instant::now();
    let victim = loop {
        let now: Vec<u64> = ports.iter().map(|&p| bytes_in(p)).collect();
        let streaming = (0..ports.len()).find(|&i| {
            now[i] > last[i] && metric(ports[i], "speculum_upload_requests_in_flight") > 0
        });
        if let Some(i) = streaming {
            break i;
        }
        last = now;
        assert!(
            !first.is_finished(),
            "the push ended before any process was seen receiving an upload: \
             make the image bigger\n{}",
            c.logs()
        );
        assert!(start.elapsed() < DEFAULT_TIMEOUT, "no upload in flight");
        thread::sleep(Duration::from_millis(5));
    };
    kill_9(&mut c.serves[victim]);
    let killed_after = start.elapsed();
    let first = first.join().unwrap();
    eprintln!(
        "{}: killed p{victim} {killed_after:.2?} into the push; the first push {}",
        store.store(),
        if first.success() {
            "succeeded anyway".to_string()
        } else {
            format!("failed: {}", tail(&first.stderr, 3))
        }
    );
    // The client's retry, through haproxy at once.
    let retry = push(&image, &proxy_host, "crash/big:v1");
    assert!(retry.success(), "retry: {}\n{}", retry.describe(), c.logs());
    let mut want = vec!["UP"; 3];
    want[victim] = "DOWN";
    c.proxy.wait_for_states(&want, WAIT);

    let alive: Vec<u16> = (0..3)
        .filter(|&i| i != victim)
        .map(|i| c.serves[i].port)
        .collect();
    for &port in alive.iter().chain([&c.proxy.port()]) {
        let out = inspect(&host(port), "crash/big:v1");
        assert!(out.success(), "{}\n{}", out.describe(), c.logs());
        assert_eq!(out.stdout.trim(), image.manifest.to_string());
        assert_eq!(check_complete(port, "crash/big", "v1"), None);
        assert_eq!(check_complete(port, "crash/before", "v1"), None);
        assert_nothing_partial(port, || c.logs());
        let listed = listed(port);
        assert_eq!(
            listed.keys().collect::<Vec<_>>(),
            ["crash/before", "crash/big"],
            "on {port}"
        );
    }
    let out = pull(&c.proxy.host(), "crash/big:v1", c.dir.path());
    assert!(out.success(), "{}", out.describe());
    // The killed process comes back on the same config and serves the same.
    let config = c.configs[victim].clone();
    let port = c.serves[victim].port;
    c.serves[victim] = Serve::start(&config, port, &[]);
    assert_eq!(check_complete(port, "crash/big", "v1"), None);
    assert_nothing_partial(port, || c.logs());
    c.proxy.wait_for_states(&["UP"; 3], WAIT);
    c.stop();
}

// ---- scenario 3: one collector at a time ----------------------------------

/// A small image (a config and a layer, monolithic uploads, the manifest by
/// tag) pushed to `port`: its manifest and blobs, or `None` if a step was
/// refused.
struct Pushed {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
}

fn push_small_image(port: u16, repo: &str, tag: &str, seed: &str) -> Option<Pushed> {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
    let layer = format!("layer bytes of {seed} ").repeat(40).into_bytes();
    let mut blobs = Vec::new();
    for data in [config.into_bytes(), layer] {
        let digest = Digest::sha256(&data);
        let r = http(
            port,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            &data,
        );
        if r.status != 201 {
            eprintln!("blob of {repo}:{tag} on {port}: {} {}", r.status, text(&r));
            return None;
        }
        blobs.push((digest, data.len()));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blobs[0].0, "size": blobs[0].1,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": blobs[1].0, "size": blobs[1].1,
        }],
    }))
    .unwrap();
    let r = http(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    if r.status != 201 {
        eprintln!("manifest {repo}:{tag} on {port}: {} {}", r.status, text(&r));
        return None;
    }
    Some(Pushed {
        repo: repo.to_string(),
        tag: tag.to_string(),
        manifest,
    })
}

/// What is wrong with a pushed image on `port`, if anything.
fn check_pushed(port: u16, image: &Pushed) -> Option<String> {
    let digest = Digest::sha256(&image.manifest).to_string();
    let r = http(
        port,
        "GET",
        &format!("/v2/{}/manifests/{digest}", image.repo),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    if r.status != 200 || r.body != image.manifest {
        return Some(format!(
            "{}@{digest} on {port}: {} {}",
            image.repo,
            r.status,
            text(&r)
        ));
    }
    check_complete(port, &image.repo, &image.tag)
}

/// `prune --json --config CONFIG`.
fn prune(config: &Path) -> CmdOutput {
    run(
        Command::new(BIN)
            .args(["prune", "--json", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn"),
        DEFAULT_TIMEOUT,
    )
}

const ANOTHER: &str = "another garbage collection is running";

/// An untagged manifest in `repo`, pushed through `port`: garbage once older
/// than the grace period. Its digest.
fn make_garbage(port: u16, repo: &str, seed: &str) -> String {
    let image = push_small_image(port, repo, "gone", seed).unwrap();
    let r = http(
        port,
        "DELETE",
        &format!("/v2/{repo}/manifests/gone"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{}", text(&r));
    Digest::sha256(&image.manifest).to_string()
}

/// Two `prune`s started together from two processes' configs: exactly one
/// collects (and removes the garbage), the other says another collection
/// runs and removes nothing. Once it has exited, a prune from a third
/// process collects.
fn one_collection_at_a_time(store: &'static S3Store) {
    let c = Cluster::start(store, 3, "  gc: {grace: 2s}\n");
    let ports = c.ports();
    let kept = push_small_image(ports[0], "gc/app", "kept", "kept").unwrap();
    let garbage = make_garbage(ports[1], "gc/app", "garbage-1");
    thread::sleep(Duration::from_secs(3));

    let children: Vec<_> = c.configs[..2]
        .iter()
        .map(|config| {
            Command::new(BIN)
                .args(["prune", "--json", "--config"])
                .arg(config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    let mut outcomes = Vec::new();
    for mut child in children {
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("prune did not finish within {DEFAULT_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        outcomes.push((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let collected: Vec<_> = outcomes.iter().filter(|o| o.0 == Some(0)).collect();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| o.0 == Some(1) && o.2.contains(ANOTHER))
        .collect();
    assert!(
        collected.len() == 1 && refused.len() == 1,
        "two prunes at once: want one collecting and one refused, got {outcomes:#?}\n{}",
        c.logs()
    );
    assert!(
        refused[0].1.is_empty(),
        "the refused prune reported {}",
        refused[0].1
    );
    let report: Value = serde_json::from_str(&collected[0].1).unwrap();
    let removed: Vec<&str> = report["manifests_deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [garbage.as_str()], "{report}");
    for &port in &ports {
        let r = http(
            port,
            "GET",
            &format!("/v2/gc/app/manifests/{garbage}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 404, "the garbage is still served by {port}");
        assert_eq!(check_pushed(port, &kept), None);
    }

    // The collection is over and its process gone: the next one, from a
    // third process, collects (the lease was let go of, not left to expire).
    let out = prune(&c.configs[2]);
    if !out.success() {
        let lease = run(
            &mut c
                .store
                .curl("GET", &format!("/{}/registry/collector", c.bucket)),
            Duration::from_secs(60),
        );
        panic!(
            "a prune after the last one exited was refused: {}\nthe lease in the bucket: {}",
            out.describe(),
            lease.describe()
        );
    }

    c.stop();
}

/// Pushes through two processes while the third collects every second
/// (`gc.interval`, grace 4 s): every acknowledged push stays whole on every
/// process, and garbage made meanwhile is still collected.
fn collection_never_loses_another_process_push(store: &'static S3Store) {
    let mut c = Cluster::start(store, 2, "  gc: {grace: 4s}\n");
    // The collecting process, on the same bucket.
    let own = c.dir.path().join("p2");
    std::fs::create_dir_all(&own).unwrap();
    let port = free_port();
    let config = own.join("registry.yaml");
    let text = std::fs::read_to_string(&c.configs[0])
        .unwrap()
        .replace(
            &format!("port: {}", c.serves[0].port),
            &format!("port: {port}"),
        )
        .replace("gc: {grace: 4s}", "gc: {interval: 1s, grace: 4s}");
    std::fs::write(&config, text).unwrap();
    c.serves.push(Serve::start(&config, port, &[]));
    c.configs.push(config);
    let ports = c.ports();
    let runs = |port| metric(port, "speculum_gc_runs_total");

    let done = Arc::new(AtomicBool::new(false));
    let pusher = {
        let done = done.clone();
        let ports = ports.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut pushed = Vec::new();
            let mut refused = 0;
            let mut i = 0;
            while Instant::now() < deadline {
                let port = ports[i % 2];
                let repo = format!("gc/r{}", i % 4);
                match push_small_image(port, &repo, &format!("t{i}"), &format!("pushed-{i}")) {
                    Some(image) => pushed.push(image),
                    None => refused += 1,
                }
                i += 1;
                thread::sleep(Duration::from_millis(50));
            }
            done.store(true, Ordering::SeqCst);
            (pushed, refused)
        })
    };
    // Fresh garbage now and then, which a later collection must take.
    let mut garbage = Vec::new();
    let runs_before = runs(ports[2]);
    while !done.load(Ordering::SeqCst) {
        garbage.push(make_garbage(
            ports[0],
            "gc/app",
            &format!("g{}", garbage.len()),
        ));
        thread::sleep(Duration::from_secs(3));
    }
    let (pushed, refused) = pusher.join().unwrap();
    // Past the grace period, with nothing in flight, a few more rounds.
    thread::sleep(Duration::from_secs(5));
    let start = Instant::now();
    let target = runs(ports[2]) + 3;
    while runs(ports[2]) < target {
        assert!(
            start.elapsed() < WAIT,
            "the scheduled collection stopped\n{}",
            c.logs()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let rounds = runs(ports[2]) - runs_before;
    eprintln!(
        "{}: {} pushes acknowledged, {refused} refused, {rounds} collections beside them",
        store.store(),
        pushed.len()
    );
    assert_eq!(
        metric(ports[2], "speculum_gc_failures_total"),
        0,
        "{}",
        c.logs()
    );
    assert!(rounds >= 5, "only {rounds} collections ran");
    assert!(pushed.len() >= 8, "only {} pushes", pushed.len());
    let mut lost = Vec::new();
    for &port in &ports {
        for image in &pushed {
            lost.extend(check_pushed(port, image));
        }
        for digest in &garbage {
            let r = http(
                port,
                "GET",
                &format!("/v2/gc/app/manifests/{digest}"),
                &[],
                b"",
            );
            assert_eq!(r.status, 404, "garbage {digest} still served by {port}");
        }
        assert_nothing_partial(port, || c.logs());
    }
    assert!(
        lost.is_empty(),
        "acknowledged pushes lost:\n{}\n{}",
        lost.join("\n"),
        c.logs()
    );
    c.stop();
}

// ---- scenario 4: webhooks ------------------------------------------------------

/// A webhook receiver on loopback: records each request's body and
/// `X-Speculum-Delivery`, answers 200. Stops when dropped.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (got.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Some(delivery) = read_delivery(stream) {
                                got.lock().unwrap().push(delivery);
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Receiver {
            port,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> Vec<(String, Value)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request and answers 200: its delivery id and JSON body.
fn read_delivery(mut stream: TcpStream) -> Option<(String, Value)> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let length: usize = header("content-length")?.parse().ok()?;
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = serde_json::from_slice(&raw[head_end..head_end + length]).ok()?;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some((header("x-speculum-delivery").unwrap_or_default(), body))
}

/// Pushes through haproxy: each push event reaches the receiver exactly
/// once, sent by the process that took the manifest (its own queue, on its
/// own disk, empty once delivered; its own counters).
fn webhooks_are_per_process_and_delivered_once(store: &'static S3Store) {
    let receiver = Receiver::start();
    let extra = format!(
        "  webhooks:\n    queue-dir: {{dir}}/webhooks\n    endpoints:\n      \
         - {{name: counter, url: 'http://127.0.0.1:{}/hook', events: [push], backoff: 1s}}\n",
        receiver.port
    );
    let c = Cluster::start(store, 3, &extra);
    let ports = c.ports();
    let image = ImageSpec::new(&[100_000])
        .seed(40)
        .write_layout(&c.dir.path().join("image"), "v1");
    let mut pushed = BTreeSet::new();
    for i in 0..7 {
        let name = (format!("hooks/r{}", i % 3), format!("t{i}"));
        let out = push(&image, &c.proxy.host(), &format!("{}:{}", name.0, name.1));
        assert!(out.success(), "{}\n{}", out.describe(), c.logs());
        pushed.insert(name);
    }
    let start = Instant::now();
    while receiver.got().len() < pushed.len() {
        assert!(
            start.elapsed() < WAIT,
            "{} of {} events arrived: {:#?}\n{}",
            receiver.got().len(),
            pushed.len(),
            receiver.got(),
            c.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Anything sent twice would arrive within a few backoffs.
    thread::sleep(Duration::from_secs(3));
    let got = receiver.got();
    let mut seen = BTreeMap::new();
    let mut deliveries = BTreeSet::new();
    let mut by_source: BTreeMap<String, u64> = BTreeMap::new();
    for (delivery, body) in &got {
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{body}");
        let event = &events[0];
        assert_eq!(event["action"], "push", "{body}");
        assert_eq!(event["target"]["digest"], image.manifest.to_string());
        let name = (
            event["target"]["repository"].as_str().unwrap().to_string(),
            event["target"]["tag"].as_str().unwrap().to_string(),
        );
        *seen.entry(name).or_insert(0) += 1;
        assert!(
            deliveries.insert(delivery.clone()),
            "delivery {delivery} twice"
        );
        let source = event["source"]["addr"].as_str().unwrap().to_string();
        *by_source.entry(source).or_default() += 1;
    }
    let once: BTreeMap<_, _> = pushed.iter().map(|n| (n.clone(), 1)).collect();
    assert_eq!(seen, once, "events per pushed tag");
    // Each process sent the events of the manifests it took, no others.
    for (i, &port) in ports.iter().enumerate() {
        let manifests = metric(port, &requests_total("manifest", "PUT", 201));
        let sent = metric(port, "speculum_webhook_sent_total{endpoint=\"counter\"}");
        let from_here = by_source
            .iter()
            .filter(|(addr, _)| addr.ends_with(&format!(":{port}")))
            .map(|(_, n)| *n)
            .sum::<u64>();
        assert_eq!(
            (sent, from_here),
            (manifests, manifests),
            "p{i}: sent, received from it, manifests it took ({by_source:?})"
        );
        let queue = c.dir.path().join(format!("p{i}/webhooks"));
        assert!(queue.is_dir(), "{} missing", queue.display());
        // Pending deliveries are `*.json` files (given-up ones under dead/).
        let left: Vec<_> = files_under(&queue)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "json"))
            .collect();
        assert!(left.is_empty(), "p{i} still holds {left:?}");
    }
    assert_eq!(by_source.values().sum::<u64>(), pushed.len() as u64);
    // Nothing webhook-related in the bucket: the queues are local.
    let listing = run(
        &mut c.store.curl("GET", &format!("/{}?list-type=2", c.bucket)),
        Duration::from_secs(60),
    );
    assert!(listing.success(), "{}", listing.describe());
    assert!(
        !listing.stdout.contains("webhook"),
        "webhook files in the bucket: {}",
        listing.stdout
    );
    c.stop();
}

// ---- scenario 5: metrics ------------------------------------------------------------

/// Each process's `/metrics` answers and counts the requests it served:
/// different numbers of catalog requests to each are counted exactly, and
/// haproxy's health checks reach every process.
fn metrics_count_each_process_own_requests(store: &'static S3Store) {
    let c = Cluster::start(store, 3, "");
    let ports = c.ports();
    let catalog = requests_total("catalog", "GET", 200);
    for &port in &ports {
        assert_eq!(metric(port, &catalog), 0, "{port} before any request");
    }
    for (i, &port) in ports.iter().enumerate() {
        for _ in 0..(i + 1) * 2 {
            let r = http(port, "GET", "/v2/_catalog", &[], b"");
            assert_eq!(r.status, 200, "{}", text(&r));
        }
    }
    for (i, &port) in ports.iter().enumerate() {
        assert_eq!(metric(port, &catalog), (i as u64 + 1) * 2, "p{i}");
        // haproxy's health checks (anonymous GET /v2/, answered 401), every
        // 500 ms from a random start.
        let checks = requests_total("base", "GET", 401);
        let start = Instant::now();
        while metric(port, &checks) == 0 {
            assert!(start.elapsed() < WAIT, "no health check reached p{i}");
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            metric(port, &requests_total("metrics", "GET", 200)) > 0,
            "p{i}"
        );
    }
    // Requests through haproxy are counted by the processes they reached.
    for _ in 0..9 {
        let r = http(c.proxy.port(), "GET", "/v2/_catalog", &[], b"");
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    let counts: Vec<u64> = ports.iter().map(|&p| metric(p, &catalog)).collect();
    assert_eq!(counts.iter().sum::<u64>(), 2 + 4 + 6 + 9, "{counts:?}");
    for (i, n) in counts.iter().enumerate() {
        assert_eq!(*n, (i as u64 + 1) * 2 + 3, "round robin: {counts:?}");
    }
    c.stop();
}

// ---- every scenario on both stores -------------------------------------------------

macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod swift {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(speculum_testkit::S3Store::swift());
                }
            )*
        }
        mod ceph {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(speculum_testkit::S3Store::ceph());
                }
            )*
        }
    };
}

on_both_stores!(
    upload_and_push_move_between_processes,
    killed_process_mid_push_leaves_nothing_partial,
    one_collection_at_a_time,
    collection_never_loses_another_process_push,
    webhooks_are_per_process_and_delivered_once,
    metrics_count_each_process_own_requests,
);

// ---- the example ---------------------------------------------------------------

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/several-processes")
}

/// `haproxy -c` accepts the example config as committed, with only its
/// certificate path pointed at a real file.
#[test]
fn example_haproxy_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let tls = make_tls(dir.path());
    let pem = dir.path().join("registry.pem");
    let mut both = std::fs::read(&tls.cert).unwrap();
    both.extend(std::fs::read(&tls.key).unwrap());
    std::fs::write(&pem, both).unwrap();
    let text = std::fs::read_to_string(example_dir().join("haproxy.cfg"))
        .unwrap()
        .replace("/etc/haproxy/registry.pem", &pem.display().to_string());
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, text).unwrap();
    let out = Haproxy::check(&config);
    assert!(out.success(), "{}", out.describe());
}

/// The example, run: two processes from `serve.yaml` (ports, paths and the
/// store filled in), haproxy from `haproxy.cfg` terminating TLS in front of
/// them; skopeo pushes and pulls through it with the token flow.
#[test]
fn example_runs_as_the_readme_says() {
    let store = S3Store::swift();
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let tls = make_tls(dir.path());
    let pem = dir.path().join("registry.pem");
    let mut both = std::fs::read(&tls.cert).unwrap();
    both.extend(std::fs::read(&tls.key).unwrap());
    std::fs::write(&pem, both).unwrap();
    std::fs::write(etc.join("secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(etc.join("s3-access-key-id"), store.access_key_id()).unwrap();
    std::fs::write(etc.join("s3-secret-access-key"), store.secret_access_key()).unwrap();
    std::fs::write(etc.join("htpasswd"), common::htpasswd_line("zuul", "pw")).unwrap();
    let bucket = store.fresh_bucket("example");
    let proxy_port = free_port();
    let serve_text = std::fs::read_to_string(example_dir().join("serve.yaml")).unwrap();
    let mut serves = Vec::new();
    let mut ports = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let own = dir.path().join(format!("p{i}"));
        std::fs::create_dir_all(&own).unwrap();
        let text = serve_text
            .replace("port: 5001", &format!("port: {port}"))
            .replace(
                "https://registry.example.org:5000",
                &format!("https://localhost:{proxy_port}"),
            )
            .replace("/etc/speculum/", &format!("{}/", etc.display()))
            .replace("/var/lib/speculum/", &format!("{}/", own.display()))
            .replace("bucket: speculum", &format!("bucket: {bucket}"))
            .replace("http://127.0.0.1:8080", store.endpoint())
            .replace("region: us-east-1", &format!("region: {}", store.region()));
        let config = own.join("serve.yaml");
        std::fs::write(&config, text).unwrap();
        serves.push(Serve::start(&config, port, &[]));
        ports.push(port);
    }
    // The example balances over three processes; two run here, the third
    // is down, as during a rolling restart.
    let third = free_port();
    let proxy_text = std::fs::read_to_string(example_dir().join("haproxy.cfg"))
        .unwrap()
        .replace("*:5000", &format!("127.0.0.1:{proxy_port}"))
        .replace("/etc/haproxy/registry.pem", &pem.display().to_string())
        .replace("127.0.0.1:5001", &host(ports[0]))
        .replace("127.0.0.1:5002", &host(ports[1]))
        .replace("127.0.0.1:5003", &host(third));
    let proxy = Haproxy::start_config(&proxy_text, proxy_port);
    let image = ImageSpec::new(&[6 << 20, 30_000])
        .seed(50)
        .write_layout(&dir.path().join("image"), "v1");
    let target = format!("docker://localhost:{proxy_port}/example/app:v1");
    let logs = || {
        let mut s = String::new();
        for serve in &serves {
            s.push_str(&tail(&serve.log(), 30));
        }
        s.push_str(&tail(&proxy.log(), 30));
        s
    };
    let out = common::push(&image.oci_ref(), &target, Some(CREDS), Some(&tls.cert_dir));
    assert!(out.success(), "{}\n{}", out.describe(), logs());
    let out = common::inspect(&target, Some(CREDS), Some(&tls.cert_dir));
    assert!(out.success(), "{}\n{}", out.describe(), logs());
    assert_eq!(out.stdout.trim(), image.manifest.to_string());
    for &port in &ports {
        assert_eq!(check_complete(port, "example/app", "v1"), None);
    }
    drop(proxy);
    for serve in serves {
        serve.stop();
    }
}
