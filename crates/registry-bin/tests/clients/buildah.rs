//! buildah builds `FROM` an image that exists only in this registry (with `RUN`, `COPY`) and
//! pushes the result back.

use std::fs;
use std::process::Command;

use speculum_testkit::{ImageSpec, layout_manifest, run_ok};

use crate::{Clients, files_under, registry};

#[test]
fn buildah_builds_from_the_registry_and_pushes() {
    let registry = registry();
    let clients = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let base = ImageSpec::new(&[100_000])
        .busybox(true)
        .seed(31)
        .write_layout(src.path(), "v1");
    let base_ref = format!("{}/speculum/busybox:v1", registry.addr());
    run_ok(
        clients
            .skopeo()
            .args(["copy", "--dest-creds", &registry.creds(), "--dest-cert-dir"])
            .arg(registry.cert_dir())
            .arg(base.oci_ref())
            .arg(format!("docker://{base_ref}")),
    );

    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Containerfile"),
        format!(
            "FROM {base_ref}\n\
             RUN echo built-by-run > /built.txt\n\
             COPY hello.txt /hello.txt\n\
             CMD [\"/bin/cat\", \"/built.txt\"]\n"
        ),
    )
    .unwrap();
    fs::write(context.path().join("hello.txt"), "hello from COPY\n").unwrap();
    let built = format!("{}/speculum/built:v1", registry.addr());
    // The base is pulled anonymously; the build runs the RUN step with busybox in a chroot.
    run_ok(
        clients
            .buildah()
            .args(["bud", "--isolation", "chroot", "--signature-policy"])
            .arg(clients.policy())
            .arg("--cert-dir")
            .arg(registry.cert_dir())
            .args(["-t", &built])
            .arg(context.path()),
    );
    run_ok(
        clients
            .buildah()
            .args(["push", "--creds", &registry.creds(), "--signature-policy"])
            .arg(clients.policy())
            .arg("--cert-dir")
            .arg(registry.cert_dir())
            .arg(&built)
            .arg(format!("docker://{built}")),
    );

    // Pull the result with skopeo: the base layers come first, then what the build added.
    let back = tempfile::tempdir().unwrap();
    run_ok(
        clients
            .skopeo()
            .args(["copy", "--src-cert-dir"])
            .arg(registry.cert_dir())
            .arg(format!("docker://{built}"))
            .arg(format!("oci:{}:v1", back.path().display())),
    );
    let manifest = layout_manifest(back.path(), "v1");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.bytes).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    // buildah commits RUN and COPY into one new layer on top of the base's (no --layers).
    assert!(layers.len() > base.layers.len(), "{manifest:#}");
    for (layer, base_layer) in layers.iter().zip(&base.layers) {
        assert_eq!(
            layer["digest"],
            base_layer.to_string(),
            "base layer changed: {manifest:#}"
        );
    }
    let unpacked = tempfile::tempdir().unwrap();
    for layer in layers {
        let digest = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        run_ok(
            Command::new("tar")
                .arg("-xzf")
                .arg(back.path().join("blobs/sha256").join(digest))
                .arg("-C")
                .arg(unpacked.path()),
        );
    }
    let built_txt = fs::read_to_string(unpacked.path().join("built.txt")).unwrap_or_else(|e| {
        panic!(
            "RUN output missing ({e}); files: {:?}",
            files_under(unpacked.path())
        )
    });
    assert_eq!(built_txt, "built-by-run\n");
    assert_eq!(
        fs::read_to_string(unpacked.path().join("hello.txt")).unwrap(),
        "hello from COPY\n"
    );
}
