//! The `speculum-registry buildset` binary, run on loopback for a test.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

use crate::process::kill_pid;

/// The connection info a buildset registry writes: the `buildset_registry` dict Zuul jobs
/// pass around.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistryInfo {
    /// Host name or address clients should use.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User allowed to push (`zuul`).
    pub username: String,
    /// That user's password.
    pub password: String,
    /// PEM of the registry's self-signed certificate (absent or empty in plain-HTTP mode).
    #[serde(default)]
    pub cert: Option<String>,
}

/// How to start a [`BuildsetRegistry`].
#[derive(Debug, Clone)]
pub struct BuildsetOptions {
    /// Path of the `speculum-registry` binary (`env!("CARGO_BIN_EXE_speculum-registry")`, or
    /// [`crate::workspace_binary`]).
    pub binary: PathBuf,
    /// Serve plain HTTP (`--insecure-http`).
    pub insecure_http: bool,
    /// A fixed password for `zuul` (passed with `--password-file`); random if `None`.
    pub password: Option<String>,
    /// Storage directory (`--root`); a temporary one owned by the registry if `None`.
    pub root: Option<PathBuf>,
    /// More arguments after `buildset` (for example `--hostname NAME`).
    pub extra_args: Vec<String>,
    /// How long to wait for the info file.
    pub ready_timeout: Duration,
}

impl BuildsetOptions {
    /// TLS, random password, temporary storage, 30 s to become ready.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        BuildsetOptions {
            binary: binary.into(),
            insecure_http: false,
            password: None,
            root: None,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// Serves plain HTTP instead of TLS.
    pub fn insecure_http(mut self, yes: bool) -> Self {
        self.insecure_http = yes;
        self
    }

    /// Uses a fixed password.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Uses `root` as the storage directory.
    pub fn root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_path_buf());
        self
    }

    /// Adds arguments after `buildset`.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A running `speculum-registry buildset` on 127.0.0.1 and a free port. Stopped with SIGTERM
/// (then SIGKILL after 5 s) on drop.
#[derive(Debug)]
pub struct BuildsetRegistry {
    child: Option<Child>,
    dir: TempDir,
    info: RegistryInfo,
    startup: Duration,
    insecure_http: bool,
}

impl BuildsetRegistry {
    /// Starts the registry and waits until it has written its info file (which it does only
    /// once it accepts connections). Panics, with the registry's log, if it exits or is not
    /// ready within `opts.ready_timeout`.
    pub fn start(opts: BuildsetOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("speculum-br-")
            .tempdir()
            .unwrap();
        let info_file = dir.path().join("info.json");
        let log = File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new(&opts.binary);
        cmd.arg("buildset")
            .args(["--listen", "127.0.0.1:0", "--info-file"])
            .arg(&info_file);
        if opts.insecure_http {
            cmd.arg("--insecure-http");
        }
        if let Some(password) = &opts.password {
            let file = dir.path().join("password");
            fs::write(&file, password).unwrap();
            cmd.arg("--password-file").arg(file);
        }
        if let Some(root) = &opts.root {
            cmd.arg("--root").arg(root);
        }
        cmd.args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", opts.binary.display()));
        let info = loop {
            // The file may appear before it is complete: wait until it parses.
            if let Ok(bytes) = fs::read(&info_file)
                && let Ok(info) = serde_json::from_slice::<RegistryInfo>(&bytes)
            {
                break info;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "speculum-registry exited with {status} before it was ready:\n{}",
                    read_log(dir.path())
                );
            }
            if start.elapsed() > opts.ready_timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "speculum-registry was not ready within {:?}:\n{}",
                    opts.ready_timeout,
                    read_log(dir.path())
                );
            }
            thread::sleep(Duration::from_millis(1));
        };
        let startup = start.elapsed();
        let certs = dir.path().join("certs");
        fs::create_dir_all(&certs).unwrap();
        if let Some(cert) = info.cert.as_deref().filter(|c| !c.is_empty()) {
            fs::write(certs.join("ca.crt"), cert).unwrap();
        }
        BuildsetRegistry {
            child: Some(child),
            dir,
            info,
            startup,
            insecure_http: opts.insecure_http,
        }
    }

    /// The connection info it wrote.
    pub fn info(&self) -> &RegistryInfo {
        &self.info
    }

    /// Time from spawn to a complete info file.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.info.port)
    }

    /// `https://127.0.0.1:PORT` (or `http://` in plain-HTTP mode).
    pub fn url(&self) -> String {
        let scheme = if self.insecure_http { "http" } else { "https" };
        format!("{scheme}://{}", self.addr())
    }

    /// `docker://127.0.0.1:PORT/<name>` for skopeo.
    pub fn docker_ref(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr())
    }

    /// `zuul:PASSWORD`, for `--creds`/`--dest-creds`.
    pub fn creds(&self) -> String {
        format!("{}:{}", self.info.username, self.info.password)
    }

    /// A directory holding the certificate as `ca.crt` (empty in plain-HTTP mode), for
    /// skopeo's `--cert-dir`/`--src-cert-dir`/`--dest-cert-dir` and podman's `--cert-dir`.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The certificate file (`cert_dir()/ca.crt`).
    pub fn cert_path(&self) -> PathBuf {
        self.cert_dir().join("ca.crt")
    }

    /// The info file the registry wrote.
    pub fn info_file(&self) -> PathBuf {
        self.dir.path().join("info.json")
    }

    /// The registry's stdout and stderr so far.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// Process id of the registry.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// SIGKILL, as a crash or the OOM killer would, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the registry to exit; returns its status,
    /// or `None` if it had to be killed.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        kill_pid(child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for BuildsetRegistry {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
}
