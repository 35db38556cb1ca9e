"""Section 7: the helper against skopeo, between speculum buildset registries
over TLS; what the target received is read from its `/metrics` before and
after each copy (requests of every route but /metrics itself, and request
body bytes).

- cold: the 3-layer image from a source registry into a target started for
  this one copy (so skopeo's blob-info cache knows nothing about it);
- warm: the same, into a fresh target that already holds the image under
  another tag of the same repository (seeded with `speculum copy`);
- promote: in one registry holding the 1 GB image as bench/big:change_1_latest,
  `speculum promote --from change_1_latest --to latest` against
  `skopeo copy` of that tag to another tag (skopeo leaves the temporary tag;
  promote deletes it, and `speculum tag` puts it back, untimed, for the
  next run).
"""

from __future__ import annotations

import time

from .. import api, images, skopeo
from ..context import Bench
from ..proc import run as run_cmd
from ..registries import SPECULUM, Registry

TITLE = 'speculum copy and promote against skopeo'
SECTION = '7'
TIMEOUT = 600
TOOLS = ('speculum', 'skopeo')


def helper(bench: Bench, args: list[str]) -> float:
    t0 = time.perf_counter()
    run_cmd([bench.speculum, *args], TIMEOUT)
    return time.perf_counter() - t0


def speculum_copy(bench: Bench, src: Registry | None, src_ref: str, dst: Registry, dst_ref: str) -> float:
    args = ['copy', src_ref, dst_ref, '--dest-ca', dst.ca, '--dest-creds', f'{dst.user}:{dst.password}']
    if src:
        args += ['--src-ca', src.ca, '--src-creds', f'{src.user}:{src.password}']
    return helper(bench, args)


def copy_with(bench: Bench, tool: str, src: Registry, dst: Registry, name: str) -> float:
    if tool == 'speculum':
        return speculum_copy(bench, src, f'{src.host}/bench/src:v1', dst, f'{dst.host}/{name}')
    return skopeo.copy(skopeo.ref(src, 'bench/src:v1'), skopeo.ref(dst, name), src, dst)


def record(bench: Bench, case: str, tool: str, target: Registry, before: dict, seconds: float,
           run: int) -> None:
    after = api.metrics(target.base, target.ca)
    add = bench.results.add
    add(SECTION, case, tool, 'seconds', seconds, run)
    add(SECTION, case, tool, 'requests', after['requests'] - before['requests'], run)
    add(SECTION, case, tool, 'MB_in', (after['bytes_in'] - before['bytes_in']) / 1e6, run)


def copies(bench: Bench, src: Registry, run: int) -> None:
    for warm in (False, True):
        case = f'{"warm" if warm else "cold"} copy, 3-layer image'
        for tool in TOOLS:
            with bench.registry(SPECULUM) as target:
                if warm:
                    speculum_copy(bench, src, f'{src.host}/bench/src:v1', target,
                                  f'{target.host}/bench/app:seed')
                before = api.metrics(target.base, target.ca)
                seconds = copy_with(bench, tool, src, target, 'bench/app:v1')
                record(bench, case, tool, target, before, seconds, run)


def promotes(bench: Bench, reg: Registry, runs: int) -> None:
    case = 'promote, 1 GB image'
    repo = f'{reg.host}/bench/big'
    access = ['--ca', reg.ca, '--creds', f'{reg.user}:{reg.password}']
    for r in range(runs):
        before = api.metrics(reg.base, reg.ca)
        seconds = skopeo.copy(skopeo.ref(reg, 'bench/big:change_1_latest'),
                              skopeo.ref(reg, f'bench/big:skopeo-{r}'), reg, reg)
        record(bench, case, 'skopeo', reg, before, seconds, r)
        before = api.metrics(reg.base, reg.ca)
        seconds = helper(bench, ['promote', repo, '--from', 'change_1_latest', '--to', 'latest', *access])
        record(bench, case, 'speculum', reg, before, seconds, r)
        helper(bench, ['tag', f'{repo}:latest', 'change_1_latest', *access])


def run(bench: Bench) -> None:
    small = images.three_layer(bench.data)
    big = images.one_gb(bench.data)
    with bench.registry(SPECULUM) as src:
        speculum_copy(bench, None, small.ref(), src, f'{src.host}/bench/src:v1')
        for r in range(bench.runs):
            copies(bench, src, r)
    with bench.registry(SPECULUM) as reg:
        speculum_copy(bench, None, big.ref(), reg, f'{reg.host}/bench/big:change_1_latest')
        promotes(bench, reg, bench.runs)
    bench.results.note(SECTION, 'Registry column: the tool. Requests and MB received: the target '
                                "speculum registry's /metrics (speculum_http_requests_total, "
                                'speculum_http_request_bytes_total), read before and after.')
