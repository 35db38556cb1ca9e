//! Running commands with a timeout and captured output.

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The timeout [`run_ok`] uses: long enough for a 100 MB copy on a busy 2-core machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
    /// Wall-clock time from spawn to exit.
    pub elapsed: Duration,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics, showing the command, status and both outputs, unless it exited with 0.
    pub fn assert_success(self) -> Self {
        assert!(self.success(), "command failed: {}", self.describe());
        self
    }

    /// Panics unless the command exited with a non-zero status.
    pub fn assert_failure(self) -> Self {
        assert!(
            !self.success(),
            "command unexpectedly succeeded: {}",
            self.describe()
        );
        self
    }

    /// The command, its status and its output, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "`{}` exited with {} after {:.2?}",
            self.command, self.status, self.elapsed
        );
        if !self.stdout.trim().is_empty() {
            let _ = write!(s, "\n--- stdout ---\n{}", self.stdout.trim_end());
        }
        if !self.stderr.trim().is_empty() {
            let _ = write!(s, "\n--- stderr ---\n{}", self.stderr.trim_end());
        }
        s
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` with stdin closed, capturing stdout and stderr. The command runs in its own
/// process group; if it has not exited after `timeout`, the whole group is killed and this
/// panics.
pub fn run(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let command = describe_command(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            kill_group(child.id(), "KILL");
            let _ = child.wait();
            panic!("`{command}` did not finish within {timeout:?}: killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    CmdOutput {
        command,
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// [`run`] with [`DEFAULT_TIMEOUT`], panicking unless the command succeeds.
pub fn run_ok(cmd: &mut Command) -> CmdOutput {
    run(cmd, DEFAULT_TIMEOUT).assert_success()
}

/// Sends `signal` (a name such as `TERM`) to the process group `pgid` (the negated id).
pub(crate) fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` to the single process `pid`.
pub(crate) fn kill_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
