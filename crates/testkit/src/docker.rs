//! A private Docker daemon (Debian `docker.io`) per test: its own data root, exec root,
//! socket and daemon.json, vfs storage, no bridge and no iptables changes.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::kill_pid;
use crate::tools::require_tool;

/// Where the Docker daemon looks for per-registry CA certificates (fixed for root).
const CERTS_D: &str = "/etc/docker/certs.d";

/// How to start a [`Dockerd`].
#[derive(Debug, Clone, Default)]
pub struct DockerdOptions {
    /// `registry-mirrors` in daemon.json (for example `https://127.0.0.1:PORT`).
    pub mirrors: Vec<String>,
    /// `insecure-registries` in daemon.json (`HOST:PORT`).
    pub insecure_registries: Vec<String>,
    /// CA certificates to trust, by registry (`HOST:PORT`, PEM path). Installed as
    /// `/etc/docker/certs.d/HOST:PORT/ca.crt` (the daemon has no other place for them) and
    /// removed on drop.
    pub registry_cas: Vec<(String, PathBuf)>,
}

impl DockerdOptions {
    /// No mirrors, no extra registries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a registry mirror.
    pub fn mirror(mut self, url: &str) -> Self {
        self.mirrors.push(url.to_owned());
        self
    }

    /// Adds a registry reached without TLS verification.
    pub fn insecure_registry(mut self, host_port: &str) -> Self {
        self.insecure_registries.push(host_port.to_owned());
        self
    }

    /// Trusts `ca` for the registry at `host_port`.
    pub fn registry_ca(mut self, host_port: &str, ca: &Path) -> Self {
        self.registry_cas
            .push((host_port.to_owned(), ca.to_path_buf()));
        self
    }
}

/// A running private `dockerd`, stopped (SIGTERM, then SIGKILL after 15 s) on drop. Use
/// [`Dockerd::docker`] for a client bound to it.
#[derive(Debug)]
pub struct Dockerd {
    child: Option<Child>,
    dir: TempDir,
    installed_cas: Vec<PathBuf>,
}

impl Dockerd {
    /// Starts the daemon and waits (up to 60 s) until `docker version` answers.
    pub fn start(opts: DockerdOptions) -> Self {
        let dockerd = require_tool("dockerd");
        require_tool("docker");
        // Short paths: containerd's socket lives under the exec root.
        let dir = tempfile::Builder::new()
            .prefix("sp-dockerd-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path();
        for sub in ["data", "exec", "config"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::write(root.join("config/config.json"), "{}").unwrap();
        let mut installed_cas = Vec::new();
        for (host_port, ca) in &opts.registry_cas {
            let certs = Path::new(CERTS_D).join(host_port);
            fs::create_dir_all(&certs).unwrap_or_else(|e| {
                panic!(
                    "cannot create {} (the daemon reads CAs only there): {e}",
                    certs.display()
                )
            });
            fs::copy(ca, certs.join("ca.crt")).unwrap();
            installed_cas.push(certs);
        }
        let daemon_json = serde_json::json!({
            "registry-mirrors": opts.mirrors,
            "insecure-registries": opts.insecure_registries,
            "storage-driver": "vfs",
            "iptables": false,
            "ip6tables": false,
            "ip-forward": false,
            "ip-masq": false,
            "bridge": "none",
            "log-level": "warn",
            "features": {"buildkit": false},
        });
        fs::write(
            root.join("daemon.json"),
            serde_json::to_vec_pretty(&daemon_json).unwrap(),
        )
        .unwrap();
        let log = File::create(root.join("dockerd.log")).unwrap();
        let child = Command::new(dockerd)
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", root.join("docker.sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start dockerd");
        let mut me = Dockerd {
            child: Some(child),
            dir,
            installed_cas,
        };
        let start = Instant::now();
        loop {
            let ok = me
                .docker()
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return me;
            }
            if let Some(status) = me.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited with {status}:\n{}", me.log());
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("dockerd did not answer within 60 s:\n{}", me.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A `docker` client command bound to this daemon, with its own client config
    /// (`DOCKER_CONFIG`, so logins stay in the test).
    pub fn docker(&self) -> Command {
        // Debian's client matches the daemon's API version.
        let client = if Path::new("/usr/bin/docker").exists() {
            PathBuf::from("/usr/bin/docker")
        } else {
            require_tool("docker")
        };
        let mut cmd = Command::new(client);
        cmd.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        )
        .env("DOCKER_CONFIG", self.dir.path().join("config"))
        .env("DOCKER_BUILDKIT", "0");
        cmd
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_pid(child.id(), "TERM");
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        for certs in &self.installed_cas {
            let _ = fs::remove_dir_all(certs);
        }
    }
}
