//! The lazy pull step (issue 10), end to end: a real intermediate registry
//! (`speculum-registry serve`, plain HTTP, a password user, Bearer tokens),
//! a real buildset registry (`speculum-registry buildset`, TLS), the helper
//! as built, and skopeo pulling from the buildset registry.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use speculum_testkit::{
    BuildsetOptions, BuildsetRegistry, Distribution, DistributionOptions, ImageSpec, IndexSpec,
    free_port, require_tool, run, workspace_binary,
};

use crate::common::*;

const IR_USER: &str = "ir-user";
/// Distinctive, so that finding it anywhere it must not be is certain.
const IR_PASSWORD: &str = "ir-pass-7f3a9c-never-on-a-node";
const BUILD_FAR: &str = "1111111111111111111111111111111a";
const BUILD_NEAR: &str = "2222222222222222222222222222222b";

/// `speculum-registry serve` as an intermediate registry: plain HTTP on
/// loopback, one write user, no anonymous read, tokens valid for
/// `token_expiry`. Killed on drop.
struct Ir {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Ir {
    fn start(dir: &Path, token_expiry: &str) -> Ir {
        let port = free_port();
        let config = dir.join("ir.yaml");
        std::fs::write(
            &config,
            format!(
                "registry:\n  address: 127.0.0.1\n  port: {port}\n  \
                 secret: a-test-secret-of-some-length\n  token-expiry: {token_expiry}\n  \
                 anonymous-read: false\n  \
                 users: [{{name: {IR_USER}, pass: {IR_PASSWORD}, access: write}}]\n  \
                 storage: {{driver: filesystem, root: {}}}\n",
                dir.join("ir-data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("ir.log")).unwrap();
        let child = Command::new(workspace_binary("speculum-registry"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ir = Ir {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "serve did not start:\n{}",
                ir.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ir
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ir.log")).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `intermediate_registry` dict (with the password: the executor's
    /// view).
    fn vars(&self) -> serde_json::Value {
        serde_json::json!({"host": "127.0.0.1", "port": self.port,
            "username": IR_USER, "password": IR_PASSWORD, "insecure": true})
    }

    /// Push an OCI layout image (all platforms) to `<repo>:<build>_<tag>`.
    fn push(&self, layout_ref: &str, repo: &str, build: &str, tag: &str) {
        speculum(&[
            "copy",
            layout_ref,
            &format!("{}/{repo}:{build}_{tag}", self.host()),
            "--all",
            "--dest-insecure",
            "--dest-creds",
            &format!("{IR_USER}:{IR_PASSWORD}"),
        ])
        .assert_success();
    }

    /// The zuul.artifacts entry a build job would have returned.
    fn artifact(&self, repo: &str, build: &str, tag: &str) -> serde_json::Value {
        serde_json::json!({
            "name": format!("{repo}:{tag}"),
            "url": format!("docker://{}/{repo}:{build}_{tag}", self.host()),
            "metadata": {"type": "container_image", "repository": repo, "tag": tag},
        })
    }

    /// How many blob GETs it answered 200, from its `/metrics`.
    fn blob_gets(&self) -> u64 {
        let text = reqwest_get(&format!("http://{}/metrics", self.host()));
        text.lines()
            .find(|l| {
                l.starts_with(
                    r#"speculum_http_requests_total{route="blob",method="GET",status="200"}"#,
                )
            })
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

impl Drop for Ir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reqwest_get(url: &str) -> String {
    speculum_client::install_crypto_provider();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
}

/// A buildset registry storing under `root`, so tests can see what it holds.
fn buildset(root: &Path) -> Reg {
    Reg::Spec(BuildsetRegistry::start(
        BuildsetOptions::new(workspace_binary("speculum-registry")).root(root),
    ))
}

/// The `buildset_registry` dict.
fn br_vars(br: &Reg) -> serde_json::Value {
    let Reg::Spec(b) = br else { unreachable!() };
    let i = b.info();
    serde_json::json!({"host": i.host, "port": i.port, "username": i.username,
        "password": i.password, "cert": i.cert})
}

/// Write the pull step's vars file; returns its path.
fn vars_file(
    dir: &Path,
    br: &Reg,
    ir: &serde_json::Value,
    artifacts: &[serde_json::Value],
) -> PathBuf {
    let path = dir.join("pull.json");
    let body = serde_json::json!({
        "buildset_registry": br_vars(br),
        "intermediate_registry": ir,
        "artifacts": artifacts,
    });
    std::fs::write(&path, serde_json::to_vec(&body).unwrap()).unwrap();
    path
}

fn pull_lazy(vars: &Path) -> speculum_testkit::CmdOutput {
    speculum(&[
        "zuul",
        "pull-intermediate",
        "--vars",
        vars.to_str().unwrap(),
        "--method",
        "lazy",
        "--json",
    ])
}

/// Whether the buildset registry's storage holds the blob.
fn br_holds(root: &Path, digest: &impl std::fmt::Display) -> bool {
    let d = digest.to_string();
    let (algorithm, hex) = d.split_once(':').unwrap();
    root.join("blobs")
        .join(algorithm)
        .join(&hex[..2])
        .join(hex)
        .exists()
}

/// skopeo copy of the linux/amd64 image from the buildset registry.
fn skopeo_pull(br: &Reg, image: &str, dest: &Path) -> speculum_testkit::CmdOutput {
    require_tool("skopeo");
    let Reg::Spec(b) = br else { unreachable!() };
    run(
        Command::new("skopeo")
            .args(["--insecure-policy", "--override-os", "linux"])
            .args(["--override-arch", "amd64", "copy", "--src-cert-dir"])
            .arg(b.cert_dir())
            .arg(b.docker_ref(image))
            .arg(format!("oci:{}:pulled", dest.display())),
        Duration::from_secs(120),
    )
}

/// Two changes ahead provide `org/app:latest` (the nearest one a
/// two-platform index), a third image is never pulled: the tag is bound to
/// the nearest change's index at once, and a pull of linux/amd64 moves that
/// platform's blobs and nothing else.
#[test]
fn lazy_pull_serves_the_nearest_change_and_moves_only_pulled_blobs() {
    let dir = tmp();
    let ir = Ir::start(dir.path(), "10m");
    let far = ImageSpec::new(&[150_000])
        .seed(91)
        .write_layout(&dir.path().join("far"), "v");
    let near = IndexSpec::new(&[120_000, 80_000])
        .seed(92)
        .write_layout(&dir.path().join("near"), "v");
    let tool = ImageSpec::new(&[100_000])
        .seed(93)
        .write_layout(&dir.path().join("tool"), "v");
    ir.push(
        &far.oci_ref_tagged(),
        "docker.io/org/app",
        BUILD_FAR,
        "latest",
    );
    ir.push(&near.oci_ref_tagged(), "org/app", BUILD_NEAR, "latest");
    ir.push(&tool.oci_ref_tagged(), "quay.io/org/tool", BUILD_NEAR, "v1");
    let artifacts = [
        ir.artifact("docker.io/org/app", BUILD_FAR, "latest"),
        ir.artifact("org/app", BUILD_NEAR, "latest"),
        ir.artifact("quay.io/org/tool", BUILD_NEAR, "v1"),
    ];
    let root = dir.path().join("br");
    let br = buildset(&root);
    let vars = vars_file(dir.path(), &br, &ir.vars(), &artifacts);

    let out = pull_lazy(&vars).assert_success();
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["method"], "lazy", "{report}");
    assert_eq!(report["copies"], serde_json::json!([]));
    let registered = report["registered"].as_array().unwrap();
    assert_eq!(registered.len(), 2, "{report}");
    assert_eq!(registered[0]["destination"], "org/app:latest");
    assert_eq!(registered[0]["digest"], near.index.to_string());
    assert_eq!(registered[0]["children"], 2);
    assert_eq!(registered[1]["destination"], "quay.io/org/tool:v1");
    assert_eq!(registered[1]["digest"], tool.manifest.to_string());
    assert_eq!(report["superseded"][0]["url"], artifacts[0]["url"]);
    assert_eq!(report["sources"][0]["auth"], "token");
    assert_eq!(report["sources"][0]["token_expires_in"], 600);
    assert_eq!(ir.blob_gets(), 0, "registration moved blobs");

    // The tag is the nearest change's index (`inspect` of an index reads
    // no blob; of an image it would read the config, so the tool image is
    // left alone).
    assert_eq!(digest_of(&br, "org/app:latest"), near.index.to_string());
    let pulled = dir.path().join("pulled");
    skopeo_pull(&br, "org/app:latest", &pulled).assert_success();
    let (amd64, arm64) = (&near.children[0], &near.children[1]);
    assert_eq!(amd64.architecture, "amd64");
    let wanted: Vec<_> = std::iter::once(&amd64.config)
        .chain(&amd64.layers)
        .collect();
    for blob in &wanted {
        assert!(br_holds(&root, blob), "{blob} was pulled but is not stored");
    }
    assert_eq!(
        ir.blob_gets(),
        wanted.len() as u64,
        "one download per pulled blob"
    );
    let never = std::iter::once(&arm64.config)
        .chain(&arm64.layers)
        .chain(std::iter::once(&far.config))
        .chain(&far.layers)
        .chain(std::iter::once(&tool.config))
        .chain(&tool.layers);
    for blob in never {
        assert!(!br_holds(&root, blob), "{blob} was never pulled but moved");
    }

    // A second pull is served from the buildset registry alone.
    skopeo_pull(&br, "org/app:latest", &dir.path().join("again")).assert_success();
    assert_eq!(ir.blob_gets(), wanted.len() as u64);
}

/// What leaves the executor for the buildset registry holds a pull token,
/// never the intermediate registry's password; the buildset registry's log
/// does not hold it either.
#[test]
fn lazy_registration_carries_a_token_never_the_password() {
    let dir = tmp();
    let ir = Ir::start(dir.path(), "10m");
    let image = ImageSpec::new(&[10_000])
        .seed(94)
        .write_layout(&dir.path().join("img"), "v");
    ir.push(&image.oci_ref_tagged(), "org/app", BUILD_NEAR, "latest");
    let br = buildset(&dir.path().join("br"));
    let vars_path = vars_file(
        dir.path(),
        &br,
        &ir.vars(),
        &[ir.artifact("org/app", BUILD_NEAR, "latest")],
    );
    let vars: speculum_client::zuul::PullVars =
        speculum_client::zuul::read_vars(&vars_path).unwrap();
    let registration = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(speculum_client::zuul::lazy_registration(&vars))
        .unwrap();
    let body = serde_json::to_string(&registration).unwrap();
    assert!(
        !body.contains(IR_PASSWORD),
        "the password is in the registration"
    );
    assert!(
        !body.contains(IR_USER),
        "the user name is in the registration"
    );
    let token = registration.sources[0].token.clone().unwrap();
    assert!(token.len() > 20, "{token}");

    let out = pull_lazy(&vars_path).assert_success();
    assert!(!out.stdout.contains(&token) && !out.stderr.contains(&token));
    assert!(!out.stdout.contains(IR_PASSWORD) && !out.stderr.contains(IR_PASSWORD));
    let Reg::Spec(b) = &br else { unreachable!() };
    assert!(!b.log().contains(IR_PASSWORD));
    assert_eq!(digest_of(&br, "org/app:latest"), image.manifest.to_string());
}

/// Once the token has expired, a blob the buildset registry does not hold
/// cannot be fetched: the pull fails, naming the intermediate registry, and
/// the tag still names the speculative image (never another one).
#[test]
fn lazy_pull_with_an_expired_token_fails_loudly() {
    let dir = tmp();
    let ir = Ir::start(dir.path(), "10s");
    let image = ImageSpec::new(&[20_000])
        .seed(95)
        .write_layout(&dir.path().join("img"), "v");
    ir.push(&image.oci_ref_tagged(), "org/app", BUILD_NEAR, "latest");
    let br = buildset(&dir.path().join("br"));
    let vars = vars_file(
        dir.path(),
        &br,
        &ir.vars(),
        &[ir.artifact("org/app", BUILD_NEAR, "latest")],
    );
    pull_lazy(&vars).assert_success();
    std::thread::sleep(Duration::from_secs(12));

    let out = skopeo_pull(&br, "org/app:latest", &dir.path().join("pulled"));
    assert!(!out.status.success(), "pulled with an expired token");
    // skopeo shows the status only; the answer's message names the cause.
    let copy = args(&[
        &s("copy"),
        &s(&br.r("org/app:latest")),
        &s(&format!("oci:{}:x", dir.path().join("copied").display())),
        &br.flags("src"),
    ]);
    let out = run_args(&copy);
    assert!(!out.status.success(), "copied with an expired token");
    assert!(
        out.stderr
            .contains(&format!("intermediate registry {} failed", ir.host()))
            && out.stderr.contains("token was refused"),
        "{}",
        out.stderr
    );
    assert_eq!(digest_of(&br, "org/app:latest"), image.manifest.to_string());
    assert_eq!(ir.blob_gets(), 0);
}

/// An intermediate registry that speaks HTTP Basic only cannot hand out a
/// token: lazy is refused (exit 3, nothing registered), copy still works.
#[test]
fn lazy_is_refused_for_a_basic_only_registry() {
    let dir = tmp();
    let ir = Distribution::start(DistributionOptions::new().auth("basic-user", "basic-pass"));
    let ir_port: u16 = ir.addr().rsplit(':').next().unwrap().parse().unwrap();
    let image = ImageSpec::new(&[10_000])
        .seed(96)
        .write_layout(&dir.path().join("img"), "v");
    let dest = format!("{}/org/app:{BUILD_NEAR}_latest", ir.addr());
    speculum(&[
        "copy",
        &image.oci_ref_tagged(),
        &dest,
        "--dest-insecure",
        "--dest-creds",
        "basic-user:basic-pass",
    ])
    .assert_success();
    let ir_vars = serde_json::json!({"host": "127.0.0.1", "port": ir_port,
        "username": "basic-user", "password": "basic-pass", "insecure": true});
    let artifact = serde_json::json!({
        "name": "org/app:latest", "url": format!("docker://{dest}"),
        "metadata": {"type": "container_image", "repository": "org/app", "tag": "latest"},
    });
    let br = Reg::start(Kind::Speculum);
    let vars = vars_file(dir.path(), &br, &ir_vars, &[artifact]);

    let out = pull_lazy(&vars);
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("only HTTP Basic") && out.stderr.contains("copy method"),
        "{}",
        out.stderr
    );
    let inspect = args(&[&s("inspect"), &s(&br.r("org/app:latest")), &br.flags("")]);
    assert!(
        !run_args(&inspect).status.success(),
        "something was registered"
    );

    speculum(&[
        "zuul",
        "pull-intermediate",
        "--vars",
        vars.to_str().unwrap(),
    ])
    .assert_success();
    assert_eq!(digest_of(&br, "org/app:latest"), image.manifest.to_string());
}

/// The registration endpoint of the real binary: strangers get 401, a bad
/// body a 400 naming the field, and `serve` has no such endpoint.
#[test]
fn the_registration_endpoint_checks_who_and_what() {
    let dir = tmp();
    let ir = Ir::start(dir.path(), "10m");
    let br = buildset(&dir.path().join("br"));
    let Reg::Spec(b) = &br else { unreachable!() };
    let cert =
        reqwest::Certificate::from_pem(b.info().cert.as_deref().unwrap().as_bytes()).unwrap();
    speculum_client::install_crypto_provider();
    let client = reqwest::Client::builder()
        .tls_certs_merge([cert])
        .build()
        .unwrap();
    let url = format!("{}/speculum/v1/speculative", b.url());
    let (user, password) = (b.info().username.clone(), b.info().password.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put = |auth: Option<(&str, &str)>, body: &str| {
        let mut req = client.put(&url).body(body.to_string());
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        rt.block_on(async {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                status,
                serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
            )
        })
    };
    let empty = r#"{"sources":[],"images":[]}"#;
    assert_eq!(put(None, empty).0, 401);
    assert_eq!(put(Some((&user, "wrong")), empty).0, 401);
    let (status, body) = put(Some((&user, &password)), "not json");
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (400, Some("REGISTRATION_INVALID"))
    );
    let bad_name = r#"{"sources":[{"registry":"ir:1","token":"t"}],"images":[{"repository":"Bad","tag":"x",
        "source":{"registry":"ir:1","repository":"a","reference":"b"},
        "manifest":{"media_type":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00","data":""}}]}"#;
    let (status, body) = put(Some((&user, &password)), bad_name);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["code"], "NAME_INVALID");
    assert_eq!(body["errors"][0]["detail"]["field"], "images[0].repository");
    assert_eq!(
        put(Some((&user, &password)), empty),
        (200, serde_json::json!({"registered": []}))
    );

    let plain = reqwest::Client::new();
    let status = rt.block_on(async {
        plain
            .put(format!("http://{}/speculum/v1/speculative", ir.host()))
            .basic_auth(IR_USER, Some(IR_PASSWORD))
            .body(empty)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 404, "serve must not take registrations");
}
