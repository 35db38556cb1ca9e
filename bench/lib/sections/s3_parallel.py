"""Section 3: 4 and 16 skopeo pushes of the same 3-layer image side by side
into one fresh registry, all into the same repository under different tags
(bench/par:t0, t1, ...), so they race for the same blobs and the same
repository links. Wall time until the last push ends, pushes that failed,
and the bytes on disk afterwards (du -sb of the storage) against the image's
size: close to 1x means each blob was stored once.
"""

from __future__ import annotations

from .. import images, skopeo
from ..context import Bench
from ..images import Image
from ..proc import run as run_cmd
from ..registries import ALL, Registry

TITLE = 'Parallel skopeo pushes'
SECTION = '3'
WIDTHS = (4, 16)


def disk_bytes(reg: Registry) -> int:
    return int(run_cmd(['du', '-sb', reg.storage], timeout=120).stdout.split()[0])


def measure(bench: Bench, reg: Registry, image: Image, width: int, run: int) -> None:
    add = bench.results.add
    case = f'{width} parallel pushes'
    commands = [skopeo.command(image.ref(), skopeo.ref(reg, f'bench/par:t{i}'), dst_reg=reg)
                for i in range(width)]
    reg.server.cpu_lap()
    seconds, failed = skopeo.parallel(commands)
    add(SECTION, case, reg.kind, 'seconds', seconds, run)
    add(SECTION, case, reg.kind, 'cpu_s', reg.server.cpu_lap(), run)
    add(SECTION, case, reg.kind, 'failed', failed, run)
    add(SECTION, case, reg.kind, 'disk_x', disk_bytes(reg) / image.bytes, run)
    add(SECTION, case, reg.kind, 'peak_rss_mb', reg.server.hwm_kb() / 1024, run)


def run(bench: Bench) -> None:
    image = images.three_layer(bench.data)
    bench.results.note(SECTION, f'Image: {image.bytes / 1e6:.0f} MB in {image.layers} layers '
                                'plus config and manifest; disk ×1 is the image stored once.')
    bench.results.note(SECTION, f'{bench.long_runs} run(s) (--long-runs).')
    for r in range(bench.long_runs):
        for width in WIDTHS:
            for kind in ALL:
                with bench.registry(kind) as reg:
                    measure(bench, reg, image, width, r)
