//! Anonymous pull is allowed; push and delete need `zuul` and the right password.

use speculum_testkit::{DEFAULT_TIMEOUT, ImageSpec, layout_manifest, run, run_ok};

use crate::{Clients, digest_of, registry};

#[test]
fn anonymous_pull_works() {
    let registry = registry();
    let clients = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[200_000, 100_000])
        .seed(3)
        .write_layout(src.path(), "v1");
    let dest = registry.docker_ref("anon/img:v1");
    run_ok(
        clients
            .skopeo()
            .args(["copy", "--dest-creds", &registry.creds(), "--dest-cert-dir"])
            .arg(registry.cert_dir())
            .args([&image.oci_ref(), &dest]),
    );
    // No credentials anywhere: clients has an empty auth file.
    let back = tempfile::tempdir().unwrap();
    run_ok(
        clients
            .skopeo()
            .args(["copy", "--src-cert-dir"])
            .arg(registry.cert_dir())
            .arg(&dest)
            .arg(format!("oci:{}:v1", back.path().display())),
    );
    assert_eq!(layout_manifest(back.path(), "v1").digest, image.manifest);
    let tags = run_ok(
        clients
            .skopeo()
            .args(["list-tags", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(registry.docker_ref("anon/img")),
    );
    let tags: serde_json::Value = serde_json::from_str(&tags.stdout).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
}

#[test]
fn push_without_or_with_wrong_credentials_is_refused() {
    let registry = registry();
    let clients = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[100_000])
        .seed(4)
        .write_layout(src.path(), "v1");
    let dest = registry.docker_ref("locked/img:v1");
    let wrong = format!("{}:not-the-password", registry.info().username);
    let attempts: [&[&str]; 3] = [
        &[],
        &["--dest-creds", &wrong],
        &["--dest-creds", "intruder:x"],
    ];
    for creds in attempts {
        let out = run(
            clients
                .skopeo()
                .args(["copy", "--retry-times", "0", "--dest-cert-dir"])
                .arg(registry.cert_dir())
                .args(creds)
                .args([&image.oci_ref(), &dest]),
            DEFAULT_TIMEOUT,
        )
        .assert_failure();
        let err = out.stderr.to_lowercase();
        assert!(
            err.contains("unauthorized") || err.contains("401") || err.contains("authentication"),
            "push with {creds:?} failed for another reason: {}",
            out.describe()
        );
    }
    // Nothing was stored.
    run(
        clients
            .skopeo()
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&dest),
        DEFAULT_TIMEOUT,
    )
    .assert_failure();
}

#[test]
fn delete_needs_credentials() {
    let registry = registry();
    let clients = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[50_000])
        .seed(6)
        .write_layout(src.path(), "v1");
    let dest = registry.docker_ref("del/img:v1");
    run_ok(
        clients
            .skopeo()
            .args(["copy", "--dest-creds", &registry.creds(), "--dest-cert-dir"])
            .arg(registry.cert_dir())
            .args([&image.oci_ref(), &dest]),
    );
    run(
        clients
            .skopeo()
            .args(["delete", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&dest),
        DEFAULT_TIMEOUT,
    )
    .assert_failure();
    let raw = run_ok(
        clients
            .skopeo()
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&dest),
    );
    assert_eq!(
        digest_of(&raw.stdout),
        image.manifest,
        "an anonymous delete removed the image"
    );
    run_ok(
        clients
            .skopeo()
            .args(["delete", "--creds", &registry.creds(), "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&dest),
    );
    run(
        clients
            .skopeo()
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&dest),
        DEFAULT_TIMEOUT,
    )
    .assert_failure();
}
