"""Section 4: small requests under wrk over TLS (`-t 2 -c 32 -d 2s --latency`;
HEAD under `ab -k -i -c 32 -t 2`, as wrk 4.1 cannot read bodiless HEAD answers).

Per run and registry (interleaved), a fresh registry holds one small image
(bench/small:v1, pushed with skopeo); wrk then loads `GET /v2/`, a manifest
HEAD and a manifest GET by tag (each with the Authorization a client would
send: a pull token where the registry uses tokens, Basic for distribution's
htpasswd), and the token endpoint itself (Basic credentials, scope
pull,push, so the password is checked). wrk and the server share the two
cores: figures are for this machine as a whole, not the server alone.
"""

from __future__ import annotations

from .. import api, images, skopeo, wrk
from ..context import Bench
from ..proc import BenchError
from .. import registries
from ..registries import ALL, DISTRIBUTION, Registry

TITLE = 'Small requests under wrk'
SECTION = '4'
REPO = 'bench/small'
ACCEPT = ('Accept: application/vnd.oci.image.manifest.v1+json, '
          'application/vnd.docker.distribution.manifest.v2+json')
V2, HEAD, GET, TOKEN = 'GET /v2/', 'manifest HEAD by tag', 'manifest GET by tag', 'token request'
CASES = (V2, HEAD, GET, TOKEN)
NO_AUTH = 'distribution, no auth'


def targets(reg: Registry) -> dict[str, tuple[str, list[str], bool]]:
    """case -> (url, headers, is HEAD)."""
    pull = f'Authorization: {reg.auth(f"repository:{REPO}:pull")}'
    manifest = f'{reg.base}/v2/{REPO}/manifests/v1'
    found = {V2: (f'{reg.base}/v2/', [pull], False),
             HEAD: (manifest, [pull, ACCEPT], True),
             GET: (manifest, [pull, ACCEPT], False)}
    token = api.token_url(reg.base, reg.ca, f'repository:{REPO}:pull,push')
    if token:
        found[TOKEN] = (token, [f'Authorization: {api.basic(reg.user, reg.password)}'], False)
    return found


def measure(bench: Bench, reg: Registry, image: images.Image, run: int,
            label: str = '', cases: tuple[str, ...] = CASES) -> None:
    skopeo.copy(image.ref(), skopeo.ref(reg, f'{REPO}:v1'), dst_reg=reg)
    csv = bench.env.work / 'ab.csv'
    for case, (url, headers, head) in targets(reg).items():
        if case not in cases:
            continue
        result = wrk.ab_head(url, headers, csv) if head else wrk.load(url, headers)
        if result.bad or result.requests < 10:
            raise BenchError(f'{reg.kind} {case}: {result.bad} of {result.requests} requests failed')
        for metric in ('rps', 'p50_ms', 'p99_ms'):
            bench.results.add(SECTION, case, label or reg.kind, metric, getattr(result, metric), run)


def run(bench: Bench) -> None:
    image = images.changes(bench.data)
    bench.results.note(SECTION, f'{HEAD}: ab (-k -i -c {wrk.CONNECTIONS} -t {wrk.SECONDS}), one '
                                'thread: wrk 4.1 waits for the body a HEAD answer announces.')
    bench.results.note(SECTION, f'{DISTRIBUTION} with htpasswd has no token endpoint: n/a; it checks '
                                'the bcrypt hash of the Basic credentials on every request; '
                                f'"{NO_AUTH}" (manifest GET only) shows it without that cost, '
                                'for reference.')
    for r in range(bench.runs):
        for kind in ALL:
            with bench.registry(kind) as reg:
                measure(bench, reg, image, r)
        reg = registries.start_distribution(bench.env, auth=False)
        try:
            measure(bench, reg, image, r, NO_AUTH, (GET,))
        finally:
            bench.stop(reg)
