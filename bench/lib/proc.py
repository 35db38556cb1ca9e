"""Processes: commands with a timeout, and servers stopped by PID.

Every server the bench starts is a `Server`; each one is registered in
`_LIVE` and stopped (kill + wait) by `stop_all`, which run.py calls in a
`finally` and registers with atexit, so nothing outlives the bench.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from . import record

CLK_TCK = os.sysconf('SC_CLK_TCK')
_LIVE: list['Server'] = []


class BenchError(Exception):
    """A step failed: the message says which and why."""


def run(cmd: list[str], timeout: float, env: dict | None = None, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` to completion within `timeout` seconds, capturing its output."""
    record.command(cmd)
    try:
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd, check=False)
    except subprocess.TimeoutExpired as err:
        raise BenchError(f'{cmd[0]} timed out after {timeout:.0f} s: {" ".join(map(str, cmd))}') from err
    if check and done.returncode != 0:
        raise BenchError(f'{" ".join(map(str, cmd))} exited {done.returncode}: '
                         f'{(done.stderr or done.stdout).strip()[-800:]}')
    return done


def timed(cmd: list[str], timeout: float, env: dict | None = None) -> float:
    """Run `cmd`, which must succeed; its wall time in seconds."""
    t0 = time.perf_counter()
    run(cmd, timeout, env=env)
    return time.perf_counter() - t0


class Server:
    """A long-running process the bench started, with its /proc figures."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None):
        self.name = name
        record.command(cmd)
        self.log = log
        self._log = open(log, 'wb')  # noqa: SIM115 (closed in stop)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        self.peak_rss_kb = 0
        self._lap = 0.0
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far."""
        fields = Path(f'/proc/{self.pid}/stat').read_text().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def cpu_lap(self) -> float:
        """CPU seconds used since the previous lap (or the start)."""
        now = self.cpu_seconds()
        used, self._lap = now - self._lap, now
        return used

    def hwm_kb(self) -> int:
        """VmHWM, the peak resident set size, in KiB (0 once it has exited)."""
        try:
            for line in Path(f'/proc/{self.pid}/status').read_text().splitlines():
                if line.startswith('VmHWM:'):
                    self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        except OSError:
            pass
        return self.peak_rss_kb

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors='replace')[-1500:]
        except OSError:
            return ''

    def stop(self) -> None:
        """Read the peak RSS, then SIGTERM (SIGKILL after 10 s) and reap."""
        if self not in _LIVE:
            return
        self.hwm_kb()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        _LIVE.remove(self)


def stop_all() -> None:
    """Stop every server still running (run.py's finally and atexit)."""
    for server in list(_LIVE):
        try:
            server.stop()
        except (OSError, subprocess.SubprocessError):
            pass


def poll(what: str, check, timeout: float, interval: float = 0.01):
    """Call `check()` until it returns something true, at most `timeout` seconds."""
    deadline = time.perf_counter() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = check()
        if value:
            return value
        if time.perf_counter() > deadline:
            break
        time.sleep(interval)
    raise BenchError(f'{what}: not ready after {timeout:.0f} s')
