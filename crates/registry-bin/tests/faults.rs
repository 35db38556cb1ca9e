//! Crashes in the middle of writes, against the binary: `kill -9` during a
//! chunked upload, during the final PUT of an upload and during a manifest
//! PUT, then a restart on the same storage. After each: no partial blob is
//! visible, every stored blob matches its digest, every tag points at a
//! complete manifest, what was acknowledged before is intact, and the
//! client's retry succeeds. Also: 16 clients pushing one image at once store
//! each blob once. Loopback only; every registry is stopped on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::thread;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use speculum_testkit::BuildsetRegistry;
use speculum_testkit::http::{Response, request, start_request};

mod common;

use common::{ZUUL_PW as AUTH, buildset_on as start, files_under};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn call(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(port, Some(AUTH), method, path, headers, body)
}

/// Push a blob in one request (POST then PUT with the whole body).
fn push_blob(port: u16, repo: &str, data: &[u8]) {
    let location = upload_location(port, repo);
    let r = call(
        port,
        "PUT",
        &format!("{location}&digest={}", digest_of(data)),
        &[],
        data,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// Start an upload session; its path with `?` in it.
fn upload_location(port: u16, repo: &str) -> String {
    let r = call(
        port,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").unwrap().to_string();
    let path = if location.starts_with('/') {
        location
    } else {
        format!("/{}", location.splitn(4, '/').nth(3).unwrap())
    };
    if path.contains('?') {
        path
    } else {
        format!("{path}?")
    }
}

/// A manifest over a config and one layer, both pushed first.
fn push_image(port: u16, repo: &str, tag: &str, seed: &str) -> Vec<u8> {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
    let layer = format!("{seed} ").repeat(5000).into_bytes();
    push_blob(port, repo, config.as_bytes());
    push_blob(port, repo, &layer);
    let manifest = manifest_of(config.as_bytes(), &layer);
    let r = call(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    manifest
}

fn manifest_of(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer), "size": layer.len()}],
    }))
    .unwrap()
}

/// Every blob file under `<root>/blobs` holds the bytes its name says.
fn assert_blobs_match_their_digests(root: &Path) -> usize {
    let files = files_under(&root.join("blobs"));
    for file in &files {
        let hex_name = file.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(file).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&data)),
            hex_name,
            "{} is torn",
            file.display()
        );
    }
    files.len()
}

/// The tag serves `manifest`, and every blob it names is there, whole.
fn assert_complete(port: u16, repo: &str, tag: &str, manifest: &[u8]) {
    let r = call(
        port,
        "GET",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(
        r.status,
        200,
        "{repo}:{tag}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.body, manifest, "{repo}:{tag} changed");
    let parsed: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let layers = parsed["layers"].as_array().unwrap();
    for descriptor in std::iter::once(&parsed["config"]).chain(layers) {
        let digest = descriptor["digest"].as_str().unwrap();
        let blob = call(port, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"");
        assert_eq!(blob.status, 200, "{repo}:{tag}: blob {digest} missing");
        assert_eq!(
            digest_of(&blob.body),
            digest,
            "{repo}:{tag}: blob {digest} torn"
        );
    }
}

/// Kill the registry while `stop_half_way` has a request half sent, restart
/// it on the same storage, and check what an acknowledged push left.
fn crash_during(
    root: &Path,
    registry: &mut BuildsetRegistry,
    before: &[u8],
    stop_half_way: impl FnOnce(u16) -> std::net::TcpStream,
) -> BuildsetRegistry {
    let half_sent = stop_half_way(registry.info().port);
    // Give the server the time to read (and write to disk) what was sent.
    thread::sleep(Duration::from_millis(300));
    registry.kill();
    drop(half_sent);
    let restarted = start(root);
    assert_blobs_match_their_digests(root);
    assert_complete(restarted.info().port, "org/app", "before", before);
    restarted
}

#[test]
fn kill_9_during_writes_leaves_nothing_partial_and_retries_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("storage");
    let mut registry = start(&root);
    let before = push_image(registry.info().port, "org/app", "before", "acknowledged");

    // 1. A chunked upload: one chunk acknowledged, the second cut half way.
    let blob = vec![7u8; 3 << 20];
    let port = registry.info().port;
    let location = upload_location(port, "org/app");
    let first = call(
        port,
        "PATCH",
        &location,
        &[("Content-Range", "0-1048575")],
        &blob[..1 << 20],
    );
    assert_eq!(
        first.status,
        202,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let mut registry = crash_during(&root, &mut registry, &before, |port| {
        start_request(
            port,
            Some(AUTH),
            "PATCH",
            &location,
            &[("Content-Range", "1048576-3145727")],
            2 << 20,
            &blob[1 << 20..(2 << 20) - 4096],
        )
    });
    let port = registry.info().port;
    let head = call(
        port,
        "HEAD",
        &format!("/v2/org/app/blobs/{}", digest_of(&blob)),
        &[],
        b"",
    );
    assert_eq!(head.status, 404, "a blob of a cut upload is visible");
    push_blob(port, "org/app", &blob);

    // 2. The final PUT of an upload, cut half way.
    let other = vec![9u8; 2 << 20];
    let location = upload_location(port, "org/app");
    let mut registry = crash_during(&root, &mut registry, &before, |port| {
        let path = format!("{location}&digest={}", digest_of(&other));
        start_request(
            port,
            Some(AUTH),
            "PUT",
            &path,
            &[],
            other.len(),
            &other[..1 << 20],
        )
    });
    let port = registry.info().port;
    let head = call(
        port,
        "HEAD",
        &format!("/v2/org/app/blobs/{}", digest_of(&other)),
        &[],
        b"",
    );
    assert_eq!(head.status, 404, "a blob of a cut final PUT is visible");
    push_blob(port, "org/app", &other);

    // 3. A manifest PUT cut half way: the tag is not there, then the retry is.
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"manifest\"}";
    push_blob(port, "org/app", config);
    let manifest = manifest_of(config, &other);
    let registry = crash_during(&root, &mut registry, &before, |port| {
        start_request(
            port,
            Some(AUTH),
            "PUT",
            "/v2/org/app/manifests/cut",
            &[("Content-Type", OCI_MANIFEST)],
            manifest.len(),
            &manifest[..manifest.len() / 2],
        )
    });
    let port = registry.info().port;
    let tag = call(
        port,
        "GET",
        "/v2/org/app/manifests/cut",
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(tag.status, 404, "a cut manifest PUT left a tag");
    let r = call(
        port,
        "PUT",
        "/v2/org/app/manifests/cut",
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_complete(port, "org/app", "cut", &manifest);
    assert_complete(port, "org/app", "before", &before);
    assert_blobs_match_their_digests(&root);
}

#[test]
fn sixteen_clients_pushing_one_image_store_each_blob_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("storage");
    let registry = start(&root);
    let port = registry.info().port;
    let manifests: Vec<Vec<u8>> = thread::scope(|s| {
        let pushes: Vec<_> = (0..16)
            .map(|i| s.spawn(move || push_image(port, "org/same", &format!("t{i}"), "one image")))
            .collect();
        pushes.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert!(manifests.windows(2).all(|w| w[0] == w[1]));
    for i in 0..16 {
        assert_complete(port, "org/same", &format!("t{i}"), &manifests[0]);
    }
    // The config, the layer and the manifest: three blobs, each stored once.
    assert_eq!(assert_blobs_match_their_digests(&root), 3);
}
