//! The whole file, parsed and validated: keys, defaults and errors.

use std::time::Duration;

use super::*;
use crate::auth::Access;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::parse(text, Path::new("/etc/speculum/registry.yaml"), |name| {
        (name == "ZUUL_REGISTRY_SECRET").then(|| "s3cr3t".to_string())
    })
}

const ZUUL: &str = r#"
registry:
  address: '::'
  port: 5000
  public-url: https://registry.example.com:5000/
  tls-cert: /tls/cert.pem
  tls-key: /tls/cert.key
  secret: "%(ZUUL_REGISTRY_SECRET)"
  users:
    - name: zuul
      pass: pw
      access: write
    - name: reader
      pass: rpw
      access: read
  storage:
    driver: filesystem
    root: /storage
  expiration: 86400
"#;

#[test]
fn zuul_registry_config() {
    let s = parse(ZUUL).unwrap();
    assert_eq!(s.listen.addr, "[::]:5000".parse().unwrap());
    assert_eq!(
        s.listen.public_url.as_deref(),
        Some("https://registry.example.com:5000")
    );
    assert_eq!(s.auth.secret, Some(SigningSecret::new(b"s3cr3t".to_vec())));
    assert_eq!(s.auth.users.len(), 2);
    assert!(
        !s.auth.anonymous_read,
        "a read user turns anonymous read off"
    );
    assert_eq!(s.storage.root(), Some(Path::new("/storage")));
    assert_eq!(s.retention.len(), 1);
    assert_eq!(s.retention[0].older_than, Duration::from_secs(86400));
    assert!(s.metrics.serve && s.metrics.storage_figures);
    assert_eq!(s.auth.token_expiry, DEFAULT_TOKEN_EXPIRY);
    let TlsSettings::Files(tls) = s.listen.tls else {
        panic!("{:?}", s.listen.tls)
    };
    assert_eq!(tls.cert, PathBuf::from("/tls/cert.pem"));
}

#[test]
fn relative_paths_and_speculum_keys() {
    let s = parse(
            "registry:\n  address: 127.0.0.1\n  port: 0\n  storage: {driver: filesystem, root: data}\n  \
             anonymous-read: false\n  gc: {interval: 1h, grace: 30m, uploads: 2d}\n  uploads-per-user: 7\n  metrics: false\n  \
             log-format: json\n  token-expiry: 5m\n  retention:\n    - {tags: '.*', older-than: 7days}\n",
        )
        .unwrap();
    assert_eq!(s.storage.root(), Some(Path::new("/etc/speculum/data")));
    assert!(!s.auth.anonymous_read);
    assert_eq!(s.gc.interval, Some(Duration::from_secs(3600)));
    assert_eq!(s.gc.grace, Duration::from_secs(1800));
    assert_eq!(s.gc.upload_max_age, Duration::from_secs(2 * 86400));
    assert_eq!(s.storage.uploads_per_user, 7);
    assert!(!s.metrics.serve && !s.metrics.storage_figures);
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.auth.token_expiry, Duration::from_secs(300));
    assert_eq!(s.retention[0].tags, ".*");
    assert_eq!(s.retention[0].repositories, ".*");
    assert_eq!(s.retention[0].older_than, Duration::from_secs(7 * 86400));
    assert!(s.auth.secret.is_none());
    assert!(s.auth.anonymous_read || s.auth.users.is_empty());
    assert_eq!(
        s.listen.connections,
        crate::limits::ConnectionLimits::default()
    );
}

#[test]
fn connection_limits() {
    let s = parse(&format!(
        "{BASE}  connections: {{header-timeout: 5s, body-idle-timeout: 1m, \
             keep-alive-timeout: 90, max: 500}}\n"
    ))
    .unwrap();
    assert_eq!(s.listen.connections.header_timeout, Duration::from_secs(5));
    assert_eq!(
        s.listen.connections.body_idle_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(
        s.listen.connections.keep_alive_timeout,
        Duration::from_secs(90)
    );
    assert_eq!(s.listen.connections.max_connections, Some(500));
    let e = error(&format!("{BASE}  connections: {{header-timeout: 0}}\n"));
    assert!(e.contains("registry.connections.header-timeout"), "{e}");
    let e = error(&format!("{BASE}  connections: {{max: 0}}\n"));
    assert!(e.contains("registry.connections.max"), "{e}");
    let e = error(&format!("{BASE}  connections: {{idle: 1}}\n"));
    assert!(e.contains("idle"), "{e}");
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const BASE: &str =
    "registry:\n  address: 127.0.0.1\n  port: 5000\n  storage: {driver: filesystem, root: /s}\n";

#[test]
fn errors_name_the_key_and_the_file() {
    let e = error(&format!("{BASE}  colour: blue\n"));
    assert!(e.starts_with("/etc/speculum/registry.yaml: "), "{e}");
    assert!(e.contains("colour"), "{e}");
    let e = error(&format!(
        "{BASE}  users: [{{name: a, pass: b, access: admin}}]\n"
    ));
    assert!(e.contains("registry.users[0].access"), "{e}");
    assert!(e.contains("admin"), "{e}");
    let e = error(&format!("{BASE}  gc: {{interval: soon}}\n"));
    assert!(e.contains("registry.gc.interval"), "{e}");
    let e = error(&format!(
        "{BASE}  retention: [{{tags: '(', older-than: 1}}]\n"
    ));
    assert!(e.contains("registry.retention[0].tags"), "{e}");
    let e = error("registry:\n  address: localhost\n  port: 5000\n");
    assert!(e.contains("registry.address"), "{e}");
    let e = error("registry:\n  address: ::1\n  port: 99999\n");
    assert!(e.contains("registry.port"), "{e}");
    let e = error("registry:\n  address: ::1\n  port: 1\n  storage: {driver: swift, root: x}\n");
    assert!(e.contains("registry.storage.driver"), "{e}");
    let e = error(&format!("{BASE}  tls-cert: x\n"));
    assert!(e.contains("registry.tls-key"), "{e}");
    let e = error(&format!("{BASE}  public-url: registry.example.com\n"));
    assert!(e.contains("registry.public-url"), "{e}");
    let e = error(&format!("{BASE}  anonymous-read: maybe\n"));
    assert!(e.contains("registry.anonymous-read"), "{e}");
    let e = error("other: 1\n");
    assert!(e.contains("other"), "{e}");
}

#[test]
fn environment_substitution() {
    let s = parse(&format!("{BASE}  secret: '%(ZUUL_REGISTRY_SECRET)'\n")).unwrap();
    assert_eq!(s.auth.secret.unwrap().as_bytes(), b"s3cr3t");
    let e = error(&format!("{BASE}  secret: '%(ZUUL_MISSING)'\n"));
    assert!(e.contains("ZUUL_MISSING"), "{e}");
    assert!(e.starts_with("/etc/speculum/registry.yaml"), "{e}");
    // Not ours: left alone.
    let s = parse(&format!("{BASE}  secret: '%(HOME) %(ZUUL_x'\n")).unwrap();
    assert_eq!(s.auth.secret.unwrap().as_bytes(), b"%(HOME) %(ZUUL_x");
}

#[test]
fn explicit_anonymous_read_wins() {
    let s = parse(&format!(
        "{BASE}  anonymous-read: true\n  users: [{{name: r, pass: p, access: read}}]\n"
    ))
    .unwrap();
    assert!(s.auth.anonymous_read);
    let s = parse(&format!(
        "{BASE}  users: [{{name: w, pass: p, access: write}}]\n"
    ))
    .unwrap();
    assert!(s.auth.anonymous_read);
}

#[test]
fn htpasswd_files() {
    let dir = tempfile::tempdir().unwrap();
    // Cost 4 keeps the test fast.
    let hash = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
    std::fs::write(dir.path().join("w"), format!("# writers\n\nalice:{hash}\n")).unwrap();
    std::fs::write(dir.path().join("r"), format!("bob:{hash}\n")).unwrap();
    std::fs::write(dir.path().join("md5"), "carol:$apr1$abc$def\n").unwrap();
    let path = dir.path().join("registry.yaml");
    let text = format!("{BASE}  htpasswd: w\n  htpasswd-read: r\n");
    let s = Settings::parse(&text, &path, |_| None).unwrap();
    assert_eq!(s.auth.users.len(), 2);
    assert_eq!(s.auth.users[0].access(), Access::Write);
    assert_eq!(s.auth.users[1].access(), Access::Read);
    assert!(!s.auth.anonymous_read);
    let text = format!("{BASE}  htpasswd: md5\n");
    let e = Settings::parse(&text, &path, |_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("registry.htpasswd"), "{e}");
    assert!(e.contains("md5:1"), "{e}");
    let text = format!("{BASE}  htpasswd: missing\n");
    let e = Settings::parse(&text, &path, |_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("registry.htpasswd"), "{e}");
}

#[test]
fn the_serve_config_takes_an_upstreams_list() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hub-token"), "tok\n").unwrap();
    let yaml = r#"
registry:
  address: 127.0.0.1
  port: 5000
  storage: {driver: filesystem, root: store}
  upstreams:
    - namespace: docker.io
      url: https://registry-1.docker.io
      username: mirror
      password-file: hub-token
      tag-ttl: 10m
      repositories: "library/.*"
    - namespace: quay.io
      url: https://quay.io
      tag-ttl: 60
"#;
    let path = dir.path().join("serve.yaml");
    let s = Settings::parse(yaml, &path, |_| None).unwrap();
    assert_eq!(s.upstreams.len(), 2);
    assert_eq!(s.upstreams[0].namespace, "docker.io");
    assert_eq!(
        s.upstreams[0].credentials,
        Some(("mirror".into(), "tok".into()))
    );
    assert_eq!(s.upstreams[0].tag_ttl, Duration::from_secs(600));
    assert_eq!(s.upstreams[1].tag_ttl, Duration::from_secs(60));

    // No upstreams: the default.
    let bare = yaml.split("  upstreams:").next().unwrap();
    let s = Settings::parse(bare, &path, |_| None).unwrap();
    assert!(s.upstreams.is_empty());

    // Errors name the key under `registry.`.
    let bad = yaml.replace("tag-ttl: 60", "tag-ttl: soon");
    let e = Settings::parse(&bad, &path, |_| None).unwrap_err();
    assert_eq!(e.key(), Some("registry.upstreams[1].tag-ttl"), "{e}");
    let bad = yaml.replace("tag-ttl: 60", "tagttl: 60");
    let e = Settings::parse(&bad, &path, |_| None).unwrap_err();
    assert!(e.to_string().contains("tagttl"), "{e}");
}

fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::parse(text, Path::new("/etc/speculum/registry.yaml"), |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_string())
    })
}

const S3: &str = "registry:\n  address: 127.0.0.1\n  port: 5000\n  storage:\n    driver: s3\n    bucket: speculum\n";
/// Environment variables a test parses with.
type Vars = &'static [(&'static str, &'static str)];

const KEYS: Vars = &[
    ("AWS_ACCESS_KEY_ID", "test:tester"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
];

#[test]
fn s3_storage_defaults_and_credentials_from_the_environment() {
    let s = parse_with(
        &format!("{S3}    endpoint: http://127.0.0.1:8080/\n    prefix: site/registry\n"),
        KEYS,
    )
    .unwrap();
    let StorageBackend::S3(s3) = &s.storage.backend else {
        panic!("{:?}", s.storage.backend)
    };
    assert_eq!(s3.config.bucket, "speculum");
    assert_eq!(s3.config.endpoint.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(s3.config.region, "us-east-1");
    assert_eq!(s3.config.prefix, "site/registry");
    assert!(s3.config.path_style);
    assert_eq!(s3.config.access_key_id, "test:tester");
    assert_eq!(s3.config.secret_access_key, "testing");
    assert_eq!(s3.config.part_size, 8 << 20);
    assert!(!s3.redirect);
    assert_eq!(s.storage.root(), None);
}

#[test]
fn s3_storage_credentials_and_ca_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let id = file("id", "AKIDEXAMPLE\n");
    let secret = file("secret", "wJalrXUtnFEMI\n");
    let ca = file(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let text = format!(
        "{S3}    access-key-id-file: {id}\n    secret-access-key-file: {secret}\n    ca: {ca}\n    \
         redirect: true\n    part-size-mib: 16\n    path-style: false\n    region: eu-west-1\n"
    );
    // The files win over the environment.
    let s = parse_with(&text, KEYS).unwrap();
    let StorageBackend::S3(s3) = &s.storage.backend else {
        panic!("{:?}", s.storage.backend)
    };
    assert_eq!(s3.config.access_key_id, "AKIDEXAMPLE");
    assert_eq!(s3.config.secret_access_key, "wJalrXUtnFEMI");
    assert!(
        s3.config
            .ca_pem
            .as_deref()
            .unwrap()
            .starts_with(b"-----BEGIN")
    );
    assert!(s3.redirect && !s3.config.path_style);
    assert_eq!(s3.config.part_size, 16 << 20);
    assert_eq!(s3.config.region, "eu-west-1");
    // Debug output never shows the secret.
    assert!(!format!("{s3:?}").contains("wJalrXUtnFEMI"));

    let not_pem = file("not.pem", "hello\n");
    let e = parse_with(&format!("{S3}    ca: {not_pem}\n"), KEYS).unwrap_err();
    assert!(e.to_string().contains("registry.storage.ca"), "{e}");
    let e = parse_with(
        &format!("{S3}    secret-access-key-file: /nonexistent\n"),
        KEYS,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("registry.storage.secret-access-key-file"),
        "{e}"
    );
}

#[test]
fn s3_storage_errors_name_the_key() {
    let cases: &[(&str, Vars, &str)] = &[
        ("", &[], "registry.storage.access-key-id-file"),
        (
            "",
            &[("AWS_ACCESS_KEY_ID", "x")],
            "registry.storage.secret-access-key-file",
        ),
        (
            "    secret-access-key: inline\n",
            KEYS,
            "registry.storage.secret-access-key",
        ),
        (
            "    access-key-id: inline\n",
            KEYS,
            "registry.storage.access-key-id",
        ),
        (
            "    endpoint: s3.example.org\n",
            KEYS,
            "registry.storage.endpoint",
        ),
        (
            "    part-size-mib: 4\n",
            KEYS,
            "registry.storage.part-size-mib",
        ),
        ("    root: /data\n", KEYS, "registry.storage.root"),
        ("    redirect: sometimes\n", KEYS, "redirect"),
    ];
    for (extra, vars, key) in cases {
        let e = parse_with(&format!("{S3}{extra}"), vars)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{extra:?}: {e}");
    }
    let e = parse_with(
        &S3.replace("bucket: speculum", "bucket: Not_A_Bucket"),
        KEYS,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("registry.storage.bucket"), "{e}");
    let e = parse_with(&S3.replace("    bucket: speculum\n", ""), KEYS)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("registry.storage.bucket") && e.contains("required"),
        "{e}"
    );
    // The secret's message points at the file key and the variable.
    let e = parse_with(&format!("{S3}    secret-access-key: inline\n"), KEYS)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("secret-access-key-file") && e.contains("AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );
    // S3 keys with the filesystem driver.
    let e = error(&BASE.replace("root: /s}", "root: /s, bucket: b}"));
    assert!(
        e.contains("registry.storage.bucket") && e.contains("s3 only"),
        "{e}"
    );
}
