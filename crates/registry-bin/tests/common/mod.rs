//! What the binary's test files share: the `speculum-registry serve`
//! process, its TLS files and users, and skopeo run against it. Each test
//! file compiles this module on its own and uses a part of it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use speculum_testkit::{
    BuildsetOptions, BuildsetRegistry, CmdOutput, DEFAULT_TIMEOUT, require_tool, run, run_ok,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_speculum-registry");
/// `Authorization` for the user `zuul` with password `pw`.
pub const ZUUL_PW: &str = "Basic enV1bDpwdw==";

/// A buildset registry on plain HTTP, password `pw`, storing under `root`.
pub fn buildset_on(root: &Path) -> BuildsetRegistry {
    BuildsetRegistry::start(
        BuildsetOptions::new(BIN)
            .insecure_http(true)
            .password("pw")
            .root(root),
    )
}

/// Every file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
pub const SECRET: &str = "a-test-secret-of-some-length";

/// A bcrypt htpasswd line (`$2y$`, as `htpasswd -B` writes) at a low cost.
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let hash = bcrypt::hash(password, 5)
        .unwrap()
        .replacen("$2b$", "$2y$", 1);
    format!("{user}:{hash}\n")
}

/// TLS files from a generated CA: `tls/cert.pem` (chain), `tls/key.pem`, and
/// `certs.d/ca.crt` for skopeo's `--cert-dir`.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub cert_dir: PathBuf,
}

pub fn make_tls(dir: &Path) -> Tls {
    let generated = speculum_server::generate_certificate(&["localhost".into()], &[]).unwrap();
    let tls = dir.join("tls");
    let cert_dir = dir.join("certs.d");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::create_dir_all(&cert_dir).unwrap();
    let t = Tls {
        cert: tls.join("cert.pem"),
        key: tls.join("key.pem"),
        ca: cert_dir.join("ca.crt"),
        cert_dir,
    };
    std::fs::write(&t.cert, generated.chain_pem()).unwrap();
    std::fs::write(&t.key, generated.key_pem()).unwrap();
    std::fs::write(&t.ca, &generated.ca_pem).unwrap();
    t
}

fn skopeo() -> Command {
    require_tool("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy");
    cmd
}

/// skopeo's options for one registry side of a command (`side` is `dest-`,
/// `src-`, or empty for inspect): `creds` if given, else none; TLS checked
/// against `cert_dir`'s CA if given, else not checked.
fn registry_options(cmd: &mut Command, side: &str, creds: Option<&str>, cert_dir: Option<&Path>) {
    match cert_dir {
        Some(d) => cmd.arg(format!("--{side}cert-dir")).arg(d),
        None => cmd.arg(format!("--{side}tls-verify=false")),
    };
    match creds {
        Some(c) => cmd.arg(format!("--{side}creds")).arg(c),
        None => cmd.arg(format!("--{side}no-creds")),
    };
}

/// skopeo copy from an OCI layout to `dest`, with `creds` if given; TLS
/// checked against `cert_dir`'s CA if given, else not checked.
pub fn push(
    image_ref: &str,
    dest: &str,
    creds: Option<&str>,
    cert_dir: Option<&Path>,
) -> CmdOutput {
    let mut cmd = skopeo();
    cmd.arg("copy");
    registry_options(&mut cmd, "dest-", creds, cert_dir);
    cmd.args([image_ref, dest]);
    run(&mut cmd, DEFAULT_TIMEOUT)
}

/// skopeo copy from `src` in a registry to `dest` (`oci:DIR:TAG`), with
/// `creds` and `cert_dir` as for [`push`].
pub fn pull(src: &str, dest: &str, creds: Option<&str>, cert_dir: Option<&Path>) -> CmdOutput {
    let mut cmd = skopeo();
    cmd.arg("copy");
    registry_options(&mut cmd, "src-", creds, cert_dir);
    cmd.args([src, dest]);
    run(&mut cmd, DEFAULT_TIMEOUT)
}

/// skopeo inspect: the manifest digest, or the failure; `creds` and
/// `cert_dir` as for [`push`].
pub fn inspect(reference: &str, creds: Option<&str>, cert_dir: Option<&Path>) -> CmdOutput {
    let mut cmd = skopeo();
    cmd.args(["inspect", "--format", "{{.Digest}}"]);
    registry_options(&mut cmd, "", creds, cert_dir);
    run(cmd.arg(reference), DEFAULT_TIMEOUT)
}

/// `speculum-registry serve --config FILE`; SIGKILLed on drop unless stopped.
pub struct Serve {
    pub child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Serve {
    pub fn start(config: &Path, port: u16, env: &[(&str, &str)]) -> Serve {
        let log = config.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,speculum_server=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut serve = Serve {
            child: Some(child),
            port,
            log,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = serve.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("serve exited with {status}:\n{}", serve.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "serve did not start:\n{}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn docker_ref(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.host())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "exit {status} after SIGTERM:\n{}",
                    self.log()
                );
                assert!(self.log().contains("SIGTERM received"));
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
