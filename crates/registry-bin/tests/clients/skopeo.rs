//! skopeo copies images from OCI layouts into the registry and back; digests never change.

use speculum_testkit::{ImageFormat, ImageSpec, IndexSpec, layout_manifest, run_ok};

use crate::{Clients, digest_of, registry};

/// Push an image with skopeo, read it back; for Docker v2s2 the pull keeps the format.
fn round_trip(format: ImageFormat) {
    let registry = registry();
    let clients = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[3 << 20, 1 << 20, 300_000])
        .seed(11)
        .format(format)
        .write_layout(src.path(), "v1");
    let dest = registry.docker_ref("speculum/multi-layer:v1");
    run_ok(
        clients
            .skopeo()
            .args(["copy", "--dest-creds", &registry.creds(), "--dest-cert-dir"])
            .arg(registry.cert_dir())
            .args([&image.oci_ref(), &dest]),
    );

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
        "manifest bytes changed in the registry"
    );
    let inspect = run_ok(
        clients
            .skopeo()
            .args(["inspect", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&dest),
    );
    let inspect: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(inspect["Digest"], image.manifest.to_string());
    let layers: Vec<String> = image.layers.iter().map(ToString::to_string).collect();
    assert_eq!(inspect["Layers"], serde_json::json!(layers));

    let back = tempfile::tempdir().unwrap();
    let mut pull = clients.skopeo();
    pull.args(["copy", "--src-cert-dir"])
        .arg(registry.cert_dir());
    if format == ImageFormat::DockerV2S2 {
        // An OCI layout destination converts to OCI unless told to keep v2s2.
        pull.args(["--format", "v2s2"]);
    }
    run_ok(
        pull.arg(&dest)
            .arg(format!("oci:{}:v1", back.path().display())),
    );
    let pulled = layout_manifest(back.path(), "v1");
    assert_eq!(pulled.digest, image.manifest);
    assert_eq!(pulled.media_type, image.media_type);
    for layer in &image.layers {
        let blob = back.path().join("blobs/sha256").join(layer.hex());
        assert!(blob.exists(), "layer {layer} missing after pull");
    }
}

#[test]
fn oci_image_round_trip() {
    round_trip(ImageFormat::Oci);
}

#[test]
fn docker_v2s2_image_round_trip() {
    round_trip(ImageFormat::DockerV2S2);
}

#[test]
fn two_platform_index_round_trip_with_all() {
    let registry = registry();
    let clients = Clients::new();
    for (format, name) in [
        (ImageFormat::Oci, "oci-index"),
        (ImageFormat::DockerV2S2, "list"),
    ] {
        let src = tempfile::tempdir().unwrap();
        let index = IndexSpec::new(&[500_000, 200_000])
            .seed(5)
            .format(format)
            .write_layout(src.path(), "v1");
        let dest = registry.docker_ref(&format!("speculum/{name}:v1"));
        run_ok(
            clients
                .skopeo()
                .args([
                    "copy",
                    "--all",
                    "--dest-creds",
                    &registry.creds(),
                    "--dest-cert-dir",
                ])
                .arg(registry.cert_dir())
                .args([&index.oci_ref(), &dest]),
        );
        let raw = run_ok(
            clients
                .skopeo()
                .args(["inspect", "--raw", "--cert-dir"])
                .arg(registry.cert_dir())
                .arg(&dest),
        );
        assert_eq!(
            digest_of(&raw.stdout),
            index.index,
            "{name}: index bytes changed"
        );
        // Each platform's manifest is there, by digest.
        for child in &index.children {
            let by_digest = registry.docker_ref(&format!("speculum/{name}@{}", child.manifest));
            let raw = run_ok(
                clients
                    .skopeo()
                    .args(["inspect", "--raw", "--cert-dir"])
                    .arg(registry.cert_dir())
                    .arg(&by_digest),
            );
            assert_eq!(
                digest_of(&raw.stdout),
                child.manifest,
                "{name}: {}",
                child.architecture
            );
        }
        let back = tempfile::tempdir().unwrap();
        let mut pull = clients.skopeo();
        pull.args(["copy", "--all", "--src-cert-dir"])
            .arg(registry.cert_dir());
        if format == ImageFormat::DockerV2S2 {
            pull.args(["--format", "v2s2"]);
        }
        run_ok(
            pull.arg(&dest)
                .arg(format!("oci:{}:v1", back.path().display())),
        );
        assert_eq!(
            layout_manifest(back.path(), "v1").digest,
            index.index,
            "{name}"
        );
        for child in &index.children {
            for blob in child.layers.iter().chain([&child.manifest, &child.config]) {
                assert!(
                    back.path().join("blobs/sha256").join(blob.hex()).exists(),
                    "{name}: {blob}"
                );
            }
        }
    }
}
