//! The Zuul intermediate-registry steps: BR (speculum-registry, TLS with its
//! own certificate) ↔ IR (distribution with Basic auth over plain HTTP).

use speculum_testkit::{Distribution, DistributionOptions, ImageSpec, IndexSpec};

use crate::common::*;

/// `speculum zuul pull-intermediate --json` with a vars file written to
/// `vars`; returns its report.
fn pull_intermediate(
    vars: &std::path::Path,
    br: &Reg,
    ir: &serde_json::Value,
    artifacts: &[serde_json::Value],
) -> serde_json::Value {
    let body = serde_json::json!({
        "buildset_registry": br_json(br),
        "intermediate_registry": ir,
        "artifacts": artifacts,
    });
    std::fs::write(vars, serde_json::to_vec(&body).unwrap()).unwrap();
    speculum_json(&[
        "zuul",
        "pull-intermediate",
        "--vars",
        vars.to_str().unwrap(),
        "--json",
    ])
}

fn br_json(br: &Reg) -> serde_json::Value {
    match br {
        Reg::Spec(b) => {
            let i = b.info();
            serde_json::json!({"host": i.host, "port": i.port, "username": i.username, "password": i.password, "cert": i.cert})
        }
        Reg::Dist(_) => unreachable!(),
    }
}

#[test]
fn push_then_pull_intermediate() {
    let br = Reg::start(Kind::Speculum);
    let ir = Reg::Dist(Distribution::start(
        DistributionOptions::new().auth("ir-user", "ir-pass"),
    ));
    let ir_port: u16 = ir.addr().rsplit(':').next().unwrap().parse().unwrap();
    let dir = tmp();
    let idx = IndexSpec::new(&[40_000])
        .seed(71)
        .write_layout(dir.path(), "multi");
    let single = ImageSpec::new(&[30_000])
        .seed(72)
        .write_layout(dir.path(), "single");
    // What a build job leaves in the BR: docker.io images un-prefixed, others under their host.
    run_args(&args(&[
        &s("copy"),
        &s(&idx.oci_ref_tagged()),
        &s(&br.r("org/app:latest")),
        &s("--all"),
        &br.flags("dest"),
    ]))
    .assert_success();
    run_args(&args(&[
        &s("copy"),
        &s(&single.oci_ref_tagged()),
        &s(&br.r("quay.io/org/tool:v1")),
        &br.flags("dest"),
    ]))
    .assert_success();
    run_args(&args(&[
        &s("copy"),
        &s(&single.oci_ref_tagged()),
        &s(&br.r("quay.io/org/tool:v2")),
        &br.flags("dest"),
    ]))
    .assert_success();

    let ir_json = serde_json::json!({"host": "127.0.0.1", "port": ir_port, "username": "ir-user", "password": "ir-pass", "insecure": true});
    let build = "0123456789abcdef0123456789abcdef";
    let push_vars = dir.path().join("push.json");
    std::fs::write(
        &push_vars,
        serde_json::to_vec(&serde_json::json!({
            "buildset_registry": br_json(&br),
            "intermediate_registry": ir_json,
            "images": [{"repository": "docker.io/org/app"}, {"repository": "quay.io/org/tool", "tags": ["v1", "v2"]}],
            "build": build,
        }))
        .unwrap(),
    )
    .unwrap();
    let output = dir.path().join("artifacts.json");
    let out = speculum(&[
        "zuul",
        "push-intermediate",
        "--vars",
        push_vars.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ])
    .assert_success();
    assert!(!out.stderr.contains("ir-pass") && !out.stdout.contains("ir-pass"));
    let data: serde_json::Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let artifacts = data["zuul"]["artifacts"].as_array().unwrap().clone();
    assert_eq!(artifacts.len(), 3);
    assert_eq!(
        artifacts[0],
        serde_json::json!({
            "name": "docker.io/org/app:latest",
            "url": format!("docker://127.0.0.1:{ir_port}/docker.io/org/app:{build}_latest"),
            "metadata": {"type": "container_image", "repository": "docker.io/org/app", "tag": "latest"},
        })
    );
    assert_eq!(
        digest_of(&ir, &format!("docker.io/org/app:{build}_latest")),
        idx.index.to_string()
    );
    assert_eq!(
        digest_of(&ir, &format!("quay.io/org/tool:{build}_v2")),
        single.manifest.to_string()
    );

    // A later buildset pulls them into its own BR, under their final names.
    let br2 = Reg::start(Kind::Speculum);
    let mut all = artifacts.clone();
    all.push(serde_json::json!({"name": "logs", "url": "https://example.invalid/logs", "metadata": {"type": "zuul_manifest"}}));
    let report = pull_intermediate(&dir.path().join("pull.json"), &br2, &ir_json, &all);
    assert_eq!(report["copies"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(digest_of(&br2, "org/app:latest"), idx.index.to_string());
    assert_eq!(
        digest_of(&br2, "quay.io/org/tool:v1"),
        single.manifest.to_string()
    );
    for c in &idx.children {
        assert_eq!(
            digest_of(&br2, &format!("org/app@{}", c.manifest)),
            c.manifest.to_string()
        );
    }

    // A missing image fails the step, naming it.
    let bad_vars = dir.path().join("bad.json");
    std::fs::write(
        &bad_vars,
        serde_json::to_vec(&serde_json::json!({
            "buildset_registry": br_json(&br2),
            "intermediate_registry": ir_json,
            "artifacts": [{"name": "x", "url": format!("docker://127.0.0.1:{ir_port}/gone/image:{build}_latest"),
                           "metadata": {"type": "container_image", "repository": "gone/image", "tag": "latest"}}],
        }))
        .unwrap(),
    )
    .unwrap();
    let out = speculum(&[
        "zuul",
        "pull-intermediate",
        "--vars",
        bad_vars.to_str().unwrap(),
    ])
    .assert_failure();
    assert!(out.stderr.contains("gone/image"), "{}", out.stderr);
    let out = speculum(&[
        "zuul",
        "push-intermediate",
        "--vars",
        bad_vars.to_str().unwrap(),
    ])
    .assert_failure();
    assert!(out.stderr.contains("vars"), "{}", out.stderr);
}

/// Two changes ahead both provide `org/app:latest`: Zuul lists the farthest
/// first and the nearest last, and the nearest one's image must be the one in
/// the buildset registry, every time. Copying the artifacts concurrently let
/// the older image win the race for the tag in 4 of 10 trials; here the older
/// image is also the larger one, so that it would finish last.
#[test]
fn pull_intermediate_nearest_change_wins() {
    const TRIALS: usize = 10;
    let ir = Reg::start(Kind::Speculum);
    let ir_info = br_json(&ir);
    let ir_port = ir_info["port"].as_u64().unwrap();
    let dir = tmp();
    let farthest = ImageSpec::new(&[400_000, 300_000])
        .seed(81)
        .write_layout(dir.path(), "farthest");
    let nearest = ImageSpec::new(&[2_000])
        .seed(82)
        .write_layout(dir.path(), "nearest");
    assert_ne!(farthest.manifest, nearest.manifest);
    let farthest_build = "1111111111111111111111111111111a";
    let nearest_build = "2222222222222222222222222222222b";
    for (image, build) in [(&farthest, farthest_build), (&nearest, nearest_build)] {
        run_args(&args(&[
            &s("copy"),
            &s(&image.oci_ref_tagged()),
            &s(&ir.r(&format!("docker.io/org/app:{build}_latest"))),
            &ir.flags("dest"),
        ]))
        .assert_success();
    }
    let artifact = |build: &str| {
        serde_json::json!({
            "name": "docker.io/org/app:latest",
            "url": format!("docker://127.0.0.1:{ir_port}/docker.io/org/app:{build}_latest"),
            "metadata": {"type": "container_image", "repository": "docker.io/org/app", "tag": "latest"},
        })
    };
    for trial in 0..TRIALS {
        let br = Reg::start(Kind::Speculum);
        let report = pull_intermediate(
            &dir.path().join(format!("pull-{trial}.json")),
            &br,
            &ir_info,
            &[artifact(farthest_build), artifact(nearest_build)],
        );
        assert_eq!(
            digest_of(&br, "org/app:latest"),
            nearest.manifest.to_string(),
            "trial {trial}: the farthest change's image won"
        );
        assert_eq!(report["copies"].as_array().unwrap().len(), 1, "{report}");
        assert_eq!(
            report["superseded"],
            serde_json::json!([{
                "destination": "org/app:latest",
                "url": artifact(farthest_build)["url"],
                "by": artifact(nearest_build)["url"],
            }]),
            "{report}"
        );
    }
}
