"""Section 6: start until ready. Each registry is started on a free port
chosen beforehand and empty storage, and probed from the moment its process
is spawned: a TCP connect, a TLS handshake (no verification) and `GET /v2/`
every 2 ms, until any HTTP status comes back. 5 starts per registry (more
with --runs above 5), interleaved; the median is reported.
"""

from __future__ import annotations

from ..context import Bench
from ..registries import ALL, free_port

TITLE = 'Start until /v2/ answers over TLS'
SECTION = '6'
STARTS = 5


def run(bench: Bench) -> None:
    starts = max(STARTS, bench.runs)
    bench.results.note(SECTION, f'{starts} starts per registry.')
    for r in range(starts):
        for kind in ALL:
            with bench.registry(kind, port=free_port()) as reg:
                bench.results.add(SECTION, 'start until /v2/ answers', kind, 'ms',
                                  reg.ready_s * 1000, r)
