//! `speculum-registry serve` as a pull-through mirror, end to end: Debian's
//! `docker-registry` (distribution 2.8, htpasswd auth) on loopback stands in
//! for Docker Hub, skopeo seeds it and pulls through the binary as built.
//! Nothing here reaches a public registry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use speculum_testkit::{
    Distribution, DistributionOptions, ImageSpec, free_port, require_tool, run, run_ok,
};
use tempfile::TempDir;

const USER: &str = "mirror";
const PASSWORD: &str = "upstream-pw";

/// `speculum-registry serve --config FILE` on loopback; killed on drop.
struct Serve {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Serve {
    fn start(upstreams: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  storage:\n    driver: filesystem\n    root: store\n  metrics: false\n  upstreams:\n{upstreams}"
        );
        let path = dir.path().join("serve.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_speculum-registry"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut serve = Serve { child, port, dir };
        let start = Instant::now();
        while http_status(port, "/v2/").is_none() {
            if let Some(status) = serve.child.try_wait().unwrap() {
                panic!("serve exited with {status}:\n{}", serve.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "serve did not start:\n{}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn docker_ref(&self, name: &str) -> String {
        format!("docker://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET path` over plain HTTP/1.0, or `None` if not reachable.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn skopeo() -> Command {
    require_tool("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy");
    cmd
}

/// The manifest digest skopeo sees for `reference` (plain HTTP).
fn digest_of(reference: &str, creds: Option<&str>) -> String {
    let mut cmd = skopeo();
    cmd.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    run_ok(cmd.arg(reference)).stdout.trim().to_string()
}

fn push(dir: &Path, seed: u64, upstream: &Distribution, name: &str) {
    let layout = dir.join(format!("img{seed}"));
    let image = ImageSpec::new(&[300_000, 20_000])
        .seed(seed)
        .write_layout(&layout, "v1");
    run_ok(skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("{USER}:{PASSWORD}"),
        &image.oci_ref(),
        &upstream.docker_ref(name),
    ]));
}

fn pull(serve: &Serve, name: &str, dest: &Path) -> speculum_testkit::CmdOutput {
    let mut cmd = skopeo();
    cmd.args(["copy", "--src-tls-verify=false"])
        .arg(serve.docker_ref(name))
        .arg(format!("oci:{}:v1", dest.display()));
    run(&mut cmd, Duration::from_secs(120))
}

#[test]
fn pull_through_a_distribution_upstream() {
    let work = tempfile::tempdir().unwrap();
    let upstream = Distribution::start(DistributionOptions::new().auth(USER, PASSWORD));
    let creds = format!("{USER}:{PASSWORD}");
    push(work.path(), 1, &upstream, "library/app:v1");
    let first = digest_of(&upstream.docker_ref("library/app:v1"), Some(&creds));

    // docker.io goes to the distribution upstream (with credentials, a 1 s
    // tag TTL); quay.io to a port nothing listens on; ghcr.io has none.
    let dead = free_port();
    let serve = Serve::start(&format!(
        "    - namespace: docker.io\n      url: {}\n      insecure: true\n      username: {USER}\n      password: {PASSWORD}\n      tag-ttl: 1s\n\
         \x20   - namespace: quay.io\n      url: http://127.0.0.1:{dead}\n      insecure: true\n",
        upstream.url()
    ));

    // The image exists only upstream; it is pulled through, digest intact.
    let out = pull(&serve, "library/app:v1", &work.path().join("out1"));
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    assert_eq!(digest_of(&serve.docker_ref("library/app:v1"), None), first);
    assert_eq!(
        digest_of(&serve.docker_ref("docker.io/library/app:v1"), None),
        first
    );

    // The tag moves upstream: seen here once the TTL has passed.
    push(work.path(), 2, &upstream, "library/app:v1");
    let second = digest_of(&upstream.docker_ref("library/app:v1"), Some(&creds));
    assert_ne!(first, second);
    std::thread::sleep(Duration::from_millis(1200));
    let out = pull(&serve, "library/app:v1", &work.path().join("out2"));
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    assert_eq!(digest_of(&serve.docker_ref("library/app:v1"), None), second);

    // Upstream stopped: both contents are still served from the cache (the
    // tag after its TTL, with a warning; the older one by digest).
    drop(upstream);
    std::thread::sleep(Duration::from_millis(1200));
    let out = pull(&serve, "library/app:v1", &work.path().join("out3"));
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    let by_digest = format!("library/app@{first}");
    let mut cmd = skopeo();
    cmd.args(["copy", "--src-tls-verify=false"])
        .arg(serve.docker_ref(&by_digest))
        .arg(format!("oci:{}:old", work.path().join("out4").display()));
    run_ok(&mut cmd);
    assert!(
        serve.log().contains("serving the cached manifest"),
        "{}",
        serve.log()
    );

    // A dead upstream, and a namespace without one: fast 404s, never 5xx.
    let started = Instant::now();
    assert_eq!(
        http_status(serve.port, "/v2/quay.io/org/app/manifests/v1"),
        Some(404)
    );
    assert_eq!(
        http_status(serve.port, "/v2/org/app/manifests/v1?ns=quay.io"),
        Some(404)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        http_status(serve.port, "/v2/ghcr.io/org/app/manifests/v1"),
        Some(404)
    );
    let out = pull(&serve, "quay.io/org/app:v1", &work.path().join("out5"));
    assert!(!out.success());
    assert!(
        out.stderr.contains("manifest unknown"),
        "{}",
        out.describe()
    );
}

/// `examples/pull-through-mirror.yaml` parses and proxies docker.io and
/// quay.io.
#[test]
fn pull_through_example_parses() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pull-through-mirror.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let settings =
        speculum_server::Settings::parse(&text, &path, |name| Some(format!("value-of-{name}")))
            .unwrap_or_else(|e| panic!("{e}"));
    let upstreams: Vec<(&str, &str)> = settings
        .upstreams
        .iter()
        .map(|u| (u.namespace.as_str(), u.host.as_str()))
        .collect();
    assert_eq!(
        upstreams,
        [
            ("docker.io", "registry-1.docker.io"),
            ("quay.io", "quay.io")
        ]
    );
    let hub = &settings.upstreams[0];
    assert_eq!(
        hub.credentials,
        Some((
            "ci-mirror".to_string(),
            "value-of-SPECULUM_DOCKERHUB_TOKEN".to_string()
        ))
    );
    assert_eq!(hub.tag_ttl, Duration::from_secs(600));
    let quay = settings.upstreams[1].repositories.as_ref().unwrap();
    assert!(quay.is_match("prometheus/node-exporter"));
    assert!(quay.is_match("openstack.kolla/nova-api"));
    assert!(!quay.is_match("other/prometheus/x"));
    assert!(settings.auth.anonymous_read);
}
