//! Helpers shared by the end-to-end tests: running the binary, and registries
//! described by the flags the binary needs to reach them.

use std::path::Path;
use std::process::Command;

use speculum_testkit::{
    BuildsetOptions, BuildsetRegistry, CmdOutput, DEFAULT_TIMEOUT, Distribution,
    DistributionOptions, run, workspace_binary,
};

/// Run `speculum` with `args` in an environment that cannot pick up the
/// machine's credentials or certificates.
pub fn speculum(args: &[&str]) -> CmdOutput {
    speculum_env(args, &[])
}

/// Same, with extra environment variables.
pub fn speculum_env(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let home = std::env::temp_dir().join("speculum-e2e-empty-home");
    let _ = std::fs::create_dir_all(&home);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speculum"));
    cmd.args(args)
        .env_remove("SPECULUM_CREDS")
        .env_remove("SPECULUM_SRC_CREDS")
        .env_remove("SPECULUM_DEST_CREDS")
        .env_remove("DOCKER_CONFIG")
        .env_remove("QUAY_API_TOKEN")
        .env("REGISTRY_AUTH_FILE", home.join("no-auth.json"))
        .env("XDG_RUNTIME_DIR", &home)
        .env("HOME", &home)
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, DEFAULT_TIMEOUT)
}

/// `speculum ... --json` that must succeed, parsed.
pub fn speculum_json(args: &[&str]) -> serde_json::Value {
    let out = speculum(args).assert_success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

/// The two registries every test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Debian's docker-registry (distribution 2.8), plain HTTP, optional Basic auth.
    Distribution,
    /// speculum-registry buildset: TLS with its own certificate, Basic auth for pushes.
    Speculum,
}

/// A running registry and how to reach it.
pub enum Reg {
    /// distribution.
    Dist(Distribution),
    /// speculum-registry.
    Spec(BuildsetRegistry),
}

impl Reg {
    pub fn start(kind: Kind) -> Reg {
        match kind {
            Kind::Distribution => Reg::Dist(Distribution::start(DistributionOptions::new())),
            Kind::Speculum => Reg::Spec(BuildsetRegistry::start(BuildsetOptions::new(
                workspace_binary("speculum-registry"),
            ))),
        }
    }

    pub fn addr(&self) -> String {
        match self {
            Reg::Dist(d) => d.addr(),
            Reg::Spec(s) => s.addr(),
        }
    }

    /// `ADDR/name`.
    pub fn r(&self, name: &str) -> String {
        format!("{}/{name}", self.addr())
    }

    /// Flags to reach this registry as `side` (`src`, `dest`, or `` for
    /// single-registry commands).
    pub fn flags(&self, side: &str) -> Vec<String> {
        let p = if side.is_empty() {
            String::from("--")
        } else {
            format!("--{side}-")
        };
        match self {
            Reg::Dist(d) => {
                let mut v = vec![format!("{p}insecure")];
                if let Some(c) = d.creds() {
                    v.push(format!("{p}creds"));
                    v.push(c);
                }
                v
            }
            Reg::Spec(s) => vec![
                format!("{p}ca"),
                s.cert_path().display().to_string(),
                format!("{p}creds"),
                s.creds(),
            ],
        }
    }
}

/// Build an argument list from `&str`s and flag vectors.
pub fn args(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

pub fn s(x: &str) -> Vec<String> {
    vec![x.to_string()]
}

pub fn run_args(a: &[String]) -> CmdOutput {
    let v: Vec<&str> = a.iter().map(String::as_str).collect();
    speculum(&v)
}

pub fn run_json(a: &[String]) -> serde_json::Value {
    let v: Vec<&str> = a.iter().map(String::as_str).collect();
    speculum_json(&v)
}

/// The digest `inspect --json` reports for a registry image.
pub fn digest_of(reg: &Reg, image: &str) -> String {
    let a = args(&[
        &s("inspect"),
        &s(&reg.r(image)),
        &s("--json"),
        &reg.flags(""),
    ]);
    run_json(&a)["digest"].as_str().unwrap().to_string()
}

/// The tags `tags --json` lists.
pub fn tags_of(reg: &Reg, repo: &str) -> Vec<String> {
    let a = args(&[&s("tags"), &s(&reg.r(repo)), &s("--json"), &reg.flags("")]);
    let mut v: Vec<String> = serde_json::from_value(run_json(&a)).unwrap();
    v.sort();
    v
}

pub fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("speculum-e2e-")
        .tempdir()
        .unwrap()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
