//! podman (vfs storage, temporary root) pulls from and pushes to the registry.

use speculum_testkit::{ImageSpec, run_ok};

use crate::{Clients, registry};

#[test]
fn podman_pulls_and_pushes() {
    let registry = registry();
    let seed = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[400_000, 200_000])
        .seed(21)
        .write_layout(src.path(), "v1");
    let pushed_by_skopeo = format!("{}/podman/source:v1", registry.addr());
    run_ok(
        seed.skopeo()
            .args(["copy", "--dest-creds", &registry.creds(), "--dest-cert-dir"])
            .arg(registry.cert_dir())
            .arg(image.oci_ref())
            .arg(format!("docker://{pushed_by_skopeo}")),
    );

    let clients = Clients::new();
    run_ok(
        clients
            .podman()
            .args(["pull", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&pushed_by_skopeo),
    );
    let inspect = run_ok(
        clients
            .podman()
            .args(["image", "inspect", &pushed_by_skopeo]),
    );
    let inspect: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(
        inspect[0]["Id"],
        image.config.hex(),
        "podman's image id is the config digest"
    );

    let target = format!("{}/podman/pushed:v2", registry.addr());
    run_ok(clients.podman().args(["tag", &pushed_by_skopeo, &target]));
    run_ok(
        clients
            .podman()
            .args(["push", "--creds", &registry.creds(), "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&target),
    );

    // A fresh podman storage pulls what podman pushed: same image (config) back.
    let again = Clients::new();
    run_ok(
        again
            .podman()
            .args(["pull", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(&target),
    );
    let inspect = run_ok(again.podman().args(["image", "inspect", &target]));
    let inspect: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(inspect[0]["Id"], image.config.hex());
    let diff_ids: Vec<String> = image.diff_ids.iter().map(ToString::to_string).collect();
    assert_eq!(inspect[0]["RootFS"]["Layers"], serde_json::json!(diff_ids));
}
