"""cargo bench: the criterion benches of any crate that has a benches/
directory, run with `--quick`; their result lines go into the report. When
no crate has one, this is skipped with a note."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..context import Bench
from ..proc import BenchError, run as run_cmd

TITLE = 'cargo bench (criterion, --quick)'
SECTION = 'cargo'
TIMEOUT = 900


def crates_with_benches(repo: Path) -> list[str]:
    """The package names of crates/*/ that have a benches/ directory."""
    names = []
    for bench_dir in sorted(repo.glob('crates/*/benches')):
        manifest = (bench_dir.parent / 'Cargo.toml').read_text()
        m = re.search(r'^name\s*=\s*"([^"]+)"', manifest, re.M)
        if m and bench_dir.is_dir():
            names.append(m.group(1))
    return names


def run_criterion(bench: Bench, package: str) -> list[str]:
    """`cargo bench -p PACKAGE --bench '*' -- --quick`: the lines naming a time
    (and a throughput). `--bench '*'` picks the bench targets only: the unit tests' libtest
    harness does not know `--quick`."""
    done = run_cmd(['cargo', 'bench', '-j', '2', '-p', package, '--bench', '*', '--', '--quick'],
                   TIMEOUT,
                   env=dict(os.environ), cwd=bench.repo, check=False)
    if done.returncode != 0:
        raise BenchError(f'cargo bench -p {package}: exit {done.returncode}: {done.stderr[-500:]}')
    lines = done.stdout.splitlines()
    keep = []
    for i, line in enumerate(lines):
        if '%' in line:
            continue  # the change since criterion's last run, not a figure
        if 'time:' in line:
            name = line.split('time:')[0].strip() or (lines[i - 1].strip() if i else '')
            keep.append(f'{package}: {name} time: {line.split("time:", 1)[1].strip()}')
        elif 'thrpt:' in line and keep:
            keep[-1] += f' thrpt: {line.split("thrpt:", 1)[1].strip()}'
    return keep


def run(bench: Bench) -> None:
    packages = crates_with_benches(bench.repo)
    if not packages:
        bench.results.note(SECTION, 'No crate has a benches/ directory yet: skipped.')
        return
    for package in packages:
        for line in run_criterion(bench, package):
            bench.results.note(SECTION, line)
