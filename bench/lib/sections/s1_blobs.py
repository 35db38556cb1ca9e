"""Section 1: server-bound blob transfers with curl, over TLS and plain HTTP.

Per run and registry (interleaved), a fresh registry takes a 200 MB
monolithic upload (POST, then PUT ?digest= with the body), a 200 MB chunked
upload of other data (POST, 10 PATCHes of 20 MB with Content-Range, empty
PUT), and serves the first blob back (GET to /dev/null). The server's CPU
seconds (utime + stime) are read around each operation.
"""

from __future__ import annotations

from .. import curl, images
from ..context import Bench
from ..registries import ALL, HTTP_CAPABLE, Registry

TITLE = 'Blob transfers with curl (server-bound)'
SECTION = '1'
SIZE = 200 * 1000 * 1000
CHUNKS = 10
REPO = 'bench/blob'
SCOPE = f'repository:{REPO}:pull,push'
PUT, PATCH, GET = '200 MB monolithic PUT', '200 MB chunked PATCH (10 × 20 MB)', '200 MB blob GET'


def case(name: str, tls: bool) -> str:
    return f'{name}, {"TLS" if tls else "HTTP"}'


def measure(bench: Bench, reg: Registry, run: int, whole: images.Blob, chunked: images.Blob) -> None:
    add = bench.results.add
    auth = reg.auth(SCOPE)
    reg.server.cpu_lap()
    seconds, version = curl.monolithic_put(reg, auth, REPO, whole.path, whole.digest)
    used = reg.server.cpu_lap()
    add(SECTION, case(PUT, reg.tls), reg.kind, 'seconds', seconds, run)
    add(SECTION, case(PUT, reg.tls), reg.kind, 'cpu_s', used, run)
    bench.results.note(SECTION, f'{reg.kind} over {"TLS" if reg.tls else "HTTP"}: curl spoke HTTP/{version}.')

    seconds = curl.chunked_upload(reg, auth, REPO, chunked.chunks, chunked.digest)
    used = reg.server.cpu_lap()
    add(SECTION, case(PATCH, reg.tls), reg.kind, 'seconds', seconds, run)
    add(SECTION, case(PATCH, reg.tls), reg.kind, 'cpu_s', used, run)

    seconds = curl.get_blob(reg, auth, REPO, whole.digest, whole.size)
    used = reg.server.cpu_lap()
    add(SECTION, case(GET, reg.tls), reg.kind, 'seconds', seconds, run)
    add(SECTION, case(GET, reg.tls), reg.kind, 'GB/s', whole.size / seconds / 1e9, run)
    add(SECTION, case(GET, reg.tls), reg.kind, 'cpu_s', used, run)


def run(bench: Bench) -> None:
    whole = images.raw_blob(bench.data, 'blob-put', SIZE, 1)
    chunked = images.raw_blob(bench.data, 'blob-patch', SIZE, CHUNKS)
    for r in range(bench.runs):
        for tls in (True, False):
            for kind in ALL if tls else HTTP_CAPABLE:
                with bench.registry(kind, tls) as reg:
                    measure(bench, reg, r, whole, chunked)
