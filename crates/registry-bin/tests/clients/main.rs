//! End-to-end tests of `speculum-registry buildset` with real clients: skopeo, podman and
//! buildah (Debian packages) and a private Docker daemon talk to the binary as built, over TLS with its generated
//! certificate and credentials. Nothing here reaches a public registry: skopeo runs with
//! `--insecure-policy`, podman and buildah get an empty registries.conf and a temporary
//! policy.json, and every image name carries the registry's `127.0.0.1:PORT`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod auth;
mod buildah;
mod docker;
mod lifecycle;
mod podman;
mod skopeo;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use speculum_testkit::{BuildsetOptions, BuildsetRegistry, require_tool};
use tempfile::TempDir;

/// Options for the binary under test.
fn options() -> BuildsetOptions {
    BuildsetOptions::new(env!("CARGO_BIN_EXE_speculum-registry"))
}

/// A TLS buildset registry with a random password.
fn registry() -> BuildsetRegistry {
    BuildsetRegistry::start(options())
}

/// An isolated home for container clients: no auth file of the host, no registries.conf
/// that could resolve short names upstream, its own storage.
struct Clients {
    dir: TempDir,
}

impl Clients {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("speculum-clients-")
            .tempdir()
            .unwrap();
        fs::write(dir.path().join("registries.conf"), "").unwrap();
        fs::write(
            dir.path().join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        fs::write(dir.path().join("auth.json"), "{}").unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        Clients { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Environment shared by all clients.
    fn env(&self, cmd: &mut Command) {
        cmd.env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("TMPDIR", self.path("tmp"))
            .env("HOME", self.dir.path());
    }

    /// `skopeo --insecure-policy`.
    fn skopeo(&self) -> Command {
        require_tool("skopeo");
        let mut cmd = Command::new("skopeo");
        self.env(&mut cmd);
        cmd.arg("--insecure-policy");
        cmd
    }

    /// `podman` with vfs storage in the temporary directory.
    fn podman(&self) -> Command {
        require_tool("podman");
        let mut cmd = Command::new("podman");
        self.env(&mut cmd);
        cmd.arg("--root")
            .arg(self.path("podman/root"))
            .arg("--runroot")
            .arg(self.path("podman/run"))
            .arg("--tmpdir")
            .arg(self.path("podman/tmp"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(["--cgroup-manager", "cgroupfs"]);
        cmd
    }

    /// `buildah` with vfs storage in the temporary directory.
    fn buildah(&self) -> Command {
        require_tool("buildah");
        let mut cmd = Command::new("buildah");
        self.env(&mut cmd);
        cmd.arg("--root")
            .arg(self.path("buildah/root"))
            .arg("--runroot")
            .arg(self.path("buildah/run"))
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    fn policy(&self) -> PathBuf {
        self.path("policy.json")
    }
}

/// The sha256 digest of a command's stdout (for `skopeo inspect --raw`).
fn digest_of(stdout: &str) -> speculum_oci::Digest {
    speculum_oci::Digest::sha256(stdout.as_bytes())
}

/// Every file below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
