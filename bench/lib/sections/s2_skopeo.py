"""Section 2: client level, `skopeo copy` push and pull over TLS.

For each image, run and registry (interleaved; zuul-registry only with the
3-layer image): a fresh registry on empty storage (so every blob uploads), a
push from the OCI layout, then a pull into an empty OCI layout whose
manifest digest must equal the source's. The server's CPU seconds are read
around the push and the pull.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from .. import images, skopeo
from ..context import Bench
from ..images import Image
from ..proc import BenchError
from ..registries import ALL, DISTRIBUTION, SPECULUM, ZUUL, Registry

TITLE = 'skopeo push and pull'
SECTION = '2'


def measure(bench: Bench, reg: Registry, image: Image, label: str, run: int,
            section: str = SECTION, timeout: float = skopeo.TIMEOUT,
            after_push: Callable[[], None] | None = None) -> None:
    """Push `image` into `reg`, then pull it back into an empty OCI layout
    and check its manifest digest; record wall time and server CPU of each
    under `push <label>` and `pull <label>` of `section` (section 9 runs the
    same steps on object stores). `after_push` checks where the push went."""
    add = bench.results.add
    target = skopeo.ref(reg, 'bench/img:v1')
    reg.server.cpu_lap()
    seconds = skopeo.copy(image.ref(), target, dst_reg=reg, timeout=timeout)
    add(section, f'push {label}', reg.kind, 'seconds', seconds, run)
    add(section, f'push {label}', reg.kind, 'cpu_s', reg.server.cpu_lap(), run)
    if after_push:
        after_push()
    back = bench.env.work / 'pulled'
    shutil.rmtree(back, ignore_errors=True)
    seconds = skopeo.copy(target, f'oci:{back}:v1', src_reg=reg, timeout=timeout)
    add(section, f'pull {label}', reg.kind, 'seconds', seconds, run)
    add(section, f'pull {label}', reg.kind, 'cpu_s', reg.server.cpu_lap(), run)
    if skopeo.layout_digest(back) != image.manifest_digest():
        raise BenchError(f'{reg.kind}: the pulled manifest differs from the pushed one')
    shutil.rmtree(back, ignore_errors=True)


def run(bench: Bench) -> None:
    small = images.three_layer(bench.data)
    big = images.one_gb(bench.data)
    plan = [(small, f'3-layer {small.bytes / 1e6:.0f} MB', bench.runs, ALL),
            (big, f'1-layer {big.bytes / 1e9:.2f} GB', bench.long_runs, (SPECULUM, DISTRIBUTION))]
    for image, label, runs, kinds in plan:
        bench.results.note(SECTION, f'{label}: {runs} run(s).')
        for r in range(runs):
            for kind in kinds:
                with bench.registry(kind) as reg:
                    measure(bench, reg, image, label, r)
    bench.results.note(SECTION, f'{ZUUL} is left out of the 1 GB case to keep `make bench` within '
                                '15 minutes: in development it took 31–41 s to take that push '
                                '(3–4× the others) and 8–10 s to serve it back.')
