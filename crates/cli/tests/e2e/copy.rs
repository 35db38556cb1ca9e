//! Round trips and skip/mount accounting.

use speculum_testkit::{ImageFormat, ImageSpec, IndexSpec, layout_manifest};

use crate::common::*;

/// layout → registry A → registry B → layout, digests and bytes unchanged.
fn round_trip(a: &Reg, b: &Reg, src_ref: &str, expected_digest: &str, all: bool) {
    let out = tmp();
    let name = format!("rt/{}", expected_digest.get(7..19).unwrap_or("x"));
    let extra: Vec<String> = if all { s("--all") } else { vec![] };
    let r1 = run_json(&args(&[
        &s("copy"),
        &s(src_ref),
        &s(&a.r(&format!("{name}:v1"))),
        &s("--json"),
        &a.flags("dest"),
        &extra,
    ]));
    assert_eq!(r1["digest"], expected_digest, "{r1}");
    let r2 = run_json(&args(&[
        &s("copy"),
        &s(&format!("docker://{}", a.r(&format!("{name}:v1")))),
        &s(&b.r(&format!("{name}:v2"))),
        &s("--json"),
        &a.flags("src"),
        &b.flags("dest"),
        &extra,
    ]));
    assert_eq!(r2["digest"], expected_digest);
    assert_eq!(digest_of(b, &format!("{name}:v2")), expected_digest);
    let r3 = run_json(&args(&[
        &s("copy"),
        &s(&b.r(&format!("{name}:v2"))),
        &s(&oci(out.path(), "back")),
        &s("--json"),
        &b.flags("src"),
        &extra,
    ]));
    assert_eq!(r3["digest"], expected_digest);
    let m = layout_manifest(out.path(), "back");
    assert_eq!(m.digest.to_string(), expected_digest);
}

fn matrix(a: Kind, b: Kind) {
    let (ra, rb) = (Reg::start(a), Reg::start(b));
    let dir = tmp();
    let v2 = ImageSpec::new(&[100_000, 300_000])
        .seed(1)
        .format(ImageFormat::DockerV2S2)
        .write_layout(dir.path(), "v2s2");
    let o = ImageSpec::new(&[200_000, 50_000, 10_000])
        .seed(2)
        .format(ImageFormat::Oci)
        .write_layout(dir.path(), "oci");
    let idx = IndexSpec::new(&[120_000, 80_000])
        .seed(3)
        .write_layout(dir.path(), "index");
    round_trip(
        &ra,
        &rb,
        &v2.oci_ref_tagged(),
        &v2.manifest.to_string(),
        false,
    );
    round_trip(
        &ra,
        &rb,
        &o.oci_ref_tagged(),
        &o.manifest.to_string(),
        false,
    );
    round_trip(
        &ra,
        &rb,
        &idx.oci_ref_tagged(),
        &idx.index.to_string(),
        true,
    );
    // Every child of the index arrived, by digest.
    for c in &idx.children {
        let a = args(&[
            &s("inspect"),
            &s(&format!(
                "{}@{}",
                rb.r(&format!("rt/{}", &idx.index.to_string()[7..19])),
                c.manifest
            )),
            &s("--json"),
            &rb.flags(""),
        ]);
        assert_eq!(run_json(&a)["digest"], c.manifest.to_string());
    }
}

#[test]
fn round_trip_distribution_to_speculum() {
    matrix(Kind::Distribution, Kind::Speculum);
}

#[test]
fn round_trip_speculum_to_distribution() {
    matrix(Kind::Speculum, Kind::Distribution);
}

#[test]
fn round_trip_distribution_to_distribution() {
    matrix(Kind::Distribution, Kind::Distribution);
}

#[test]
fn platform_selection_from_an_index() {
    let r = Reg::start(Kind::Distribution);
    let dir = tmp();
    let idx = IndexSpec::new(&[10_000])
        .seed(4)
        .write_layout(dir.path(), "index");
    let arm = idx
        .children
        .iter()
        .find(|c| c.architecture == "arm64")
        .expect("an arm64 child");
    let j = run_json(&args(&[
        &s("copy"),
        &s(&idx.oci_ref_tagged()),
        &s(&r.r("p/one:arm")),
        &s("--platform"),
        &s("linux/arm64"),
        &s("--json"),
        &r.flags("dest"),
    ]));
    assert_eq!(j["digest"], arm.manifest.to_string());
    assert_eq!(digest_of(&r, "p/one:arm"), arm.manifest.to_string());
    let bad = run_args(&args(&[
        &s("copy"),
        &s(&idx.oci_ref_tagged()),
        &s(&r.r("p/one:x")),
        &s("--platform"),
        &s("linux/s390x"),
        &r.flags("dest"),
    ]));
    let bad = bad.assert_failure();
    assert!(
        bad.stderr.contains("linux/s390x") || bad.stderr.contains("s390x"),
        "{}",
        bad.stderr
    );
}

fn skip_and_mount(kind: Kind) {
    let r = Reg::start(kind);
    let dir = tmp();
    let img = ImageSpec::new(&[300_000, 200_000])
        .seed(5)
        .write_layout(dir.path(), "v1");
    let total: u64 = {
        let m = layout_manifest(dir.path(), "v1");
        let info = speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes).unwrap();
        info.required_blobs().map(|b| b.size).sum()
    };
    let first = run_json(&args(&[
        &s("copy"),
        &s(&img.oci_ref_tagged()),
        &s(&r.r("a/app:v1")),
        &s("--json"),
        &r.flags("dest"),
    ]));
    assert_eq!(first["bytes_copied"], total, "{first}");
    assert_eq!(first["bytes_skipped"], 0);
    // Same repository again: everything is skipped after a HEAD.
    let again = run_json(&args(&[
        &s("copy"),
        &s(&img.oci_ref_tagged()),
        &s(&r.r("a/app:v2")),
        &s("--json"),
        &r.flags("dest"),
    ]));
    assert_eq!(again["bytes_copied"], 0, "{again}");
    assert_eq!(again["bytes_skipped"], total);
    // Another repository of the same registry: mounted, not copied.
    let mounted = run_json(&args(&[
        &s("copy"),
        &s(&r.r("a/app:v1")),
        &s(&r.r("b/other:v1")),
        &s("--json"),
        &r.flags("src"),
        &r.flags("dest"),
    ]));
    assert_eq!(mounted["bytes_copied"], 0, "{mounted}");
    assert_eq!(mounted["bytes_mounted"], total);
    assert_eq!(digest_of(&r, "b/other:v1"), img.manifest.to_string());
    // Chunked uploads give the same image.
    let chunked = run_json(&args(&[
        &s("copy"),
        &s(&img.oci_ref_tagged()),
        &s(&r.r("c/chunked:v1")),
        &s("--json"),
        &s("--chunk-size"),
        &s("65536"),
        &r.flags("dest"),
    ]));
    assert_eq!(chunked["bytes_copied"], total);
    assert_eq!(digest_of(&r, "c/chunked:v1"), img.manifest.to_string());
}

#[test]
fn skip_and_mount_distribution() {
    skip_and_mount(Kind::Distribution);
}

#[test]
fn skip_and_mount_speculum() {
    skip_and_mount(Kind::Speculum);
}
