//! Real S3 object stores on loopback, started by `scripts/stores/{swift,ceph}`: OpenStack
//! Swift with s3api (three devices, three replicas: the default store) and Ceph radosgw (for
//! strict S3 behaviour). A mock does not count as a store, and a store that cannot start
//! fails the test with the tail of its logs.
//!
//! Starting a store takes seconds (Swift 5 s, Ceph 13 s on 2 idle cores; 11-19 s and 19-21 s
//! on 2 busy ones), so each is started once per test process, on first use, and shared;
//! tests isolate by bucket ([`S3Store::fresh_bucket`]). Statics never drop, so the script is started with
//! `--parent <this process> --purge`: a watcher it leaves behind stops the store and removes
//! its directory when the test process exits, however it exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::run;
use crate::tools::require_tool;

/// How long `scripts/stores/* up` may take in all. The scripts bound each of their own waits
/// (Ceph's add up to a few minutes on a loaded machine, its OSD retries included); this
/// only catches a script that hangs regardless.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// How long one S3 request made by this module may take.
const REQUEST_TIMEOUT_SECS: &str = "60";

/// Which store an [`S3Store`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Swift,
    Ceph,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Swift => "swift",
            Kind::Ceph => "ceph",
        }
    }

    /// Tools the script needs, checked first so that a missing one names its package.
    fn tools(self) -> &'static [&'static str] {
        match self {
            Kind::Swift => &[
                "swift-proxy-server",
                "swift-account-server",
                "swift-container-server",
                "swift-object-server",
                "swift-object-replicator",
                "memcached",
                "curl",
            ],
            Kind::Ceph => &[
                "ceph-mon",
                "ceph-osd",
                "radosgw",
                "radosgw-admin",
                "ceph",
                "curl",
            ],
        }
    }
}

/// A running S3 store, shared by the tests of one process: see the [module docs](self).
///
/// ```no_run
/// use speculum_testkit::{S3Store, run_ok};
///
/// let store = S3Store::swift();
/// let bucket = store.fresh_bucket("blobs");
/// run_ok(store.curl("PUT", &format!("/{bucket}/hello")).args(["--data-binary", "hi"]));
/// let got = run_ok(&mut store.curl("GET", &format!("/{bucket}/hello")));
/// assert_eq!(got.stdout, "hi");
/// ```
#[derive(Debug)]
pub struct S3Store {
    kind: Kind,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    buckets: AtomicU32,
}

static SWIFT: OnceLock<Result<S3Store, String>> = OnceLock::new();
static CEPH: OnceLock<Result<S3Store, String>> = OnceLock::new();

impl S3Store {
    /// OpenStack Swift (proxy with tempauth and s3api; three devices, three replicas, the
    /// object replicator on ssync), started on first use. Panics with the store's log tails
    /// if it cannot start, in every test that asks for it.
    pub fn swift() -> &'static S3Store {
        shared(&SWIFT, Kind::Swift)
    }

    /// Ceph radosgw on one monitor and one memstore OSD, started on first use. Panics like
    /// [`S3Store::swift`].
    pub fn ceph() -> &'static S3Store {
        shared(&CEPH, Kind::Ceph)
    }

    /// `swift` or `ceph`.
    pub fn store(&self) -> &'static str {
        self.kind.name()
    }

    /// `http://127.0.0.1:PORT`; requests are path-style (`/BUCKET/KEY`).
    pub fn endpoint(&self) -> &str {
        &self.env["S3_ENDPOINT"]
    }

    /// The access key id (Swift's is `test:tester`: mind the colon).
    pub fn access_key_id(&self) -> &str {
        &self.env["S3_ACCESS_KEY_ID"]
    }

    /// The secret access key.
    pub fn secret_access_key(&self) -> &str {
        &self.env["S3_SECRET_ACCESS_KEY"]
    }

    /// The region to sign for: `us-east-1`.
    pub fn region(&self) -> &str {
        &self.env["S3_REGION"]
    }

    /// The variables of `DIR/s3.env` (`S3_ENDPOINT`, `S3_ACCESS_KEY_ID`,
    /// `S3_SECRET_ACCESS_KEY`, `S3_REGION`, `STORE`), for a child process's environment.
    pub fn env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The directory the store lives in (configs, data, `log/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Swift's three device directories, each holding one replica of every object (empty
    /// for Ceph, whose objects are in the OSD's memory).
    pub fn device_dirs(&self) -> Vec<PathBuf> {
        match self.kind {
            Kind::Swift => ["d1", "d2", "d3"]
                .iter()
                .map(|d| self.dir.join("srv").join(d))
                .collect(),
            Kind::Ceph => Vec::new(),
        }
    }

    /// Creates a new, empty bucket and returns its name: `PREFIX-PID-N`, with `PREFIX`
    /// lower-cased, anything but `[a-z0-9]` turned into `-`, and cut to 40 characters.
    /// Panics if the store refuses.
    pub fn fresh_bucket(&self, prefix: &str) -> String {
        let cleaned: String = prefix
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '-',
            })
            .take(40)
            .collect();
        let mut name = match cleaned.trim_matches('-') {
            "" => "bucket".to_owned(),
            trimmed => trimmed.to_owned(),
        };
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        let _ = write!(name, "-{}-{n}", std::process::id());
        let out = run(
            &mut self.curl("PUT", &format!("/{name}")),
            Duration::from_secs(90),
        );
        assert!(
            out.success(),
            "{}: cannot create bucket {name}: {}",
            self.store(),
            out.describe()
        );
        name
    }

    /// A `curl` command for one path-style S3 request, `METHOD ENDPOINT/PATH` (PATH starts
    /// with `/` and may carry a query), signed with SigV4 by curl itself. Add curl
    /// arguments for the rest (`-T FILE`, `--data-binary @FILE`, `-H 'Range: …'`, `-D -`).
    /// It fails (exit 22) on an HTTP error, with the store's error XML on stdout.
    ///
    /// Quirks of curl 7.88 it works around: `--user` splits at the first colon, so the
    /// credentials go in the URL, percent-encoded; curl sends no `x-amz-content-sha256`,
    /// which both stores require, so the payload is sent as `UNSIGNED-PAYLOAD`; and curl
    /// does not normalise the query, so write it sorted with every `=` (`?uploads=`).
    pub fn curl(&self, method: &str, path: &str) -> Command {
        assert!(
            path.starts_with('/'),
            "S3 path {path:?} must start with '/'"
        );
        let endpoint = self.endpoint();
        let (scheme, host) = endpoint.split_once("://").unwrap();
        let url = format!(
            "{scheme}://{}:{}@{host}{path}",
            percent_encode(self.access_key_id()),
            percent_encode(self.secret_access_key())
        );
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--fail-with-body",
            "--max-time",
            REQUEST_TIMEOUT_SECS,
        ])
        .args(["-X", method])
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{}:s3", self.region()))
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg(url);
        cmd
    }

    /// The store's logs (the last 30 lines of each), for failure messages.
    pub fn log_tails(&self) -> String {
        log_tails(&self.dir)
    }
}

fn shared(cell: &'static OnceLock<Result<S3Store, String>>, kind: Kind) -> &'static S3Store {
    // A failed start is remembered: every test that wants the store fails with the same
    // message, instead of each trying (and waiting) again.
    match cell.get_or_init(|| start(kind)) {
        Ok(store) => store,
        Err(message) => panic!("{message}"),
    }
}

fn start(kind: Kind) -> Result<S3Store, String> {
    for tool in kind.tools() {
        require_tool(tool);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/stores")
        .join(kind.name());
    let dir = tempfile::Builder::new()
        .prefix(&format!("speculum-{}-", kind.name()))
        .tempdir()
        .map_err(|e| format!("cannot create a directory for {}: {e}", kind.name()))?
        // Removed by the script's watcher (--purge) when this process exits.
        .keep();
    let out = run(
        Command::new(&script)
            .arg("up")
            .arg(&dir)
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--purge"),
        START_TIMEOUT,
    );
    if !out.success() {
        let message = format!(
            "the {} store did not start (a store that cannot start is a test failure): {}",
            kind.name(),
            out.describe()
        );
        let _ = fs::remove_dir_all(&dir);
        return Err(message);
    }
    eprintln!("{}", out.stderr.trim_end());
    let text = fs::read_to_string(dir.join("s3.env"))
        .map_err(|e| format!("{}: no s3.env after `up`: {e}", kind.name()))?;
    let env: BTreeMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for key in [
        "S3_ENDPOINT",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "S3_REGION",
    ] {
        if !env.contains_key(key) {
            return Err(format!("{}: s3.env has no {key}:\n{text}", kind.name()));
        }
    }
    Ok(S3Store {
        kind,
        dir,
        env,
        buckets: AtomicU32::new(0),
    })
}

fn log_tails(dir: &Path) -> String {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir.join("log"))
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    logs.sort();
    let mut s = String::new();
    for log in logs {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        if !tail.is_empty() {
            let _ = writeln!(s, "--- {} ---\n{}", log.display(), tail.join("\n"));
        }
    }
    s
}

/// `s` with everything but `[A-Za-z0-9._~-]` percent-encoded (for URL user info).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._~-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colons_in_keys_are_encoded() {
        assert_eq!(percent_encode("test:tester"), "test%3Atester");
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("k@/%+"), "k%40%2F%25%2B");
    }
}
