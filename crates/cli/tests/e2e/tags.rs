//! tag, promote, delete-tag, clean, inspect and tags.

use speculum_testkit::{ImageSpec, IndexSpec};

use crate::common::*;

fn push(r: &Reg, src: &str, dst: &str, all: bool) {
    let extra: Vec<String> = if all { s("--all") } else { vec![] };
    run_args(&args(&[
        &s("copy"),
        &s(src),
        &s(&r.r(dst)),
        &r.flags("dest"),
        &extra,
    ]))
    .assert_success();
}

fn promote_index(kind: Kind) {
    let r = Reg::start(kind);
    let dir = tmp();
    let idx = IndexSpec::new(&[50_000])
        .seed(11)
        .write_layout(dir.path(), "i");
    push(&r, &idx.oci_ref_tagged(), "org/app:change_42_latest", true);
    let out = run_args(&args(&[
        &s("promote"),
        &s(&r.r("org/app")),
        &s("--from"),
        &s("change_42_latest"),
        &s("--to"),
        &s("latest"),
        &s("v1"),
        &r.flags(""),
    ]));
    match kind {
        Kind::Speculum => {
            out.assert_success();
            assert_eq!(tags_of(&r, "org/app"), vec!["latest", "v1"]);
        }
        Kind::Distribution => {
            // distribution 2.8 refuses tag deletion, and the digest now carries
            // the final tags too: promote must refuse to delete by digest.
            let out = out.assert_failure();
            assert!(
                out.stderr.contains("refuses to delete tags"),
                "{}",
                out.stderr
            );
            assert!(out.stderr.contains("latest"), "{}", out.stderr);
            assert_eq!(
                tags_of(&r, "org/app"),
                vec!["change_42_latest", "latest", "v1"]
            );
        }
    }
    assert_eq!(digest_of(&r, "org/app:latest"), idx.index.to_string());
    assert_eq!(digest_of(&r, "org/app:v1"), idx.index.to_string());
}

#[test]
fn promote_manifest_list_speculum() {
    promote_index(Kind::Speculum);
}

#[test]
fn promote_manifest_list_distribution_refuses_unsafe_delete() {
    promote_index(Kind::Distribution);
}

fn delete_keeps_other_tags(kind: Kind) {
    let r = Reg::start(kind);
    let dir = tmp();
    let a = ImageSpec::new(&[20_000])
        .seed(21)
        .write_layout(dir.path(), "a");
    let b = ImageSpec::new(&[20_000])
        .seed(22)
        .write_layout(dir.path(), "b");
    push(&r, &a.oci_ref_tagged(), "d/app:one", false);
    run_args(&args(&[
        &s("tag"),
        &s(&r.r("d/app:one")),
        &s("two"),
        &r.flags(""),
    ]))
    .assert_success();
    push(&r, &b.oci_ref_tagged(), "d/app:alone", false);
    let del = run_args(&args(&[
        &s("delete-tag"),
        &s(&r.r("d/app:one")),
        &r.flags(""),
    ]));
    match kind {
        Kind::Speculum => {
            del.assert_success();
            assert_eq!(tags_of(&r, "d/app"), vec!["alone", "two"]);
        }
        Kind::Distribution => {
            let del = del.assert_failure();
            assert!(del.stderr.contains("two"), "{}", del.stderr);
            assert_eq!(tags_of(&r, "d/app"), vec!["alone", "one", "two"]);
        }
    }
    assert_eq!(digest_of(&r, "d/app:two"), a.manifest.to_string());
    // A digest with a single tag goes away (by tag, or by digest once proven safe).
    run_args(&args(&[
        &s("delete-tag"),
        &s(&r.r("d/app:alone")),
        &r.flags(""),
    ]))
    .assert_success();
    assert!(!tags_of(&r, "d/app").contains(&"alone".to_string()));
    assert_eq!(digest_of(&r, "d/app:two"), a.manifest.to_string());
    // A tag that does not exist is an error naming it.
    let missing = run_args(&args(&[
        &s("delete-tag"),
        &s(&r.r("d/app:nope")),
        &r.flags(""),
    ]))
    .assert_failure();
    assert!(missing.stderr.contains("nope"), "{}", missing.stderr);
}

#[test]
fn delete_tag_keeps_other_tags_speculum() {
    delete_keeps_other_tags(Kind::Speculum);
}

#[test]
fn delete_tag_keeps_other_tags_distribution() {
    delete_keeps_other_tags(Kind::Distribution);
}

fn clean_by_age(kind: Kind) {
    let r = Reg::start(kind);
    let dir = tmp();
    let old = ImageSpec::new(&[10_000])
        .seed(31)
        .created("2020-01-01T00:00:00Z")
        .write_layout(dir.path(), "old");
    let old2 = ImageSpec::new(&[10_000])
        .seed(32)
        .created("2021-06-01T00:00:00Z")
        .write_layout(dir.path(), "old2");
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let fresh = ImageSpec::new(&[10_000])
        .seed(33)
        .created(&now)
        .write_layout(dir.path(), "fresh");
    let other = ImageSpec::new(&[10_000])
        .seed(34)
        .created("2020-01-01T00:00:00Z")
        .write_layout(dir.path(), "other");
    push(&r, &old.oci_ref_tagged(), "c/app:change_1_latest", false);
    push(&r, &old2.oci_ref_tagged(), "c/app:gate_latest", false);
    push(&r, &fresh.oci_ref_tagged(), "c/app:change_2_latest", false);
    push(&r, &other.oci_ref_tagged(), "c/app:latest", false);
    let base = args(&[
        &s("clean"),
        &s(&r.r("c/app")),
        &s("--match"),
        &s("^change_.*$|^gate_.*$"),
        &s("--older-than"),
        &s("1day"),
        &s("--json"),
        &r.flags(""),
    ]);
    let dry = run_json(&args(&[&base, &s("--dry-run")]));
    let results: Vec<(String, String)> = dry["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tag"].as_str().unwrap().to_string(),
                t["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        results,
        vec![
            ("change_1_latest".to_string(), "would-remove".to_string()),
            ("change_2_latest".to_string(), "kept".to_string()),
            ("gate_latest".to_string(), "would-remove".to_string()),
        ]
    );
    assert_eq!(tags_of(&r, "c/app").len(), 4, "dry run removed nothing");
    let real = run_json(&base);
    assert_eq!(real["failed"], 0, "{real}");
    assert_eq!(tags_of(&r, "c/app"), vec!["change_2_latest", "latest"]);
}

#[test]
fn clean_by_config_age_speculum() {
    clean_by_age(Kind::Speculum);
}

#[test]
fn clean_by_config_age_distribution() {
    clean_by_age(Kind::Distribution);
}

#[test]
fn inspect_and_tags() {
    let r = Reg::start(Kind::Speculum);
    let dir = tmp();
    let img = ImageSpec::new(&[10_000, 20_000])
        .seed(41)
        .write_layout(dir.path(), "x");
    push(&r, &img.oci_ref_tagged(), "i/app:v1", false);
    let j = run_json(&args(&[
        &s("inspect"),
        &s(&r.r("i/app:v1")),
        &s("--json"),
        &r.flags(""),
    ]));
    assert_eq!(j["digest"], img.manifest.to_string());
    assert_eq!(j["layers"].as_array().unwrap().len(), 2);
    assert_eq!(j["platform"], "linux/amd64");
    let raw = run_args(&args(&[
        &s("inspect"),
        &s(&r.r("i/app:v1")),
        &s("--raw"),
        &r.flags(""),
    ]))
    .assert_success();
    let m = speculum_testkit::layout_manifest(dir.path(), "x");
    assert_eq!(raw.stdout.as_bytes(), m.bytes.as_slice());
    let human = run_args(&args(&[&s("inspect"), &s(&img.oci_ref_tagged())])).assert_success();
    assert!(
        human.stdout.contains(&img.manifest.to_string()),
        "{}",
        human.stdout
    );
    // The buildset registry allows anonymous pulls: tags without credentials.
    let anon = run_args(&args(&[
        &s("tags"),
        &s(&r.r("i/app")),
        &s("--ca"),
        &s(&path_str(&match &r {
            Reg::Spec(b) => b.cert_path(),
            Reg::Dist(_) => unreachable!(),
        })),
    ]))
    .assert_success();
    assert_eq!(anon.stdout, "v1\n");
}
