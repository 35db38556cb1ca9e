//! Debian's `docker-registry` (distribution 2.8, the reference registry) on loopback.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::tools::{free_port, require_tool, self_signed_cert};

/// How to start a [`Distribution`].
#[derive(Debug, Clone, Default)]
pub struct DistributionOptions {
    /// Serve TLS with a generated self-signed certificate (for `localhost`, `127.0.0.1`, `::1`).
    pub tls: bool,
    /// Require HTTP Basic auth (htpasswd, bcrypt) for everything, with this user and password.
    pub auth: Option<(String, String)>,
}

impl DistributionOptions {
    /// Plain HTTP, no auth.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves TLS.
    pub fn tls(mut self, yes: bool) -> Self {
        self.tls = yes;
        self
    }

    /// Requires this user and password.
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }
}

/// A running `docker-registry serve` on 127.0.0.1 and a free port, with its storage in a
/// temporary directory. Killed on drop.
#[derive(Debug)]
pub struct Distribution {
    child: Child,
    dir: TempDir,
    port: u16,
    opts: DistributionOptions,
}

impl Distribution {
    /// Starts the registry and waits until it accepts connections (and, over plain HTTP,
    /// until `GET /v2/` answers). Panics with its log if it does not start within 30 s.
    pub fn start(opts: DistributionOptions) -> Self {
        let binary = require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("speculum-dist-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("storage")).unwrap();
        fs::create_dir_all(root.join("certs")).unwrap();
        let mut tls = String::new();
        if opts.tls {
            let cert = self_signed_cert();
            fs::write(root.join("certs/ca.crt"), &cert.cert_pem).unwrap();
            fs::write(root.join("tls.key"), &cert.key_pem).unwrap();
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("certs/ca.crt").display(),
                root.join("tls.key").display()
            );
        }
        let mut auth = String::new();
        if let Some((user, password)) = &opts.auth {
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            fs::write(root.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: speculum-test\n    path: {}\n",
                root.join("htpasswd").display()
            );
        }
        // A port picked by bind(0) may be taken again before the registry binds it: retry.
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: speculum-testkit\n{tls}{auth}",
                root.join("storage").display()
            );
            fs::write(root.join("config.yml"), config).unwrap();
            let log = File::create(root.join("registry.log")).unwrap();
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(root.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
            if wait_ready(&mut child, port, opts.tls, Duration::from_secs(30)) {
                return Distribution {
                    child,
                    dir,
                    port,
                    opts,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = read_log(root);
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!("docker-registry did not start:\n{last_log}");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:PORT` or `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    /// `docker://127.0.0.1:PORT/<name>` for skopeo.
    pub fn docker_ref(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr())
    }

    /// `USER:PASSWORD` when auth is on.
    pub fn creds(&self) -> Option<String> {
        self.opts.auth.as_ref().map(|(u, p)| format!("{u}:{p}"))
    }

    /// A directory holding the TLS certificate as `ca.crt` (empty without TLS).
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The certificate file (`cert_dir()/ca.crt`).
    pub fn cert_path(&self) -> PathBuf {
        self.cert_dir().join("ca.crt")
    }

    /// The storage root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the registry accepts connections on `port` and, over plain HTTP, answers
/// `GET /v2/`; false if it exits or the time runs out.
fn wait_ready(child: &mut Child, port: u16, tls: bool, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            if tls {
                return true;
            }
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            let mut head = [0u8; 12];
            if stream.write_all(req.as_bytes()).is_ok()
                && stream.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
            {
                return true;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
}
