//! Startup, the info file, shutdown on SIGTERM, plain-HTTP mode.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use speculum_testkit::{BuildsetRegistry, ImageSpec, layout_manifest, require_tool, run_ok};

use crate::{Clients, digest_of, options, registry};

/// Startup to ready (spawn → complete info file), measured and printed; no assertion on
/// the time, which depends on the machine.
#[test]
fn startup_time_is_measured() {
    let mut times = Vec::new();
    for _ in 0..5 {
        let registry = registry();
        times.push(registry.startup_time());
    }
    times.sort();
    eprintln!(
        "speculum-registry buildset startup to ready (debug build, 5 runs): min {:.1?}, median {:.1?}, max {:.1?}",
        times[0], times[2], times[4]
    );
}

#[test]
fn info_file_is_private_and_complete() {
    let registry = registry();
    let info_file = registry.info_file();
    let mode = fs::metadata(&info_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "info file mode {mode:o}");
    let info = registry.info();
    assert_eq!(info.username, "zuul");
    assert!(
        info.password.len() >= 16,
        "password too short: {} chars",
        info.password.len()
    );
    assert_ne!(info.port, 0);
    let cert = info.cert.as_deref().unwrap_or_default();
    assert!(
        cert.starts_with("-----BEGIN CERTIFICATE-----"),
        "cert is not PEM: {cert:.60}"
    );
    // The registry's TLS certificate names the alias, 127.0.0.1 and ::1, and verifies with
    // OpenSSL against the info's `cert` for both the alias and the address.
    require_tool("openssl");
    for verify in [
        ["-verify_ip", "127.0.0.1"],
        ["-verify_hostname", "zuul-jobs.buildset-registry"],
    ] {
        let out = run_ok(
            Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &registry.addr(),
                    "-verify_return_error",
                    "-CAfile",
                ])
                .arg(registry.cert_path())
                .args(verify),
        );
        assert!(
            out.stdout.contains("Verify return code: 0 (ok)"),
            "{}",
            out.describe()
        );
        let begin = out.stdout.find("-----BEGIN CERTIFICATE-----").unwrap();
        let end = out.stdout.find("-----END CERTIFICATE-----").unwrap();
        let served = tempfile::NamedTempFile::new().unwrap();
        fs::write(
            served.path(),
            format!("{}-----END CERTIFICATE-----\n", &out.stdout[begin..end]),
        )
        .unwrap();
        let text = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                .arg(served.path()),
        );
        for name in [
            "DNS:zuul-jobs.buildset-registry",
            "IP Address:127.0.0.1",
            "IP Address:0:0:0:0:0:0:0:1",
        ] {
            assert!(
                text.stdout.contains(name),
                "SAN {name} missing: {}",
                text.stdout
            );
        }
    }
    // Two registries never share a password.
    let other = BuildsetRegistry::start(options());
    assert_ne!(other.info().password, info.password);
}

#[test]
fn sigterm_stops_it_cleanly() {
    let mut registry = registry();
    let status = registry
        .stop(Duration::from_secs(10))
        .expect("did not stop within 10 s of SIGTERM");
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        registry.log()
    );
}

#[test]
fn plain_http_mode() {
    let registry =
        BuildsetRegistry::start(options().insecure_http(true).password("fixed-password"));
    assert_eq!(registry.info().password, "fixed-password");
    let clients = Clients::new();
    let src = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(&[300_000, 100_000])
        .seed(8)
        .write_layout(src.path(), "v1");
    let dest = registry.docker_ref("plain/img:v1");
    run_ok(
        clients
            .skopeo()
            .args([
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                &registry.creds(),
            ])
            .args([&image.oci_ref(), &dest]),
    );
    let raw = run_ok(
        clients
            .skopeo()
            .args(["inspect", "--raw", "--tls-verify=false", &dest]),
    );
    assert_eq!(digest_of(&raw.stdout), image.manifest);
    let back = tempfile::tempdir().unwrap();
    run_ok(
        clients
            .skopeo()
            .args(["copy", "--src-tls-verify=false", &dest])
            .arg(format!("oci:{}:v1", back.path().display())),
    );
    assert_eq!(layout_manifest(back.path(), "v1").digest, image.manifest);
}
