//! A private Docker daemon uses the registry the way use-buildset-registry sets it up: as the
//! TLS mirror of docker.io, so `docker pull myorg/app` gets the speculative image under its
//! final name, and `docker run` runs it. And the way build jobs push: `docker login` as
//! `zuul`, then `docker push`.

use speculum_testkit::{
    BuildsetRegistry, DEFAULT_TIMEOUT, Dockerd, DockerdOptions, Image, ImageFormat, ImageSpec, run,
    run_ok,
};

use crate::{Clients, registry};

/// Pushes a busybox image (Docker v2s2) with skopeo as `myorg/app:v1`: docker.io images are
/// stored without a prefix.
fn seed_image(registry: &BuildsetRegistry, clients: &Clients, dir: &std::path::Path) -> Image {
    let image = ImageSpec::new(&[50_000])
        .busybox(true)
        .format(ImageFormat::DockerV2S2)
        .cmd(&["/bin/echo", "hello from the buildset registry"])
        .seed(41)
        .write_layout(dir, "v1");
    run_ok(
        clients
            .skopeo()
            .args(["copy", "--dest-creds", &registry.creds(), "--dest-cert-dir"])
            .arg(registry.cert_dir())
            .arg(image.oci_ref())
            .arg(registry.docker_ref("myorg/app:v1")),
    );
    image
}

fn dockerd_for(registry: &BuildsetRegistry) -> Dockerd {
    Dockerd::start(
        DockerdOptions::new()
            .mirror(&registry.url())
            .registry_ca(&registry.addr(), &registry.cert_path()),
    )
}

#[test]
fn docker_pulls_through_the_mirror_and_runs() {
    let registry = registry();
    let clients = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let image = seed_image(&registry, &clients, src.path());
    let dockerd = dockerd_for(&registry);
    // An anonymous pull by the image's docker.io name, served by the mirror.
    run_ok(dockerd.docker().args(["pull", "myorg/app:v1"]));
    let id =
        run_ok(
            dockerd
                .docker()
                .args(["image", "inspect", "--format", "{{.Id}}", "myorg/app:v1"]),
        );
    assert_eq!(
        id.stdout.trim(),
        image.config.to_string(),
        "docker pulled another image"
    );
    let out = run_ok(
        dockerd
            .docker()
            .args(["run", "--rm", "--network", "none", "myorg/app:v1"]),
    );
    assert_eq!(out.stdout.trim(), "hello from the buildset registry");
}

#[test]
fn docker_logs_in_and_pushes() {
    let registry = registry();
    let clients = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let image = seed_image(&registry, &clients, src.path());
    let dockerd = dockerd_for(&registry);
    let source = format!("{}/myorg/app:v1", registry.addr());
    run_ok(dockerd.docker().args(["pull", &source]));
    let target = format!("{}/myorg/pushed-by-docker:v1", registry.addr());
    run_ok(dockerd.docker().args(["tag", &source, &target]));
    run_ok(dockerd.docker().args([
        "login",
        &registry.addr(),
        "--username",
        &registry.info().username,
        "--password",
        &registry.info().password,
    ]));
    // Docker sends credentials only after a 401 challenge on `GET /v2/`: a registry that
    // answers 200 there (anonymous pull) and 401 on the upload gets "unauthorized" retries.
    let push = run(dockerd.docker().args(["push", &target]), DEFAULT_TIMEOUT);
    assert!(
        push.success(),
        "{}\n--- registry log ---\n{}\n--- dockerd log (tail) ---\n{}",
        push.describe(),
        registry.log(),
        tail(&dockerd.log(), 20)
    );
    let inspect = run_ok(
        clients
            .skopeo()
            .args(["inspect", "--cert-dir"])
            .arg(registry.cert_dir())
            .arg(format!("docker://{target}")),
    );
    let inspect: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    let layers: Vec<String> = image.layers.iter().map(ToString::to_string).collect();
    assert_eq!(
        inspect["Layers"],
        serde_json::json!(layers),
        "docker changed the layers"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
