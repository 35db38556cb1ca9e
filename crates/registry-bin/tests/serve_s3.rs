//! `speculum-registry serve` and `prune` on S3 storage, end to end: the
//! binary as built, a config file naming a bucket of a real store (OpenStack
//! Swift through s3api with three replicas, and Ceph RGW, both started by
//! the testkit on loopback), real clients (skopeo, curl). Each case runs on
//! both stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use speculum_testkit::{
    CmdOutput, DEFAULT_TIMEOUT, ImageSpec, S3Store, free_port, require_tool, run, run_ok,
};

mod common;

use common::{BIN, Serve, Tls, htpasswd_line, make_tls};

/// The user every case signs in as.
const CREDS: &str = "zuul:pw";

/// A serve config on a fresh bucket of `store`, TLS on, user `zuul`/`pw`,
/// credentials in files; `extra` is appended to its `storage:` section.
struct S3Serve {
    config: PathBuf,
    port: u16,
    tls: Tls,
    bucket: String,
}

fn s3_serve(dir: &Path, store: &S3Store, extra: &str) -> S3Serve {
    let tls = make_tls(dir);
    let port = free_port();
    let bucket = store.fresh_bucket("serve");
    std::fs::write(dir.join("access-key"), store.access_key_id()).unwrap();
    std::fs::write(
        dir.join("secret-key"),
        format!("{}\n", store.secret_access_key()),
    )
    .unwrap();
    std::fs::write(dir.join("htpasswd"), htpasswd_line("zuul", "pw")).unwrap();
    let config = dir.join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  tls-cert: {}\n  tls-key: {}\n  \
             htpasswd: htpasswd\n  storage:\n    driver: s3\n    bucket: {bucket}\n    \
             endpoint: {}\n    region: {}\n    prefix: registry\n    \
             access-key-id-file: access-key\n    secret-access-key-file: secret-key\n{extra}",
            tls.cert.display(),
            tls.key.display(),
            store.endpoint(),
            store.region(),
        ),
    )
    .unwrap();
    S3Serve {
        config,
        port,
        tls,
        bucket,
    }
}

impl S3Serve {
    fn start(&self) -> Serve {
        Serve::start(&self.config, self.port, &[])
    }

    /// A reference by host name: the store is at 127.0.0.1, so a client
    /// following a redirect there does not send the registry's credentials.
    fn docker_ref(&self, name: &str) -> String {
        format!("docker://localhost:{}/{name}", self.port)
    }

    fn push(&self, image_ref: &str, name: &str) -> CmdOutput {
        common::push(
            image_ref,
            &self.docker_ref(name),
            Some(CREDS),
            Some(&self.tls.cert_dir),
        )
    }

    fn pull(&self, name: &str, dest: &Path) -> CmdOutput {
        common::pull(
            &self.docker_ref(name),
            &format!("oci:{}:pulled", dest.display()),
            Some(CREDS),
            Some(&self.tls.cert_dir),
        )
    }

    fn digest(&self, name: &str) -> String {
        let out = common::inspect(
            &self.docker_ref(name),
            Some(CREDS),
            Some(&self.tls.cert_dir),
        );
        assert!(out.success(), "{}", out.describe());
        out.stdout.trim().to_owned()
    }

    /// curl with the CA and `zuul:pw` as basic auth (the registry answers
    /// 401 with a token challenge; basic credentials on the request work).
    fn curl(&self, args: &[&str]) -> CmdOutput {
        require_tool("curl");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--cacert"])
            .arg(&self.tls.ca)
            .args(["-u", CREDS])
            .args(args);
        run(&mut cmd, DEFAULT_TIMEOUT)
    }
}

/// Three layers: small, one that fills a multipart part and a bit, one of
/// several parts, so uploads cross the 5 MiB part rule of both stores.
fn image(dir: &Path, seed: u64) -> speculum_testkit::Image {
    ImageSpec::new(&[300_000, 9 << 20, 21 << 20])
        .seed(seed)
        .write_layout(&dir.join(format!("img{seed}")), "v1")
}

/// Push, pull back byte for byte, restart, pull again: the store holds
/// everything and the server nothing.
fn push_pull_restart(store: &S3Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = s3_serve(dir.path(), store, "");
    let serve = s.start();
    let img = image(dir.path(), 11);
    let out = s.push(&img.oci_ref(), "org/app:v1");
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    let pushed = s.digest("org/app:v1");
    let pulled = dir.path().join("pulled");
    let out = s.pull("org/app:v1", &pulled);
    assert!(out.success(), "{}", out.describe());
    for layer in &img.layers {
        let blob = std::fs::read(pulled.join("blobs/sha256").join(layer.hex())).unwrap();
        assert_eq!(speculum_oci::Digest::sha256(&blob), *layer);
    }
    serve.stop();

    let serve = s.start();
    assert_eq!(s.digest("org/app:v1"), pushed);
    let catalog = s.curl(&[&format!("https://localhost:{}/v2/_catalog", s.port)]);
    assert!(catalog.stdout.contains("org/app"), "{}", catalog.describe());
    // The objects are in the bucket, under the prefix.
    let listed = store.curl(
        "GET",
        &format!("/{}?list-type=2&prefix=registry%2Fblobs%2F", s.bucket),
    );
    let listed = run_ok(&mut { listed });
    assert!(
        listed
            .stdout
            .contains(&format!("registry/blobs/sha256/{}", img.layers[2].hex())),
        "{}",
        listed.stdout
    );
    serve.stop();
}

/// With `redirect: true` a blob GET answers 307 to a pre-signed URL that
/// serves the blob without credentials, and skopeo pulls through it.
fn redirect_to_the_store(store: &S3Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = s3_serve(dir.path(), store, "    redirect: true\n");
    let serve = s.start();
    let img = image(dir.path(), 12);
    let out = s.push(&img.oci_ref(), "org/app:v1");
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    let layer = &img.layers[1];
    let url = format!("https://localhost:{}/v2/org/app/blobs/{layer}", s.port);
    let head = s.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &url,
    ]);
    let (status, location) = head.stdout.split_once(' ').unwrap();
    assert_eq!(status, "307", "{}", head.describe());
    assert!(location.starts_with(store.endpoint()), "{location}");
    let fetched = dir.path().join("fetched");
    let got = run_ok(
        Command::new("curl")
            .args(["-sSf", "--max-time", "60", "-o"])
            .arg(&fetched)
            .arg(location),
    );
    assert!(got.success());
    assert_eq!(
        speculum_oci::Digest::sha256(&std::fs::read(&fetched).unwrap()),
        *layer
    );
    let out = s.pull("org/app:v1", &dir.path().join("pulled"));
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    serve.stop();
}

/// `prune` on the bucket removes an untagged image's blobs and keeps the
/// tagged one whole, through the store's collector lease.
fn prune_on_the_store(store: &S3Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = s3_serve(dir.path(), store, "");
    let serve = s.start();
    let keep = image(dir.path(), 13);
    let drop = ImageSpec::new(&[400_000])
        .seed(14)
        .write_layout(&dir.path().join("drop"), "v1");
    assert!(s.push(&keep.oci_ref(), "org/keep:v1").success());
    assert!(s.push(&drop.oci_ref(), "org/drop:v1").success());
    let url = format!("https://localhost:{}/v2/org/drop/manifests/v1", s.port);
    let deleted = s.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "DELETE",
        &url,
    ]);
    assert_eq!(deleted.stdout, "202", "{}", deleted.describe());
    serve.stop();

    // A grace period of zero: what is unreferenced now goes now.
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str("  gc: {grace: 1s}\n");
    std::thread::sleep(std::time::Duration::from_secs(2));
    std::fs::write(&s.config, config).unwrap();
    let out = run_ok(
        Command::new(BIN)
            .args(["prune", "--json", "--config"])
            .arg(&s.config),
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let removed = report["blobs_removed"].as_array().unwrap();
    assert!(
        removed.iter().any(|d| d == &drop.layers[0].to_string()),
        "{report}"
    );
    let serve = s.start();
    let out = s.pull("org/keep:v1", &dir.path().join("pulled"));
    assert!(out.success(), "{}", out.describe());
    serve.stop();
}

/// A store behind TLS with a private CA (haproxy terminating TLS in front
/// of it, as a site's load balancer would): `ca` makes the registry trust
/// it; without `ca` the start fails on the certificate, naming the bucket.
fn store_behind_tls(store: &S3Store) {
    let dir = tempfile::tempdir().unwrap();
    let front = dir.path().join("front");
    let tls = make_tls(&front);
    let pem = dir.path().join("front.pem");
    let mut both = std::fs::read_to_string(&tls.cert).unwrap();
    both.push_str(&std::fs::read_to_string(&tls.key).unwrap());
    std::fs::write(&pem, both).unwrap();
    let port = free_port();
    let backend = store.endpoint().trim_start_matches("http://");
    let proxy = speculum_testkit::Haproxy::start_config(
        &format!(
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 5m\n    \
             timeout server 5m\nfrontend tls\n    bind 127.0.0.1:{port} ssl crt {}\n    \
             default_backend store\nbackend store\n    server store {backend}\n",
            pem.display()
        ),
        port,
    );
    let s = s3_serve(dir.path(), store, "");
    let https = format!("https://localhost:{}", proxy.port());
    let config = std::fs::read_to_string(&s.config).unwrap().replace(
        &format!("endpoint: {}", store.endpoint()),
        &format!("endpoint: {https}"),
    );
    std::fs::write(&s.config, &config).unwrap();

    let refused = run(
        Command::new(BIN).args(["serve", "--config"]).arg(&s.config),
        DEFAULT_TIMEOUT,
    );
    assert!(!refused.success(), "{}", refused.describe());
    assert!(refused.stderr.contains(&s.bucket), "{}", refused.describe());

    let with_ca = config.replace(
        "    access-key-id-file",
        &format!("    ca: {}\n    access-key-id-file", tls.ca.display()),
    );
    std::fs::write(&s.config, with_ca).unwrap();
    let serve = s.start();
    let img = image(dir.path(), 15);
    let out = s.push(&img.oci_ref(), "org/tls:v1");
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    let out = s.pull("org/tls:v1", &dir.path().join("pulled"));
    assert!(out.success(), "{}", out.describe());
    serve.stop();
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod swift {
            $(#[test] fn $case() { super::$case(speculum_testkit::S3Store::swift()); })*
        }
        mod ceph {
            $(#[test] fn $case() { super::$case(speculum_testkit::S3Store::ceph()); })*
        }
    };
}

on_both_stores!(
    push_pull_restart,
    redirect_to_the_store,
    prune_on_the_store,
    store_behind_tls
);
