"""wrk, bounded: requests/s and the p50/p99 latency of one URL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .proc import BenchError, run

SECONDS = 2
CONNECTIONS = 32
THREADS = 2
UNITS = {'us': 0.001, 'ms': 1.0, 's': 1000.0, 'm': 60000.0}


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int


def command(url: str, headers: list[str]) -> list[str]:
    cmd = ['wrk', '-t', str(THREADS), '-c', str(CONNECTIONS), '-d', f'{SECONDS}s', '--latency',
           '--timeout', '5s']
    for h in headers:
        cmd += ['-H', h]
    return cmd + [url]


def _ms(text: str, percent: str) -> float:
    m = re.search(rf'^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$', text, re.M)
    if not m:
        raise BenchError(f'wrk: no {percent}% latency in its output')
    return float(m.group(1)) * UNITS[m.group(2)]


def parse(text: str) -> Load:
    rps = re.search(r'^Requests/sec:\s+([\d.]+)', text, re.M)
    total = re.search(r'^\s*(\d+) requests in', text, re.M)
    if not rps or not total:
        raise BenchError(f'wrk: unexpected output: {text[-500:]}')
    bad = re.search(r'Non-2xx or 3xx responses: (\d+)', text)
    errors = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', text)
    n_bad = int(bad.group(1)) if bad else 0
    if errors:
        n_bad += sum(int(g) for g in errors.groups())
    return Load(float(rps.group(1)), _ms(text, '50'), _ms(text, '99'), int(total.group(1)), n_bad)


def load(url: str, headers: list[str]) -> Load:
    return parse(run(command(url, headers), timeout=SECONDS + 60).stdout)


def ab_head(url: str, headers: list[str], csv: Path) -> Load:
    """HEAD requests under ab (`-k -i`, same concurrency and duration as wrk):
    wrk 4.1 is not told a response answers a HEAD, so it waits for the
    Content-Length bytes that never come. Percentiles from ab's CSV."""
    cmd = ['ab', '-q', '-k', '-i', '-c', str(CONNECTIONS), '-t', str(SECONDS), '-n', '100000000',
           '-e', str(csv)]
    for h in headers:
        cmd += ['-H', h]
    text = run(cmd + [url], timeout=SECONDS + 60).stdout
    rps = re.search(r'^Requests per second:\s+([\d.]+)', text, re.M)
    done = re.search(r'^Complete requests:\s+(\d+)', text, re.M)
    failed = re.search(r'^Failed requests:\s+(\d+)', text, re.M)
    non2xx = re.search(r'^Non-2xx responses:\s+(\d+)', text, re.M)
    if not rps or not done:
        raise BenchError(f'ab: unexpected output: {text[-500:]}')
    pct = dict(line.split(',', 1) for line in csv.read_text().splitlines()[1:])
    bad = (int(failed.group(1)) if failed else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return Load(float(rps.group(1)), float(pct['50']), float(pct['99']), int(done.group(1)), bad)
