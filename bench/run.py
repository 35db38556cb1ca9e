#!/usr/bin/python3
"""The benchmark suite of issue 10 (`make bench`): speculum's registries and
helper against distribution (Debian's docker-registry) and zuul-registry 1.3.0,
on loopback, in one run, written up as doc/benchmarks.md with a chart.

    /usr/bin/python3 bench/run.py [--runs 3] [--long-runs 1] [--only 1,4] [--out bench/out]

Needs the release binaries (`cargo build --release --bins`) and the tools of
scripts/install-bench-deps.sh; `make bench` does all three. Standard library
only, plus Debian's matplotlib for the chart. See bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import machine, proc, record, registries, report  # noqa: E402
from lib.context import Bench  # noqa: E402
from lib.results import Results  # noqa: E402
from lib.sections import (  # noqa: E402
    criterion, s1_blobs, s2_skopeo, s3_parallel, s4_small, s5_memory, s6_start, s7_helper,
    s8_intermediate, s9_stores)

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {'1': s1_blobs, '2': s2_skopeo, '3': s3_parallel, '4': s4_small, '5': s5_memory,
            '6': s6_start, '7': s7_helper, '8': s8_intermediate, '9': s9_stores,
            'cargo': criterion}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--runs', type=int, default=3, help='runs per measurement (1..10; default 3)')
    p.add_argument('--long-runs', type=int, default=1,
                   help='runs of the long cases: the 1 GB image (sections 2, 7) and section 3 '
                        '(1..10; default 1)')
    p.add_argument('--only', default=','.join(SECTIONS),
                   help=f'comma-separated sections to run (default all: {",".join(SECTIONS)})')
    p.add_argument('--out', type=Path, default=REPO / 'bench' / 'out',
                   help='work directory: images, registries, results.json (default bench/out)')
    p.add_argument('--doc', type=Path, default=None,
                   help='where benchmarks.md and .png go (default doc/ for a full run, else OUT)')
    p.add_argument('--bin-dir', type=Path, default=default_bin_dir(),
                   help='the release binaries (default $CARGO_TARGET_DIR/release or target/release)')
    p.add_argument('--report-only', action='store_true',
                   help='render the report again from OUT/results.json, measuring nothing')
    args = p.parse_args()
    args.only = [s.strip() for s in args.only.split(',') if s.strip()]
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown or not 1 <= args.runs <= 10 or not 1 <= args.long_runs <= 10:
        p.error(f'unknown section {unknown}' if unknown else '--runs and --long-runs must be 1..10')
    args.out = args.out.resolve()
    return args


def doc_dir(args: argparse.Namespace, results: Results) -> Path:
    """--doc, else doc/ when every section ran, else OUT."""
    if args.doc is not None:
        return args.doc
    return REPO / 'doc' if set(results.meta.get('only', [])) == set(SECTIONS) else args.out


def default_bin_dir() -> Path:
    target = os.environ.get('CARGO_TARGET_DIR')
    return (Path(target) if target else REPO / 'target') / 'release'


def check_tools(args: argparse.Namespace) -> None:
    needed = ['curl', 'wrk', 'skopeo', 'umoci', 'docker-registry', 'openssl', 'htpasswd']
    if '9' in args.only:
        needed += ['swift-proxy-server', 'memcached', 'ceph-mon', 'ceph-osd', 'radosgw']
    missing = [t for t in needed if shutil.which(t) is None]
    for binary in ('speculum-registry', 'speculum'):
        if not (args.bin_dir / binary).exists():
            missing.append(str(args.bin_dir / binary))
    if missing:
        sys.exit(f'bench: missing {", ".join(missing)} (scripts/install-bench-deps.sh; '
                 'cargo build --release --bins)')


def on_signal(signum, _frame):
    raise SystemExit(f'bench: stopped by signal {signum}')


def measure(args: argparse.Namespace) -> Results:
    work = args.out / 'work'
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = registries.Env(work=work, bin_dir=args.bin_dir,
                         zuul_venv=args.out / 'zuul-registry-venv')
    record.ROOTS.update({str(work): '$WORK', str(args.out): '$OUT', str(args.bin_dir): '$BIN',
                         str(REPO): '.'})
    record.SECRETS[env.password] = '$PASSWORD'
    registries.prepare(env)
    results = Results()
    results.meta = {'runs': args.runs, 'long_runs': args.long_runs, 'only': args.only,
                    'machine': machine.describe(), 'versions': machine.versions(env),
                    'command': ' '.join(sys.argv), 'seconds': {}}
    bench = Bench(env, results, args.runs, args.long_runs, args.out / 'images', REPO)
    t_all = time.perf_counter()
    for key in [k for k in SECTIONS if k in args.only]:
        bench.section = key
        print(f'bench: section {key}: {SECTIONS[key].TITLE}', flush=True)
        t0 = time.perf_counter()
        SECTIONS[key].run(bench)
        results.meta['seconds'][key] = round(time.perf_counter() - t0, 1)
        print(f'bench: section {key} took {results.meta["seconds"][key]} s', flush=True)
        results.meta.update(commands=record.COMMANDS, configs=record.CONFIGS)
        results.save(args.out / 'results.json')
    results.meta['seconds']['all'] = round(time.perf_counter() - t_all, 1)
    results.meta['machine']['load average at end'] = machine.load_average()
    started = os.environ.get('SPECULUM_BENCH_STARTED', '')
    if started.isdigit():
        results.meta['seconds']['make bench'] = round(time.time() - int(started), 1)
    results.save(args.out / 'results.json')
    shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = Results.load(args.out / 'results.json')
    else:
        check_tools(args)
        signal.signal(signal.SIGTERM, on_signal)
        atexit.register(proc.stop_all)
        try:
            results = measure(args)
        finally:
            proc.stop_all()
    written = report.write(results, doc_dir(args, results))
    print(f'bench: wrote {", ".join(str(p) for p in written)}')


if __name__ == '__main__':
    main()
