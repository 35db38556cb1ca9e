"""Section 8: a buildset's start until its first consumer can pull, with 1, 5
and 20 images of changes ahead in an intermediate registry.

The intermediate registry is a `speculum-registry serve` (TLS, a write
user) holding 20 images of ~10 MB (two 5 MiB layers each, none shared) as
org/img<i>:<build>_latest. Each measurement starts from nothing: spawn
`speculum-registry buildset` and wait for its info file (ready), run
`speculum zuul pull-intermediate --vars FILE` with the first N artifacts in
Zuul's format (pull), then the consumer pulls the nearest change's image
with `skopeo copy` into an empty OCI layout (consumer). When the helper has
`--method` (a lazy mode), every method is measured side by side.
"""

from __future__ import annotations

import json
import re
import shutil
import time

from .. import images, record, registries, skopeo
from ..context import Bench
from ..proc import BenchError, run as run_cmd
from ..registries import Registry

TITLE = 'Intermediate registry: buildset start until the first consumer pulls'
SECTION = '8'
AHEAD = (1, 5, 20)
BUILD = '0123456789abcdef0123456789abcdef'
TIMEOUT = 600


def methods(bench: Bench) -> list[str]:
    """[''] (the default only) unless pull-intermediate has --method."""
    text = run_cmd([bench.speculum, 'zuul', 'pull-intermediate', '--help'], 30).stdout
    if '--method' not in text:
        return ['']
    listed = re.search(r'--method[^\n]*\n?[^\[]*\[possible values: ([^\]]+)\]', text)
    return [m.strip() for m in listed.group(1).split(',')] if listed else ['copy', 'lazy']


def artifacts(ir: Registry, n: int) -> list[dict]:
    return [{'name': f'org/img{i}:latest',
             'url': f'docker://{ir.host}/org/img{i}:{BUILD}_latest',
             'metadata': {'type': 'container_image', 'repository': f'org/img{i}', 'tag': 'latest'}}
            for i in range(n)]


def fill(bench: Bench, ir: Registry, image: images.Image) -> None:
    for i, tag in enumerate(image.tags):
        run_cmd([bench.speculum, 'copy', image.ref(tag), f'{ir.host}/org/img{i}:{BUILD}_latest',
                 '--dest-ca', ir.ca, '--dest-creds', f'{ir.user}:{ir.password}'], TIMEOUT)


def info(reg: Registry) -> dict:
    return {'host': '127.0.0.1', 'port': reg.port, 'username': reg.user, 'password': reg.password,
            'cert': reg.ca.read_text()}


def measure(bench: Bench, ir: Registry, image: images.Image, n: int, method: str, run: int) -> None:
    label = f'speculum ({method or "default"})'
    case = f'{n} image{"s" if n > 1 else ""} ahead'
    t0 = time.perf_counter()
    br = registries.start_speculum(bench.env)
    try:
        doc = {'buildset_registry': info(br), 'intermediate_registry': info(ir),
               'artifacts': artifacts(ir, n)}
        vars_file = bench.env.work / 'vars.json'
        vars_file.write_text(json.dumps(doc))
        shown = {k: {**v, 'password': '$PASSWORD', 'cert': '$CERT_PEM'} if 'cert' in v else v
                 for k, v in doc.items()}
        record.config('pull-intermediate --vars (json)', json.dumps(shown, indent=1))
        t1 = time.perf_counter()
        run_cmd([bench.speculum, 'zuul', 'pull-intermediate', '--vars', vars_file,
                 *(['--method', method] if method else [])], TIMEOUT)
        t2 = time.perf_counter()
        dest = bench.env.work / 'consumer'
        shutil.rmtree(dest, ignore_errors=True)
        skopeo.copy(skopeo.ref(br, f'org/img{n - 1}:latest'), f'oci:{dest}:latest', src_reg=br)
        t3 = time.perf_counter()
        if skopeo.layout_digest(dest) != image.manifest_digest(image.tags[n - 1]):
            raise BenchError(f'{case}: the consumer got another image')
    finally:
        bench.stop(br)
    for metric, value in (('ready_s', br.ready_s), ('pull_s', t2 - t1), ('consumer_s', t3 - t2),
                          ('total_s', t3 - t0)):
        bench.results.add(SECTION, case, label, metric, value, run)


def run(bench: Bench) -> None:
    image = images.changes(bench.data, max(AHEAD))
    found = methods(bench)
    bench.results.note(SECTION, 'pull-intermediate methods: ' + (
        ', '.join(found) if found != [''] else 'no --method option yet (copy only)'))
    with bench.serve() as ir:
        fill(bench, ir, image)
        for r in range(bench.runs):
            for n in AHEAD:
                for method in found:
                    measure(bench, ir, image, n, method, r)
