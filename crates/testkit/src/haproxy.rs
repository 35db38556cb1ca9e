//! HAProxy (Debian `haproxy`) on loopback in front of several registry processes, as a site
//! runs them: round robin per request, health checks on `GET /v2/`, a request that cannot
//! connect retried on another server.
//!
//! It runs in the foreground (`-db`: no daemon, no master process), so the process started
//! is the one that serves and is stopped by its PID on drop. Its log (`log stderr`, one line
//! per request) goes to a file in its directory, for failure messages.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{CmdOutput, kill_pid, run};
use crate::tools::{free_port, require_tool};

/// How long [`Haproxy::start`] waits for the port to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `haproxy -db` on 127.0.0.1, stopped (SIGTERM, then SIGKILL) on drop.
///
/// ```no_run
/// use speculum_testkit::Haproxy;
///
/// let proxy = Haproxy::start(&[5001, 5002, 5003]);
/// proxy.wait_for_states(&["UP", "UP", "UP"], std::time::Duration::from_secs(10));
/// println!("clients use {}", proxy.host());
/// ```
#[derive(Debug)]
pub struct Haproxy {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    stats_port: Option<u16>,
}

impl Haproxy {
    /// Balances over `backends` (ports on 127.0.0.1, servers `s0`, `s1`, … in that order)
    /// with [`Haproxy::config`], listening on a free port. Panics if it does not start.
    pub fn start(backends: &[u16]) -> Haproxy {
        let port = free_port();
        let stats_port = free_port();
        let mut proxy = Haproxy::start_config(&Haproxy::config(port, stats_port, backends), port);
        proxy.stats_port = Some(stats_port);
        proxy
    }

    /// Runs the config `text` as it is (a site's config, ports and paths filled in by the
    /// caller), waiting until `port` accepts connections. Panics, with haproxy's output, if
    /// the config is refused or haproxy exits.
    pub fn start_config(text: &str, port: u16) -> Haproxy {
        let binary = require_tool("haproxy");
        let dir = tempfile::Builder::new()
            .prefix("speculum-haproxy-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("haproxy.cfg");
        fs::write(&config, text).unwrap();
        let check = Haproxy::check(&config);
        assert!(
            check.success(),
            "haproxy refused its config:\n{text}\n{}",
            check.describe()
        );
        let log = File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut proxy = Haproxy {
            child: Some(child),
            dir,
            port,
            stats_port: None,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = proxy.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("haproxy exited with {status}:\n{}", proxy.log());
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "haproxy did not listen on {port} within {START_TIMEOUT:?}:\n{}",
                proxy.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// `haproxy -c -f CONFIG`: whether haproxy accepts a config file, without running it.
    pub fn check(config: &Path) -> CmdOutput {
        let binary = require_tool("haproxy");
        run(
            Command::new(binary).arg("-c").arg("-f").arg(config),
            Duration::from_secs(30),
        )
    }

    /// The config [`Haproxy::start`] runs: HTTP mode on `127.0.0.1:port`; round robin over
    /// the backends for each request (no `prefer-last-server`: one client's requests land on
    /// every process, as an upload's do behind a real balancer); health checks of `GET /v2/`
    /// every 500 ms, which answers 200 or 401 (a registry that wants credentials is up), a
    /// server down after two failures; a connection refused is retried (`retries 3`) on
    /// another server (`option redispatch`), while a request that reached a server is never
    /// sent twice; timeouts long enough for a big layer's PATCH; statistics as CSV on
    /// `127.0.0.1:stats_port` (`/stats;csv`).
    pub fn config(port: u16, stats_port: u16, backends: &[u16]) -> String {
        let mut text = format!(
            "global
    log stderr format raw local0 info
    maxconn 1024

defaults
    mode http
    log global
    option httplog
    option forwardfor
    retries 3
    option redispatch
    timeout connect 2s
    timeout http-request 30s
    timeout client 10m
    timeout server 10m
    timeout http-keep-alive 30s
    timeout queue 30s
    timeout check 2s

frontend registry
    bind 127.0.0.1:{port}
    default_backend serve

frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
    no log

backend serve
    balance roundrobin
    option httpchk GET /v2/
    http-check expect status 200,401
    default-server check inter 500ms fall 2 rise 1
"
        );
        for (i, backend) in backends.iter().enumerate() {
            let _ = writeln!(text, "    server s{i} 127.0.0.1:{backend}");
        }
        text
    }

    /// The port clients use.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// haproxy's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The directory holding its config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What it logged so far (start-up messages, then a line per request).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    /// The state of each server of the `serve` backend, in config order (`UP`, `DOWN`,
    /// `UP 1/2`, …), from the statistics page. Only for a proxy made by
    /// [`Haproxy::start`].
    pub fn states(&self) -> Vec<String> {
        let stats_port = self
            .stats_port
            .expect("statistics exist only for a proxy made by Haproxy::start");
        let csv = http_get(stats_port, "/stats;csv");
        let mut lines = csv.lines();
        let head = lines.next().unwrap_or_default();
        let columns: Vec<&str> = head.trim_start_matches("# ").split(',').collect();
        let column = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("no {name} column in haproxy's statistics:\n{csv}"))
        };
        let (px, sv, status) = (column("pxname"), column("svname"), column("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[px] == "serve" && f[sv].starts_with('s'))
            .map(|f| f[status].to_owned())
            .collect()
    }

    /// Waits until [`Haproxy::states`] equals `want` (compared by prefix, so `UP` also
    /// matches `UP 1/2`); panics with the states and the log after `timeout`.
    pub fn wait_for_states(&self, want: &[&str], timeout: Duration) {
        let start = Instant::now();
        loop {
            let states = self.states();
            if states.len() == want.len() && states.iter().zip(want).all(|(s, w)| s.starts_with(w))
            {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "haproxy's servers are {states:?}, not {want:?}, after {timeout:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_pid(child.id(), "TERM");
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(5) {
                    let _ = child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }
}

/// The body of a plain `GET` on 127.0.0.1 (empty if it fails).
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return String::new();
    };
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

/// The data of a `Transfer-Encoding: chunked` body (haproxy's statistics page is sent so
/// even to an HTTP/1.0 client).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }

    #[test]
    fn generated_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        fs::write(&path, Haproxy::config(5000, 5009, &[5001, 5002, 5003])).unwrap();
        let out = Haproxy::check(&path);
        assert!(out.success(), "{}", out.describe());
    }
}
