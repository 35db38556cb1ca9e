//! Bearer tokens (with scopes checked by a token-server front) and the Docker
//! Hub and Quay tag APIs.

use speculum_testkit::ImageSpec;

use crate::common::*;
use crate::mock::*;

#[test]
fn bearer_flow_with_scoped_tokens_and_mount() {
    let upstream = Reg::start(Kind::Distribution);
    let proxy = BearerProxy::start(&upstream.addr(), "tokuser", "tokpass");
    let addr = proxy.server.addr.clone();
    let dir = tmp();
    let img = ImageSpec::new(&[100_000, 50_000])
        .seed(81)
        .write_layout(dir.path(), "v1");
    // Without credentials the token server refuses.
    let out = speculum(&[
        "copy",
        &img.oci_ref_tagged(),
        &format!("{addr}/b/app:v1"),
        "--dest-insecure",
    ])
    .assert_failure();
    assert!(out.stderr.contains("no credentials"), "{}", out.stderr);
    let j = speculum_json(&[
        "copy",
        &img.oci_ref_tagged(),
        &format!("{addr}/b/app:v1"),
        "--dest-insecure",
        "--dest-creds",
        "tokuser:tokpass",
        "--json",
    ]);
    assert_eq!(j["digest"], img.manifest.to_string());
    // A mount asks for pull on the source and push on the target in one token.
    let j = speculum_json(&[
        "copy",
        &format!("{addr}/b/app:v1"),
        &format!("{addr}/b/mounted:v1"),
        "--insecure",
        "--creds",
        "tokuser:tokpass",
        "--json",
    ]);
    assert_eq!(j["bytes_copied"], 0, "{j}");
    assert!(j["bytes_mounted"].as_u64().unwrap() > 0, "{j}");
    let reqs = proxy.token_requests();
    assert!(
        reqs.iter()
            .any(|s| s.contains(&"repository:b/app:pull".to_string())
                && s.contains(&"repository:b/mounted:pull,push".to_string())),
        "{reqs:?}"
    );
    // Tokens are cached per scope: far fewer token requests than registry requests.
    assert!(reqs.len() < 12, "{reqs:?}");
    let out = speculum(&[
        "tags",
        &format!("{addr}/b/mounted"),
        "--insecure",
        "--creds",
        "tokuser:tokpass",
    ])
    .assert_success();
    assert_eq!(out.stdout, "v1\n");
    assert!(!out.stderr.contains("tokpass"));
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn seeded() -> (SaasState, Server) {
    let st = SaasState::default();
    let t = now();
    let tags = vec![
        ("change_1_latest".to_string(), t - 3 * 86400),
        ("change_2_latest".to_string(), t - 60),
        ("gate_latest".to_string(), t - 86400 - 100),
        ("latest".to_string(), t - 10 * 86400),
        ("change_3_latest".to_string(), t - 86400 + 100),
    ];
    st.tags.lock().unwrap().insert("ns/app".into(), tags);
    let server = saas_server(st.clone());
    (st, server)
}

fn remaining(st: &SaasState) -> Vec<String> {
    let mut v: Vec<String> = st.tags.lock().unwrap()["ns/app"]
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn docker_hub_tag_api() {
    let (st, server) = seeded();
    let hub = format!("http://{}", server.addr);
    let creds = format!("{HUB_USER}:{HUB_PASS}");
    // No credentials: a clear error.
    let out = speculum(&[
        "delete-tag",
        "docker.io/ns/app:change_2_latest",
        "--hub-url",
        &hub,
    ])
    .assert_failure();
    assert!(out.stderr.contains("needs credentials"), "{}", out.stderr);
    // Auto picks the Hub API for docker.io.
    speculum(&[
        "delete-tag",
        "docker.io/ns/app:change_2_latest",
        "--hub-url",
        &hub,
        "--creds",
        &creds,
    ])
    .assert_success();
    assert_eq!(
        st.deletes.lock().unwrap().as_slice(),
        ["hub:ns/app:change_2_latest"]
    );
    let out = speculum(&[
        "delete-tag",
        "ns/app:change_2_latest",
        "--hub-url",
        &hub,
        "--creds",
        &creds,
    ])
    .assert_failure();
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    // Clean by last_updated, whole seconds, across pages.
    let dry = speculum_json(&[
        "clean",
        "docker.io/ns/app",
        "--match",
        "^change_.*$|^gate_.*$",
        "--older-than",
        "86400s",
        "--dry-run",
        "--json",
        "--hub-url",
        &hub,
        "--creds",
        &creds,
    ]);
    let would: Vec<&str> = dry["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["result"] == "would-remove")
        .map(|t| t["tag"].as_str().unwrap())
        .collect();
    assert_eq!(would, ["change_1_latest", "gate_latest"]);
    speculum(&[
        "clean",
        "docker.io/ns/app",
        "--match",
        "^change_.*$|^gate_.*$",
        "--older-than",
        "1day",
        "--hub-url",
        &hub,
        "--creds",
        &creds,
    ])
    .assert_success();
    assert_eq!(remaining(&st), ["change_3_latest", "latest"]);
    // Credentials from an auth file's docker.io entry.
    let dir = tmp();
    let auth = dir.path().join("config.json");
    std::fs::write(&auth, format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"username":"{HUB_USER}","password":"{HUB_PASS}"}}}}}}"#)).unwrap();
    speculum_env(
        &[
            "delete-tag",
            "ns/app:latest",
            "--api",
            "dockerhub",
            "--hub-url",
            &hub,
        ],
        &[("REGISTRY_AUTH_FILE", auth.to_str().unwrap())],
    )
    .assert_success();
    assert_eq!(remaining(&st), ["change_3_latest"]);
}

#[test]
fn quay_tag_api() {
    let (st, server) = seeded();
    let quay = format!("http://{}", server.addr);
    let out = speculum(&[
        "delete-tag",
        "quay.io/ns/app:change_2_latest",
        "--quay-url",
        &quay,
    ])
    .assert_failure();
    assert!(out.stderr.contains("token"), "{}", out.stderr);
    speculum(&[
        "delete-tag",
        "quay.io/ns/app:change_2_latest",
        "--quay-url",
        &quay,
        "--quay-token",
        QUAY_TOKEN,
    ])
    .assert_success();
    assert_eq!(
        st.deletes.lock().unwrap().as_slice(),
        ["quay:ns/app:change_2_latest"]
    );
    let out = speculum_env(
        &[
            "clean",
            "quay.io/ns/app",
            "--match",
            "^change_",
            "--older-than",
            "1d",
            "--json",
            "--quay-url",
            &quay,
        ],
        &[("QUAY_API_TOKEN", QUAY_TOKEN)],
    )
    .assert_success();
    assert!(!out.stdout.contains(QUAY_TOKEN) && !out.stderr.contains(QUAY_TOKEN));
    assert_eq!(remaining(&st), ["change_3_latest", "gate_latest", "latest"]);
    // --api quay works for a Quay instance under any host name.
    speculum(&[
        "delete-tag",
        "registry.example/ns/app:gate_latest",
        "--api",
        "quay",
        "--quay-url",
        &quay,
        "--quay-token",
        QUAY_TOKEN,
    ])
    .assert_success();
    assert_eq!(remaining(&st), ["change_3_latest", "latest"]);
}
