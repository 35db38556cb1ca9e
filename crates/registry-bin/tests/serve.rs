//! `speculum-registry serve` and `prune` end to end: the binary as built, a
//! config file on disk, real clients (skopeo, a private dockerd). Servers bind
//! 127.0.0.1 only; nothing reaches a public registry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use speculum_testkit::{
    CmdOutput, DEFAULT_TIMEOUT, Dockerd, DockerdOptions, ImageFormat, ImageSpec, free_port, run,
    run_ok,
};
use tempfile::TempDir;

mod common;

use common::{BIN, SECRET, Serve, ZUUL_PW, htpasswd_line, inspect, make_tls, push};
use speculum_testkit::http::request;

/// A plain-HTTP GET: status and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn image(dir: &Path, seed: u64) -> speculum_testkit::Image {
    ImageSpec::new(&[200_000, 30_000])
        .seed(seed)
        .write_layout(&dir.join(format!("img{seed}")), "v1")
}

/// A zuul-registry config as zuul-jobs writes it (TLS, a secret from the
/// environment, plain-password users, one of them read-only), unchanged.
#[test]
fn zuul_registry_config_serves_skopeo_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let tls = make_tls(dir.path());
    let port = free_port();
    let config = dir.path().join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            r#"registry:
  address: '127.0.0.1'
  port: {port}
  public-url: https://127.0.0.1:{port}
  tls-cert: {cert}
  tls-key: {key}
  secret: "%(ZUUL_REGISTRY_SECRET)"
  users:
    - name: writer
      pass: writerpass
      access: write
    - name: reader
      pass: readerpass
      access: read
  storage:
    driver: filesystem
    root: {root}
  expiration: 86400
"#,
            cert = tls.cert.display(),
            key = tls.key.display(),
            root = dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let serve = Serve::start(&config, port, &[("ZUUL_REGISTRY_SECRET", SECRET)]);
    let img = image(dir.path(), 1);
    let target = serve.docker_ref("test/img:v1");
    let certs = Some(tls.cert_dir.as_path());

    let out = push(&img.oci_ref(), &target, Some("writer:writerpass"), certs);
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    // Refused: no credentials, a wrong password, a read user.
    for creds in [None, Some("writer:wrong"), Some("reader:readerpass")] {
        let out = push(
            &img.oci_ref(),
            &serve.docker_ref("test/other:v1"),
            creds,
            certs,
        );
        assert!(!out.success(), "{creds:?} pushed");
    }
    let out = push(
        &img.oci_ref(),
        &serve.docker_ref("test/other:v1"),
        Some("reader:readerpass"),
        certs,
    );
    assert!(
        out.stderr.contains("denied") || out.stderr.contains("403"),
        "{}",
        out.describe()
    );
    // A read user exists, so anonymous read is off (zuul-registry's rule).
    assert!(!inspect(&target, None, certs).success());
    for creds in ["reader:readerpass", "writer:writerpass"] {
        let out = inspect(&target, Some(creds), certs);
        assert!(out.success(), "{}", out.describe());
        assert_eq!(out.stdout.trim(), img.manifest.to_string());
    }
    serve.stop();
}

/// htpasswd (bcrypt) users, anonymous read, plain HTTP; /healthz and /metrics.
#[test]
fn htpasswd_users_and_anonymous_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("# writers\n{}", htpasswd_line("alice", "alice-pw")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("htpasswd-read"),
        htpasswd_line("bob", "bob-pw"),
    )
    .unwrap();
    let port = free_port();
    let config = dir.path().join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  secret-file: secret\n  \
             htpasswd: htpasswd\n  htpasswd-read: htpasswd-read\n  anonymous-read: true\n  \
             storage: {{driver: filesystem, root: data}}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let serve = Serve::start(&config, port, &[]);
    let img = image(dir.path(), 2);
    let target = serve.docker_ref("team/app:v1");

    assert!(!push(&img.oci_ref(), &target, None, None).success());
    assert!(!push(&img.oci_ref(), &target, Some("alice:wrong"), None).success());
    assert!(!push(&img.oci_ref(), &target, Some("bob:bob-pw"), None).success());
    let out = push(&img.oci_ref(), &target, Some("alice:alice-pw"), None);
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    // Anonymous pull, and with wrong credentials (a mirror client's).
    for creds in [None, Some("hubuser:hubpw"), Some("bob:bob-pw")] {
        let out = inspect(&target, creds, None);
        assert!(out.success(), "{creds:?}: {}", out.describe());
        assert_eq!(out.stdout.trim(), img.manifest.to_string());
    }

    let (status, body) = http_get(port, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _) = http_get(port, "/v2/");
    assert_eq!(status, 401, "anonymous /v2/ gets the challenge");
    let (status, metrics) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"speculum_http_requests_total{route="manifest",method="PUT",status="201"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"route="token""#), "{metrics}");
    assert!(metrics.contains("speculum_http_request_bytes_total"));
    serve.stop();
}

/// A bad key, a bad value or a missing variable stops startup with a
/// message naming the key (or variable) and the file.
#[test]
fn config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown-key.yaml",
            "registry:\n  address: 127.0.0.1\n  port: 1\n  storage: {driver: filesystem, root: x}\n  colour: blue\n",
            "colour",
        ),
        (
            "bad-access.yaml",
            "registry:\n  address: 127.0.0.1\n  port: 1\n  storage: {driver: filesystem, root: x}\n  users: [{name: a, pass: b, access: admin}]\n",
            "registry.users[0].access",
        ),
        (
            "bad-duration.yaml",
            "registry:\n  address: 127.0.0.1\n  port: 1\n  storage: {driver: filesystem, root: x}\n  gc: {interval: often}\n",
            "registry.gc.interval",
        ),
        (
            "missing-env.yaml",
            "registry:\n  address: 127.0.0.1\n  port: 1\n  storage: {driver: filesystem, root: x}\n  secret: '%(ZUUL_NOT_SET_ANYWHERE)'\n",
            "ZUUL_NOT_SET_ANYWHERE",
        ),
        (
            "md5-htpasswd.yaml",
            "registry:\n  address: 127.0.0.1\n  port: 1\n  storage: {driver: filesystem, root: x}\n  htpasswd: md5\n",
            "md5:1",
        ),
    ];
    std::fs::write(dir.path().join("md5"), "carol:$apr1$abc$def\n").unwrap();
    for (name, text, key) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        for command in ["serve", "prune"] {
            let out = run(
                Command::new(BIN)
                    .args([command, "--config"])
                    .arg(&path)
                    .env_remove("ZUUL_NOT_SET_ANYWHERE"),
                Duration::from_secs(30),
            );
            assert_eq!(out.status.code(), Some(2), "{name}: {}", out.describe());
            assert!(out.stderr.contains(key), "{name}: {}", out.stderr);
            assert!(
                out.stderr.contains(&path.display().to_string()),
                "{name}: {}",
                out.stderr
            );
        }
    }
}

/// `prune --dry-run` reports what retention would delete and deletes
/// nothing; `prune` then deletes it.
#[test]
fn prune_dry_run_reports_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  users: [{{name: zuul, pass: pw, access: write}}]\n  \
             storage: {{driver: filesystem, root: data}}\n  expiration: 0\n  log-format: json\n"
        ),
    )
    .unwrap();
    let serve = Serve::start(&config, port, &[]);
    assert!(
        serve.log().trim_start().starts_with('{'),
        "log-format: json from the config: {}",
        serve.log()
    );
    let img = image(dir.path(), 3);
    let build_tag = format!("{}_v1", "0123456789abcdef0123456789abcdef");
    for tag in [build_tag.as_str(), "keep"] {
        let out = push(
            &img.oci_ref(),
            &serve.docker_ref(&format!("ir/app:{tag}")),
            Some("zuul:pw"),
            None,
        );
        assert!(out.success(), "{}", out.describe());
    }
    serve.stop();

    let prune = |extra: &[&str]| {
        run_ok(
            Command::new(BIN)
                .args(["prune", "--config"])
                .arg(&config)
                .args(extra),
        )
    };
    let dry = prune(&["--dry-run", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    let tags = report["tags_deleted"].as_array().unwrap();
    assert_eq!(tags.len(), 1, "{report}");
    assert_eq!(tags[0]["repository"], "ir/app");
    assert_eq!(tags[0]["tag"], build_tag.as_str());
    let text = prune(&["--dry-run"]);
    assert!(
        text.stdout
            .contains(&format!("would remove tag ir/app:{build_tag}")),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("freed"), "{}", text.stdout);

    // Nothing was deleted.
    let serve = Serve::start(&config, port, &[]);
    for tag in [build_tag.as_str(), "keep"] {
        let out = inspect(&serve.docker_ref(&format!("ir/app:{tag}")), None, None);
        assert!(out.success(), "{tag}: {}", out.describe());
    }
    serve.stop();

    let real = prune(&["--json"]);
    let report: serde_json::Value = serde_json::from_str(&real.stdout).unwrap();
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["tags_deleted"].as_array().unwrap().len(), 1);
    let serve = Serve::start(&config, port, &[]);
    let gone = inspect(
        &serve.docker_ref(&format!("ir/app:{build_tag}")),
        None,
        None,
    );
    assert!(!gone.success(), "the expired tag is gone");
    let kept = inspect(&serve.docker_ref("ir/app:keep"), None, None);
    assert!(kept.success(), "{}", kept.describe());
    assert_eq!(kept.stdout.trim(), img.manifest.to_string());
    serve.stop();
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every example config in examples/ parses (the compose one, which names
/// files that exist only in the container, is started by the compose test).
#[test]
fn example_configs_parse() {
    let dir = repo_root().join("examples");
    let mut checked = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.contains(&dir.join("intermediate-registry.yaml")));
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let settings =
            speculum_server::Settings::parse(&text, &path, |name| Some(format!("value-of-{name}")))
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(settings.listen.addr.port() > 0);
        checked += 1;
    }
    assert!(checked >= 1);
}

/// docker-compose.yml parses, mounts files that exist in the repository (or
/// directories whose README says what to put there), and its config, with
/// the container paths mapped to a temporary copy, serves with TLS and
/// htpasswd from those directories.
#[test]
fn compose_file_mounts_what_exists_and_its_config_serves() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let compose: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let service = &compose["services"]["registry"];
    assert_eq!(service["build"].as_str(), Some("."));
    assert!(root.join("Dockerfile").is_file());
    let command: Vec<&str> = service["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command, ["serve", "--config", "/conf/registry.yaml"]);
    let mut mounts = Vec::new();
    for volume in service["volumes"].as_sequence().unwrap() {
        let v = volume.as_str().unwrap();
        let mut parts = v.split(':');
        let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
        if let Some(rel) = host.strip_prefix("./") {
            let path = root.join(rel);
            assert!(path.exists(), "{v}: {} does not exist", path.display());
            mounts.push((container.to_string(), path));
        } else {
            let named = compose["volumes"][host].is_mapping() || compose["volumes"][host].is_null();
            assert!(
                named,
                "{v}: neither a path in the repository nor a named volume"
            );
            assert_eq!(container, "/storage");
        }
    }
    let mount = |c: &str| mounts.iter().find(|(m, _)| m == c).unwrap().1.clone();
    let config_path = mount("/conf").join("registry.yaml");
    assert!(config_path.is_file());
    // Certificates and passwords are never committed: their directories say
    // how to create them.
    for (dir, file) in [
        ("/certs", "domain.crt"),
        ("/certs", "domain.key"),
        ("/auth", "htpasswd"),
    ] {
        assert!(mount(dir).join("README.md").is_file(), "{dir}");
        let config = std::fs::read_to_string(&config_path).unwrap();
        assert!(config.contains(&format!("{dir}/{file}")), "{dir}/{file}");
    }

    // Now what the container would do: the same config, with the mounts
    // in a temporary directory, the certificate and htpasswd created there.
    let tmp = TempDir::new().unwrap();
    let tls = make_tls(tmp.path());
    let certs = tmp.path().join("certs");
    let auth = tmp.path().join("auth");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&auth).unwrap();
    std::fs::copy(&tls.cert, certs.join("domain.crt")).unwrap();
    std::fs::copy(&tls.key, certs.join("domain.key")).unwrap();
    std::fs::write(auth.join("htpasswd"), htpasswd_line("zuul", "zuul-pw")).unwrap();
    let port = free_port();
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("address: '::'", "address: '127.0.0.1'")
        .replace("port: 5000", &format!("port: {port}"))
        .replace("/certs/", &format!("{}/", certs.display()))
        .replace("/auth/", &format!("{}/", auth.display()))
        .replace(
            "root: /storage",
            &format!("root: {}/storage", tmp.path().display()),
        );
    let config_copy = tmp.path().join("registry.yaml");
    std::fs::write(&config_copy, config).unwrap();
    let serve = Serve::start(&config_copy, port, &[("ZUUL_REGISTRY_SECRET", SECRET)]);
    let img = image(tmp.path(), 4);
    let target = serve.docker_ref("zuul/app:v1");
    let cert_dir = Some(tls.cert_dir.as_path());
    assert!(!push(&img.oci_ref(), &target, None, cert_dir).success());
    let out = push(&img.oci_ref(), &target, Some("zuul:zuul-pw"), cert_dir);
    assert!(out.success(), "{}\n{}", out.describe(), serve.log());
    assert!(
        !inspect(&target, None, cert_dir).success(),
        "anonymous-read: false"
    );
    assert!(inspect(&target, Some("zuul:zuul-pw"), cert_dir).success());
    serve.stop();
}

/// Docker reads auth challenges only from `GET /v2/`: with the Bearer
/// challenge there, `docker login` and `docker push` work, and anonymous
/// `docker pull` too.
#[test]
fn docker_logs_in_pushes_and_pulls_anonymously() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, tls) = tls_serve(dir.path(), "[{name: zuul, pass: zuul-pw, access: write}]");
    push_busybox(dir.path(), &serve, &tls, "zuul:zuul-pw", 5);

    let dockerd = Dockerd::start(DockerdOptions::new().registry_ca(&serve.host(), &tls.ca));
    let source = format!("{}/myorg/app:v1", serve.host());
    let pull = run(dockerd.docker().args(["pull", &source]), DEFAULT_TIMEOUT);
    assert!(
        pull.success(),
        "anonymous pull: {}\n{}",
        pull.describe(),
        serve.log()
    );
    let target = format!("{}/myorg/pushed:v1", serve.host());
    run_ok(dockerd.docker().args(["tag", &source, &target]));
    let anonymous = run(dockerd.docker().args(["push", &target]), DEFAULT_TIMEOUT);
    assert!(!anonymous.success(), "pushed without logging in");
    let bad = docker_login(&dockerd, &serve, "zuul", "wrong");
    assert!(!bad.success(), "logged in with a wrong password");
    docker_login(&dockerd, &serve, "zuul", "zuul-pw").assert_success();
    let push = run(dockerd.docker().args(["push", &target]), DEFAULT_TIMEOUT);
    assert!(
        push.success(),
        "{}\n--- registry log ---\n{}",
        push.describe(),
        serve.log()
    );
    let out = inspect(
        &serve.docker_ref("myorg/pushed:v1"),
        None,
        Some(&tls.cert_dir),
    );
    assert!(out.success(), "{}", out.describe());
    serve.stop();
}

/// `serve` over TLS with `users` (a YAML list), storage in `dir`.
fn tls_serve(dir: &Path, users: &str) -> (Serve, common::Tls) {
    let tls = make_tls(dir);
    let port = free_port();
    let config = dir.join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  tls-cert: {}\n  tls-key: {}\n  \
             users: {users}\n  storage: {{driver: filesystem, root: data}}\n",
            tls.cert.display(),
            tls.key.display()
        ),
    )
    .unwrap();
    (Serve::start(&config, port, &[]), tls)
}

/// Push a runnable busybox image made from `seed` as `myorg/app:v1`.
fn push_busybox(dir: &Path, serve: &Serve, tls: &common::Tls, creds: &str, seed: u64) {
    let img = ImageSpec::new(&[40_000])
        .busybox(true)
        .format(ImageFormat::DockerV2S2)
        .seed(seed)
        .write_layout(&dir.join("busybox"), "v1");
    let out = push(
        &img.oci_ref(),
        &serve.docker_ref("myorg/app:v1"),
        Some(creds),
        Some(&tls.cert_dir),
    );
    assert!(out.success(), "{}", out.describe());
}

fn docker_login(dockerd: &Dockerd, serve: &Serve, user: &str, password: &str) -> CmdOutput {
    run(
        dockerd.docker().args([
            "login",
            &serve.host(),
            "--username",
            user,
            "--password",
            password,
        ]),
        DEFAULT_TIMEOUT,
    )
}

/// Issue 9: a read-only user's `docker push` fails at once. The 403 carries
/// a `detail`; without one, Docker's client did not take the refusal as
/// final and retried for about 50 s.
#[test]
fn docker_push_by_a_read_user_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, tls) = tls_serve(
        dir.path(),
        "[{name: writer, pass: writer-pw, access: write}, {name: reader, pass: reader-pw, access: read}]",
    );
    push_busybox(dir.path(), &serve, &tls, "writer:writer-pw", 9);

    let dockerd = Dockerd::start(DockerdOptions::new().registry_ca(&serve.host(), &tls.ca));
    docker_login(&dockerd, &serve, "reader", "reader-pw").assert_success();
    let source = format!("{}/myorg/app:v1", serve.host());
    run_ok(dockerd.docker().args(["pull", &source]));
    let target = format!("{}/myorg/other:v1", serve.host());
    run_ok(dockerd.docker().args(["tag", &source, &target]));
    let start = Instant::now();
    let push = run(dockerd.docker().args(["push", &target]), DEFAULT_TIMEOUT);
    let took = start.elapsed();
    assert!(!push.success(), "a read user pushed");
    assert!(
        push.stderr.contains("denied"),
        "{}\n--- registry log ---\n{}",
        push.describe(),
        serve.log()
    );
    // Not a benchmark: retrying a refusal it did not take as final took docker 50 s.
    assert!(
        took < Duration::from_secs(30),
        "docker push took {took:?} to fail (retried a final refusal?)"
    );
    serve.stop();
}

/// Issue 9: SIGTERM stops `serve` within a couple of seconds, even with idle
/// keep-alive connections, a client stuck in its request head and an upload
/// whose body stopped coming.
#[test]
fn sigterm_with_open_connections_stops_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  \
             users: [{{name: zuul, pass: pw, access: write}}]\n  \
             storage: {{driver: filesystem, root: data}}\n"
        ),
    )
    .unwrap();
    let mut serve = Serve::start(&config, port, &[]);
    let mut open = Vec::new();
    for i in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if i % 2 == 0 {
            // One request on a keep-alive connection, answered, then idle.
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        }
        open.push(stream);
    }
    let mut head = TcpStream::connect(("127.0.0.1", port)).unwrap();
    head.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    open.push(head);
    let mut upload = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let digest = format!("sha256:{}", "0".repeat(64));
    upload
        .write_all(
            format!(
                "POST /v2/slow/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n\
                 Authorization: {ZUUL_PW}\r\nContent-Length: 1000000\r\n\r\npartial"
            )
            .as_bytes(),
        )
        .unwrap();
    open.push(upload);
    std::thread::sleep(Duration::from_millis(300));

    let mut child = serve.child.take().unwrap();
    let start = Instant::now();
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no exit 10 s after SIGTERM:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    assert!(status.success(), "exit {status}:\n{}", serve.log());
    assert!(
        took < Duration::from_secs(8),
        "SIGTERM took {took:?} with open connections:\n{}",
        serve.log()
    );
    drop(open);
}

// ---- prune beside a running serve ----------------------------------------

/// One plain HTTP/1.0 request as `zuul`: the status, the headers
/// (lowercase names) and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let r = request(port, Some(ZUUL_PW), method, path, headers, body);
    (r.status, r.headers, r.body)
}

/// An image pushed and acknowledged: where, and what it is made of.
struct Pushed {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    blobs: Vec<(speculum_oci::Digest, Vec<u8>)>,
}

/// Push a small image made from `seed` (a config and a layer, monolithic
/// uploads, then the manifest by tag); `Some` if the manifest PUT was
/// answered 201, `None` if a step was refused.
fn push_small_image(port: u16, repo: &str, tag: &str, seed: &str) -> Option<Pushed> {
    use speculum_oci::Digest;
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
    let layer = format!("layer bytes of {seed} ").repeat(40).into_bytes();
    let mut blobs = Vec::new();
    for data in [config.as_bytes().to_vec(), layer] {
        let digest = Digest::sha256(&data);
        let (status, _, _) = http(
            port,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            &data,
        );
        if status != 201 {
            return None;
        }
        blobs.push((digest, data));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blobs[0].0, "size": blobs[0].1.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": blobs[1].0, "size": blobs[1].1.len(),
        }],
    }))
    .unwrap();
    let (status, _, _) = http(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    );
    (status == 201).then(|| Pushed {
        repo: repo.to_string(),
        tag: tag.to_string(),
        manifest,
        blobs,
    })
}

/// What is wrong with a pushed image as the registry serves it now, if
/// anything: the manifest by tag and by digest, every blob, digests checked.
fn check_pulled(port: u16, image: &Pushed) -> Option<String> {
    use speculum_oci::Digest;
    let name = format!("{}:{}", image.repo, image.tag);
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let digest = Digest::sha256(&image.manifest);
    for reference in [image.tag.clone(), digest.to_string()] {
        let (status, _, body) = http(
            port,
            "GET",
            &format!("/v2/{}/manifests/{reference}", image.repo),
            &accept,
            &[],
        );
        if status != 200 || body != image.manifest {
            return Some(format!(
                "{name}: manifest {reference}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    for (blob, data) in &image.blobs {
        let (status, _, body) = http(
            port,
            "GET",
            &format!("/v2/{}/blobs/{blob}", image.repo),
            &[],
            &[],
        );
        if status != 200 || Digest::sha256(&body) != *blob || body.len() != data.len() {
            return Some(format!(
                "{name}: blob {blob}: {status}, {} bytes",
                body.len()
            ));
        }
    }
    None
}

/// A config for `serve` and `prune` on loopback: one writer, filesystem
/// storage under `dir/data`, the GC keys given.
fn prune_config(dir: &Path, port: u16, gc: &str) -> PathBuf {
    let config = dir.join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  \
             users: [{{name: zuul, pass: pw, access: write}}]\n  \
             storage: {{driver: filesystem, root: data}}\n  gc: {gc}\n"
        ),
    )
    .unwrap();
    config
}

/// Regression: `prune --config` run again and again from another process
/// while `serve` takes pushes on the same storage root used to delete the
/// manifests and blobs of pushes answered 201 moments earlier (its mark
/// listed a repository, the push landed, its sweep deleted what the mark had
/// not seen). Every acknowledged push must stay whole.
#[test]
fn prune_beside_serve_loses_no_acknowledged_push() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const PUSHES: usize = 150;
    const PRUNES: usize = 40;
    const REPOS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = prune_config(dir.path(), port, "{grace: 2s}");
    let serve = Serve::start(&config, port, &[]);
    // Content for the marks to walk, in many repositories, so that a mark
    // takes a while and pushes land in the middle of it.
    let mut acknowledged = Vec::new();
    for r in 0..REPOS {
        for i in 0..3 {
            let repo = format!("stress/r{r}");
            let image = push_small_image(port, &repo, &format!("base{i}"), &format!("{r}-{i}"));
            acknowledged.push(image.expect("a push with no prune running"));
        }
    }

    // And garbage, which the prunes must still collect: untagged images.
    let mut garbage = Vec::new();
    for r in 0..4 {
        let repo = format!("stress/r{r}");
        let image = push_small_image(port, &repo, "gone", &format!("garbage-{r}")).unwrap();
        let (status, _, _) = http(
            port,
            "DELETE",
            &format!("/v2/{repo}/manifests/gone"),
            &[],
            &[],
        );
        assert_eq!(status, 202);
        garbage.push((repo, speculum_oci::Digest::sha256(&image.manifest)));
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let done = Arc::new(AtomicBool::new(false));
    let pusher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut pushed = Vec::new();
            let mut refused = 0;
            for i in 0..PUSHES {
                if Instant::now() > deadline {
                    break;
                }
                let repo = format!("stress/r{}", i % REPOS);
                match push_small_image(port, &repo, &format!("t{i}"), &format!("pushed-{i}")) {
                    Some(image) => pushed.push(image),
                    None => refused += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            done.store(true, Ordering::SeqCst);
            (pushed, refused)
        })
    };
    let mut prunes = 0;
    while prunes < PRUNES && !done.load(Ordering::SeqCst) {
        let out = run(
            Command::new(BIN)
                .args(["prune", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn"),
            DEFAULT_TIMEOUT,
        );
        assert!(out.success(), "prune {prunes}: {}", out.describe());
        prunes += 1;
    }
    let (pushed, refused) = pusher.join().unwrap();
    acknowledged.extend(pushed);
    // Let everything age past the grace period, and prune once more with
    // nothing in flight: tagged images are still kept, whole.
    std::thread::sleep(Duration::from_secs(3));
    run_ok(Command::new(BIN).args(["prune", "--config"]).arg(&config));

    let lost: Vec<String> = acknowledged
        .iter()
        .filter_map(|image| check_pulled(port, image))
        .collect();
    eprintln!(
        "{} acknowledged pushes, {refused} refused, {prunes} prunes, {} lost",
        acknowledged.len(),
        lost.len()
    );
    for (repo, digest) in &garbage {
        let (status, _, _) = http(
            port,
            "GET",
            &format!("/v2/{repo}/manifests/{digest}"),
            &[],
            &[],
        );
        assert_eq!(status, 404, "{repo}@{digest} was not collected");
    }
    assert!(prunes >= 2, "prune ran {prunes} times");
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged pushes lost:\n{}",
        lost.len(),
        acknowledged.len(),
        lost.join("\n")
    );
    serve.stop();
}

/// Two collectors never run at once on one storage root: while one holds
/// the collector lock (here this test, through the storage library, as a
/// long `prune` would), `prune` exits 1 saying so and removes nothing, and
/// the scheduled collection of `serve` skips its rounds with a log line.
/// Once the lock is released both collect again. Then prunes started
/// together: each either collects or reports the other.
#[test]
fn concurrent_collectors_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = prune_config(dir.path(), port, "{interval: 1s, grace: 1s}");
    let serve = Serve::start(&config, port, &[]);
    let image = push_small_image(port, "turns/app", "v1", "turns").unwrap();
    // An untagged manifest: garbage once older than the grace period.
    let (status, _, _) = http(
        port,
        "PUT",
        &format!(
            "/v2/turns/app/manifests/{}",
            speculum_oci::Digest::sha256(&image.manifest)
        ),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &image.manifest,
    );
    assert_eq!(status, 201);
    let (status, _, _) = http(port, "DELETE", "/v2/turns/app/manifests/v1", &[], &[]);
    assert_eq!(status, 202);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = runtime
        .block_on(speculum_storage::FsBackend::open(dir.path().join("data")))
        .unwrap();
    use speculum_storage::Backend as _;
    let held = runtime
        .block_on(backend.try_lock_collector())
        .unwrap()
        .expect("no collection runs yet");
    std::thread::sleep(Duration::from_secs(3));
    let prune = || {
        run(
            Command::new(BIN)
                .args(["prune", "--json", "--config"])
                .arg(&config),
            DEFAULT_TIMEOUT,
        )
    };
    let refused = prune();
    assert_eq!(refused.status.code(), Some(1), "{}", refused.describe());
    assert!(
        refused
            .stderr
            .contains("another garbage collection is running"),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    assert!(
        serve.log().contains("skipping this round"),
        "{}",
        serve.log()
    );
    assert!(check_pulled(port, &image).is_some_and(|e| e.contains("manifest v1")));
    let digest = speculum_oci::Digest::sha256(&image.manifest).to_string();
    let (status, _, _) = http(
        port,
        "GET",
        &format!("/v2/turns/app/manifests/{digest}"),
        &[],
        &[],
    );
    assert_eq!(status, 200, "nothing collected while the lock was held");

    drop(held);
    // Whichever collector comes first (the schedule, every second, or a
    // prune) now removes the untagged manifest.
    let start = Instant::now();
    loop {
        let out = prune();
        assert!(
            out.success() || out.stderr.contains("another garbage collection is running"),
            "{}",
            out.describe()
        );
        let (status, _, _) = http(
            port,
            "GET",
            &format!("/v2/turns/app/manifests/{digest}"),
            &[],
            &[],
        );
        if status == 404 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never collected");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Prunes started together: every one either collects or says another
    // collection runs; none fails otherwise.
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(BIN)
                .args(["prune", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut collected = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            collected += 1;
        } else {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("another garbage collection is running"),
                "{stderr}"
            );
        }
    }
    assert!(collected >= 1);
    serve.stop();
}

// ---- connection limits and the access log (issue 9, points 2 and 6) -------

/// `connections:` in the config reaches the server: a connection that sends
/// nothing is closed after the header timeout; and the open-file limit,
/// raised at start, is logged.
#[test]
fn configured_header_timeout_closes_a_silent_connection() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  \
             storage: {{driver: filesystem, root: data}}\n  \
             connections: {{header-timeout: 1s, keep-alive-timeout: 1m, max: 100}}\n"
        ),
    )
    .unwrap();
    let serve = Serve::start(&config, port, &[("RUST_LOG", "info")]);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let closed = matches!(silent.read(&mut buf), Ok(0) | Err(_));
    let took = start.elapsed();
    assert!(
        closed && took < Duration::from_secs(4),
        "closed={closed} after {took:?}"
    );
    let log = serve.log();
    assert!(log.contains("open-file limit"), "{log}");
    assert!(log.contains("max_connections=100"), "{log}");
    serve.stop();
}

/// The access lines of a log, each as its fields, in either format.
fn access_lines(log: &str, json: bool) -> Vec<std::collections::HashMap<String, String>> {
    let mut lines = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains("speculum_server::access_log"))
    {
        let fields = if json {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            value["fields"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect()
        } else {
            let (_, after) = line.split_once("speculum_server::access_log: ").unwrap();
            after
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        lines.push(fields);
    }
    lines
}

/// At the default level, each request gets one access line with its
/// fields, 401 and 403 included, in text and in JSON; no credentials and no
/// query strings are logged; a client's request id is kept and echoed.
#[test]
fn access_log_has_a_line_per_request_in_text_and_json() {
    for json in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("registry.yaml");
        std::fs::write(
            &config,
            format!(
                "registry:\n  address: 127.0.0.1\n  port: {port}\n  \
                 users: [{{name: zuul, pass: pw, access: write}}, \
                 {{name: reader, pass: rpw, access: read}}]\n  \
                 storage: {{driver: filesystem, root: data}}\n  log-format: {}\n",
                if json { "json" } else { "text" }
            ),
        )
        .unwrap();
        let serve = Serve::start(&config, port, &[("RUST_LOG", "info")]);
        let reader = "Basic cmVhZGVyOnJwdw=="; // base64("reader:rpw")
        let ok = request(
            port,
            Some(ZUUL_PW),
            "GET",
            "/v2/",
            &[("X-Request-Id", "my-id-42")],
            b"",
        );
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.header("x-request-id"),
            Some("my-id-42"),
            "{:?}",
            ok.headers
        );
        assert_eq!(request(port, None, "GET", "/v2/", &[], b"").status, 401);
        let push = request(
            port,
            Some(reader),
            "POST",
            "/v2/team/app/blobs/uploads/",
            &[],
            b"",
        );
        assert_eq!(push.status, 403);
        let missing = request(
            port,
            Some(ZUUL_PW),
            "GET",
            "/v2/team/app/manifests/nope",
            &[],
            b"",
        );
        assert_eq!(missing.status, 404);
        let token = "/auth/token?account=zuul&scope=repository:team/app:pull&service=x";
        assert_eq!(
            request(port, Some(ZUUL_PW), "GET", token, &[], b"").status,
            200
        );
        let log = serve.log();
        serve.stop();

        let lines = access_lines(&log, json);
        let find = |status: &str, path: &str| {
            lines
                .iter()
                .find(|f| f["status"] == status && f["path"] == path)
                .unwrap_or_else(|| panic!("no {status} line for {path} (json={json}):\n{log}"))
        };
        for (status, path, user) in [
            ("200", "/v2/", "zuul"),
            ("401", "/v2/", "-"),
            ("403", "/v2/team/app/blobs/uploads/", "reader"),
            ("404", "/v2/team/app/manifests/nope", "zuul"),
            ("200", "/auth/token", "zuul"),
        ] {
            let fields = find(status, path);
            for key in [
                "method",
                "bytes",
                "bytes_in",
                "duration_ms",
                "client",
                "request_id",
            ] {
                assert!(fields.contains_key(key), "{key} missing: {fields:?}");
            }
            assert_eq!(fields["user"], user, "{fields:?}");
        }
        assert_eq!(find("200", "/v2/")["request_id"], "my-id-42");
        assert_ne!(find("404", "/v2/team/app/manifests/nope")["bytes"], "0");
        for secret in ["scope=", "account=", "enV1bDpwdw", "cmVhZGVyOnJwdw", "rpw"] {
            assert!(!log.contains(secret), "{secret} logged:\n{log}");
        }
    }
}

/// CPU time (user + system, in clock ticks) that process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of file descriptors (a bound set above the limit on purpose), the
/// accept loop backs off instead of spinning, and serves again once the
/// connections are gone.
#[test]
fn out_of_descriptors_accept_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  address: 127.0.0.1\n  port: {port}\n  \
             storage: {{driver: filesystem, root: data}}\n  \
             connections: {{header-timeout: 30s, max: 1000}}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    // A hard limit of 64 descriptors, which the binary cannot raise.
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -n 64 && exec \"$0\" serve --config \"$1\""])
        .arg(BIN)
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = Instant::now();
    while !read_log().contains("accepting connections") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited:\n{}",
            read_log()
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no start:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let flood: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(child.id()) - before;
    // Spinning would use about 200 ticks (USER_HZ is 100) in 2 s, and
    // retry thousands of times; a 100 ms back-off retries about 25 times.
    assert!(used < 60, "{used} ticks of CPU in 2 s:\n{}", read_log());
    let failures = read_log().matches("accept failed").count();
    assert!((1..100).contains(&failures), "{failures} accept failures");
    drop(flood);
    let start = Instant::now();
    let (status, _) = http_get(port, "/healthz");
    assert_eq!(status, 200);
    assert!(start.elapsed() < Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
}

/// A tmpfs mounted for one test; unmounted (lazily, so a process still
/// using it cannot keep it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (`8m`) on `path`. The tests run as root (as
    /// CI does); where mounting is impossible the test fails, never skips.
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(path),
            DEFAULT_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the full-disk test needs root): {}",
            out.stderr
        );
        Tmpfs(path.to_path_buf())
    }

    /// Free bytes, as a writer that is not root sees them.
    fn available(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The first error of a spec error body: its code and message.
fn spec_error(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let e = &v["errors"][0];
    (
        e["code"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

/// Assert a 507 whose spec error body says the storage is full.
#[track_caller]
fn assert_storage_full(what: &str, status: u16, body: &[u8]) {
    assert_eq!(status, 507, "{what}: {}", String::from_utf8_lossy(body));
    let (code, message) = spec_error(body);
    assert_eq!(code, "UNKNOWN", "{what}");
    assert!(message.contains("storage is full"), "{what}: {message}");
}

/// Issue 9 (disk full): a push larger than the free space is answered 507
/// with a message that says so (not `500 UNKNOWN`), the partial upload is
/// removed at once (its space is free again, its session unknown), nothing
/// partial is visible, manifest and tag writes on a full disk get 507 too,
/// and once space is free the next push succeeds with no help.
#[test]
fn full_disk_is_refused_clearly_and_heals() {
    use speculum_oci::Digest;
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("data"), "8m");
    let port = free_port();
    let config = prune_config(dir.path(), port, "{grace: 1h}");
    let serve = Serve::start(&config, port, &[]);
    let free = disk.available();
    let big: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let big_digest = Digest::sha256(&big);

    // Chunked: the session is gone with its bytes.
    let (status, headers, _) = http(port, "POST", "/v2/full/app/blobs/uploads/", &[], &[]);
    assert_eq!(status, 202);
    let location = header(&headers, "location").to_string();
    let (status, _, body) = http(port, "PATCH", &location, &[], &big);
    assert_storage_full("PATCH", status, &body);
    assert!(
        disk.available() + (64 << 10) >= free,
        "the partial upload still holds space"
    );
    let (status, _, body) = http(port, "PATCH", &location, &[], b"more");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(spec_error(&body).0, "BLOB_UPLOAD_UNKNOWN");

    // Monolithic, in one POST.
    let path = format!("/v2/full/app/blobs/uploads/?digest={big_digest}");
    let (status, _, body) = http(port, "POST", &path, &[], &big);
    assert_storage_full("POST", status, &body);
    assert!(disk.available() + (64 << 10) >= free);
    let (status, _, _) = http(
        port,
        "GET",
        &format!("/v2/full/app/blobs/{big_digest}"),
        &[],
        &[],
    );
    assert_eq!(status, 404);

    // A full disk (filled by someone else): a manifest push and its tag.
    let blobs_first = push_small_image(port, "full/app", "base", "before").unwrap();
    let filler = dir.path().join("data/filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write_all(&[0; 64 << 10]).is_ok() {}
    drop(file);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blobs_first.blobs[0].0, "size": blobs_first.blobs[0].1.len(),
        },
        "layers": [],
        "annotations": {"pushed": "on a full disk"},
    }))
    .unwrap();
    let (status, _, body) = http(
        port,
        "PUT",
        "/v2/full/app/manifests/full",
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    );
    assert_storage_full("manifest PUT", status, &body);
    let (status, _, _) = http(port, "GET", "/v2/full/app/manifests/full", &[], &[]);
    assert_eq!(status, 404);

    // Space freed: pushes work again, with nothing left over.
    std::fs::remove_file(&filler).unwrap();
    let pushed = push_small_image(port, "full/app", "after", "after").expect("push after");
    assert_eq!(check_pulled(port, &pushed), None);
    assert_eq!(check_pulled(port, &blobs_first), None);
    for scratch in ["uploads", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(dir.path().join("data").join(scratch))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{scratch}/ holds {left:?}");
    }
    let log = serve.log();
    assert!(log.contains("storage is full"), "{log}");
    serve.stop();
    drop(disk);
}
