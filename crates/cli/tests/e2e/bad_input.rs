//! Bad input ends with one line naming the image and the cause, a non-zero
//! exit, and no tag on an incomplete image.

use speculum_testkit::ImageSpec;

use crate::common::*;

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    lines[0]
}

#[test]
fn unparseable_and_unknown_transports() {
    for (r, word) in [
        ("Bad/Name", "Bad/Name"),
        ("http://x/y", "transport"),
        ("docker-archive:/x.tar", "transport"),
        ("oci:", "oci:"),
    ] {
        let out = speculum(&["inspect", r]).assert_failure();
        let line = one_line(&out.stderr);
        assert!(line.contains(word), "{line}");
    }
}

#[test]
fn missing_credentials_and_not_found() {
    let r = Reg::Dist(speculum_testkit::Distribution::start(
        speculum_testkit::DistributionOptions::new().auth("user", "s3cret-pass"),
    ));
    let dir = tmp();
    let img = ImageSpec::new(&[10_000])
        .seed(51)
        .write_layout(dir.path(), "v1");
    let target = r.r("auth/app:v1");
    let out =
        speculum(&["copy", &img.oci_ref_tagged(), &target, "--dest-insecure"]).assert_failure();
    let line = one_line(&out.stderr);
    assert!(
        line.contains(&target) && line.contains("no credentials"),
        "{line}"
    );
    // Wrong password.
    let out = speculum(&[
        "copy",
        &img.oci_ref_tagged(),
        &target,
        "--dest-insecure",
        "--dest-creds",
        "user:wrong",
    ])
    .assert_failure();
    let line = one_line(&out.stderr);
    assert!(
        line.contains("credentials rejected") && !line.contains("wrong"),
        "{line}"
    );
    // Right password, from flags, then from an auth file; never printed.
    let ok = run_args(&args(&[
        &s("copy"),
        &s(&img.oci_ref_tagged()),
        &s(&target),
        &r.flags("dest"),
        &s("-vv"),
    ]))
    .assert_success();
    assert!(!ok.stderr.contains("s3cret-pass") && !ok.stdout.contains("s3cret-pass"));
    let auth = dir.path().join("auth.json");
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "user:s3cret-pass",
    );
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, r.addr()),
    )
    .unwrap();
    let out = speculum_env(
        &["tags", &r.r("auth/app"), "--insecure", "-vv"],
        &[("REGISTRY_AUTH_FILE", auth.to_str().unwrap())],
    )
    .assert_success();
    assert_eq!(out.stdout, "v1\n");
    assert!(!out.stderr.contains("s3cret-pass"));
    // 404.
    let missing = r.r("auth/app:nope");
    let out = speculum(&[
        "inspect",
        &missing,
        "--insecure",
        "--creds",
        "user:s3cret-pass",
    ])
    .assert_failure();
    let line = one_line(&out.stderr);
    assert!(line.contains(&missing) && line.contains("404"), "{line}");
}

/// Corrupt or truncate a layer in the source layout: the copy fails naming the
/// digest problem, and the destination tag never appears.
#[test]
fn digest_mismatch_and_truncation_leave_no_tag() {
    let r = Reg::start(Kind::Distribution);
    for (i, damage) in ["corrupt", "truncate"].iter().enumerate() {
        let dir = tmp();
        let img = ImageSpec::new(&[50_000, 60_000])
            .seed(60 + i as u64)
            .write_layout(dir.path(), "v1");
        let layer = dir.path().join("blobs/sha256").join(img.layers[1].hex());
        let mut bytes = std::fs::read(&layer).unwrap();
        if *damage == "corrupt" {
            bytes[100] ^= 0xff;
        } else {
            bytes.truncate(bytes.len() / 2);
        }
        std::fs::write(&layer, bytes).unwrap();
        let target = r.r(&format!("bad/{damage}:v1"));
        let out = run_args(&args(&[
            &s("copy"),
            &s(&img.oci_ref_tagged()),
            &s(&target),
            &r.flags("dest"),
        ]))
        .assert_failure();
        let line = one_line(&out.stderr);
        assert!(line.contains(&target), "{line}");
        // Either speculum's own check or the registry's catches it first.
        let expected: &[&str] = if *damage == "corrupt" {
            &["does not match its digest", "DIGEST_INVALID"]
        } else {
            &["bytes, got", "SIZE_INVALID", "DIGEST_INVALID"]
        };
        assert!(expected.iter().any(|e| line.contains(e)), "{line}");
        let tags = run_args(&args(&[&s("inspect"), &s(&target), &r.flags("")])).assert_failure();
        assert!(tags.stderr.contains("404"), "{}", tags.stderr);
    }
}
