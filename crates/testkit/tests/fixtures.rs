//! The fixtures themselves, checked with real tools: skopeo reads the layouts, and images
//! go through Debian's docker-registry with TLS and htpasswd auth.

use std::fs;
use std::process::Command;

use speculum_oci::Digest;
use speculum_testkit::{
    Distribution, DistributionOptions, ImageFormat, ImageSpec, IndexSpec, layout_manifest,
    require_tool, run, run_ok,
};

fn skopeo() -> Command {
    require_tool("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy");
    cmd
}

#[test]
fn images_are_deterministic_and_consistent() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new(&[100_000, 20 << 20]).seed(42);
    let one = spec.write_layout(a.path(), "v1");
    let two = spec.write_layout(b.path(), "v1");
    assert_eq!(one.manifest, two.manifest);
    assert_eq!(one.layers.len(), 2);
    let other = spec.clone().seed(43).write_layout(b.path(), "v2");
    assert_ne!(one.layers[0], other.layers[0]);
    // Both tags stay in the layout.
    assert_eq!(layout_manifest(b.path(), "v1").digest, one.manifest);
    assert_eq!(layout_manifest(b.path(), "v2").digest, other.manifest);
    // Every blob matches its name; the data does not compress.
    for layer in &one.layers {
        let path = a.path().join("blobs/sha256").join(layer.hex());
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&Digest::sha256(&bytes), layer);
    }
    let big = fs::metadata(a.path().join("blobs/sha256").join(one.layers[1].hex())).unwrap();
    assert!(
        big.len() > 20 << 20,
        "random data should not compress: {}",
        big.len()
    );
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(a.path().join("blobs/sha256").join(one.config.hex())).unwrap(),
    )
    .unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][1], one.diff_ids[1].to_string());
    assert_eq!(config["config"]["Cmd"][0], "/bin/sh");
    assert_eq!(config["architecture"], "amd64");
}

#[test]
fn skopeo_reads_both_formats_and_the_index() {
    for (format, tag) in [
        (ImageFormat::Oci, "oci"),
        (ImageFormat::DockerV2S2, "docker"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let image = ImageSpec::new(&[1000, 2000])
            .format(format)
            .write_layout(dir.path(), tag);
        let out = run_ok(skopeo().args(["inspect", "--raw", &image.oci_ref()]));
        assert_eq!(
            Digest::sha256(out.stdout.as_bytes()),
            image.manifest,
            "{tag}"
        );
        let out = run_ok(skopeo().args(["inspect", &image.oci_ref()]));
        let inspect: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2, "{tag}");
    }
    let dir = tempfile::tempdir().unwrap();
    let index = IndexSpec::new(&[1000]).write_layout(dir.path(), "multi");
    let out = run_ok(skopeo().args(["inspect", "--raw", &index.oci_ref()]));
    assert_eq!(Digest::sha256(out.stdout.as_bytes()), index.index);
    assert_eq!(index.children.len(), 2);
    assert_ne!(index.children[0].layers, index.children[1].layers);
}

#[test]
fn busybox_layer_holds_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[])
        .busybox(true)
        .write_layout(dir.path(), "bb");
    assert_eq!(image.layers.len(), 1);
    let unpacked = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blobs/sha256").join(image.layers[0].hex());
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&blob)
            .arg("-C")
            .arg(unpacked.path()),
    );
    let sh = unpacked.path().join("bin/sh");
    assert_eq!(fs::read_link(&sh).unwrap().to_str(), Some("busybox"));
    let out = run_ok(Command::new(unpacked.path().join("bin/busybox")).args(["echo", "hello"]));
    assert_eq!(out.stdout.trim(), "hello");
}

#[test]
fn distribution_with_tls_and_auth_round_trips() {
    let registry = Distribution::start(
        DistributionOptions::new()
            .tls(true)
            .auth("writer", "s3cret"),
    );
    let dir = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[3000, 4000])
        .format(ImageFormat::DockerV2S2)
        .write_layout(dir.path(), "v1");
    let cert_dir = registry.cert_dir();
    let dest = registry.docker_ref("test/img:v1");
    // No credentials: refused.
    run(
        skopeo()
            .arg("copy")
            .arg("--dest-cert-dir")
            .arg(&cert_dir)
            .args([&image.oci_ref(), &dest]),
        speculum_testkit::DEFAULT_TIMEOUT,
    )
    .assert_failure();
    run_ok(
        skopeo()
            .arg("copy")
            .arg("--dest-cert-dir")
            .arg(&cert_dir)
            .args([
                "--dest-creds",
                &registry.creds().unwrap(),
                &image.oci_ref(),
                &dest,
            ]),
    );
    let back = tempfile::tempdir().unwrap();
    let dst = format!("oci:{}:v1", back.path().display());
    run_ok(
        skopeo()
            .arg("copy")
            .arg("--src-cert-dir")
            .arg(&cert_dir)
            .args([
                "--format",
                "v2s2",
                "--src-creds",
                &registry.creds().unwrap(),
                &dest,
                &dst,
            ]),
    );
    assert_eq!(layout_manifest(back.path(), "v1").digest, image.manifest);
    let out = run_ok(
        skopeo()
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(&cert_dir)
            .args(["--creds", &registry.creds().unwrap(), &dest]),
    );
    assert_eq!(Digest::sha256(out.stdout.as_bytes()), image.manifest);
}

#[test]
fn distribution_plain_http() {
    let registry = Distribution::start(DistributionOptions::new());
    let dir = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[1000]).write_layout(dir.path(), "v1");
    run_ok(skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &image.oci_ref(),
        &registry.docker_ref("a/b:v1"),
    ]));
    let out = run_ok(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &registry.docker_ref("a/b:v1"),
    ]));
    assert_eq!(Digest::sha256(out.stdout.as_bytes()), image.manifest);
}

/// A tiny HTTP server on loopback that answers every request with `status`, until the
/// test process exits.
#[allow(clippy::unwrap_used)]
fn answer_everything(status: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

/// The haproxy fixture: a server that answers 401 (a registry wanting credentials) counts
/// as up, a closed port as down, and requests reach the servers that are up.
#[test]
fn haproxy_checks_servers_and_balances() {
    let ok = answer_everything("200 OK");
    let challenge = answer_everything("401 Unauthorized");
    let closed = speculum_testkit::free_port();
    let proxy = speculum_testkit::Haproxy::start(&[ok, challenge, closed]);
    proxy.wait_for_states(&["UP", "UP", "DOWN"], std::time::Duration::from_secs(15));
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = speculum_testkit::http::request(proxy.port(), None, "GET", "/v2/", &[], b"");
        seen.push(r.status);
    }
    seen.sort_unstable();
    assert_eq!(seen, [200, 200, 401, 401], "{}", proxy.log());
}
