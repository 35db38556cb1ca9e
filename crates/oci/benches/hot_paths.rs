//! The protocol work on every push and pull: hashing blob bytes, parsing and
//! validating manifests, parsing names and references. `cargo bench -p
//! speculum-oci`; `make bench` runs it with `--quick` and puts the figures in
//! doc/benchmarks.md.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::str::FromStr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use speculum_oci::{Algorithm, Digest, Reference, RepositoryName, manifest};

/// 64 MiB: large enough that per-call overhead does not count, small enough
/// to stay in memory on any CI machine.
const BUFFER: usize = 64 * 1024 * 1024;

fn digests(c: &mut Criterion) {
    // Not all zeros, so nothing can shortcut it.
    let data: Vec<u8> = (0..BUFFER).map(|i| (i % 251) as u8).collect();
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Bytes(BUFFER as u64));
    group.sample_size(10);
    group.bench_function("sha256 64 MiB, 1 MiB updates", |b| {
        b.iter(|| {
            let mut d = Algorithm::Sha256.digester();
            for chunk in data.chunks(1024 * 1024) {
                d.update(chunk);
            }
            black_box(d.finish())
        })
    });
    group.finish();
}

fn descriptor(media_type: &str, n: u64) -> String {
    let digest = Digest::sha256(&n.to_be_bytes());
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{}}}"#,
        1000 + n
    )
}

/// An OCI image manifest with `layers` layers and an annotation.
fn image_manifest(layers: u64) -> String {
    let layers: Vec<String> = (0..layers)
        .map(|n| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", n))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}],"annotations":{{"org.opencontainers.image.created":"2026-12-02T00:00:00Z"}}}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", 999),
        layers.join(",")
    )
}

/// An OCI index of `platforms` image manifests.
fn index(platforms: u64) -> String {
    let archs = [
        "amd64", "arm64", "ppc64le", "s390x", "386", "riscv64", "mips64le", "arm",
    ];
    let children: Vec<String> = (0..platforms)
        .map(|n| {
            let d = descriptor("application/vnd.oci.image.manifest.v1+json", n);
            let arch = archs[(n as usize) % archs.len()];
            format!(
                r#"{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                &d[..d.len() - 1]
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        children.join(",")
    )
}

fn manifests(c: &mut Criterion) {
    let image = image_manifest(10);
    let idx = index(8);
    let oci_manifest = Some("application/vnd.oci.image.manifest.v1+json");
    let oci_index = Some("application/vnd.oci.image.index.v1+json");
    assert!(manifest::parse(oci_manifest, image.as_bytes()).is_ok());
    assert!(manifest::parse(oci_index, idx.as_bytes()).is_ok());
    let mut group = c.benchmark_group("manifest");
    group.bench_function("parse and validate, image with 10 layers", |b| {
        b.iter(|| manifest::parse(black_box(oci_manifest), black_box(image.as_bytes())))
    });
    group.bench_function("parse and validate, index of 8 platforms", |b| {
        b.iter(|| manifest::parse(black_box(oci_index), black_box(idx.as_bytes())))
    });
    group.finish();
}

fn references(c: &mut Criterion) {
    let digest = Digest::sha256(b"speculum").to_string();
    let mut group = c.benchmark_group("reference");
    group.bench_function("repository name, 3 components", |b| {
        b.iter(|| RepositoryName::from_str(black_box("zuul/speculum/app")))
    });
    group.bench_function("tag", |b| {
        b.iter(|| Reference::from_str(black_box("change_123_latest")))
    });
    group.bench_function("digest", |b| {
        b.iter(|| Reference::from_str(black_box(&digest)))
    });
    group.finish();
}

criterion_group!(benches, digests, manifests, references);
criterion_main!(benches);
