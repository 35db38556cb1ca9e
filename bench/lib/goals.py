"""The goals of issue 10, each computed from the medians: (goal, what was
measured, True/False, or None when its sections did not run)."""

from __future__ import annotations

from .results import Results, ratio
from .sections import s1_blobs, s3_parallel, s4_small

SPEC, DIST = 'speculum', 'distribution'


def _fmt(x: float | None, unit: str = '', digits: int = 2) -> str:
    return 'n/a' if x is None else f'{x:.{digits}f}{unit}'


def put_time(r: Results):
    def med(tls: bool, who: str) -> float | None:
        return r.median('1', s1_blobs.case(s1_blobs.PUT, tls), who, 'seconds')
    tls, http = ratio(med(True, SPEC), med(True, DIST)), ratio(med(False, SPEC), med(False, DIST))
    return (f'TLS {_fmt(tls, "×")} (HTTP {_fmt(http, "×")}) of distribution\'s time',
            None if tls is None else tls <= 0.35)


def http_get(r: Results):
    case = s1_blobs.case(s1_blobs.GET, False)
    s, d = r.median('1', case, SPEC, 'GB/s'), r.median('1', case, DIST, 'GB/s')
    return (f'{_fmt(s, " GB/s")} against {_fmt(d, " GB/s")}',
            None if s is None or d is None else s >= d)


def tls_get(r: Results):
    s = r.median('1', s1_blobs.case(s1_blobs.GET, True), SPEC, 'GB/s')
    return f'{_fmt(s, " GB/s")}', None if s is None else s >= 1.5


def push_cpu(r: Results):
    case = next((c for c in r.cases('2') if c.startswith('push 3-layer')), '')
    x = ratio(r.median('2', case, SPEC, 'cpu_s'), r.median('2', case, DIST, 'cpu_s'))
    put = s1_blobs.case(s1_blobs.PUT, True)
    y = ratio(r.median('1', put, SPEC, 'cpu_s'), r.median('1', put, DIST, 'cpu_s'))
    return (f'skopeo push of the 3-layer image: {_fmt(x, "×")} of distribution\'s CPU seconds '
            f'(200 MB curl PUT over TLS: {_fmt(y, "×")})', None if x is None else x <= 0.5)


def manifest_get(r: Results):
    x = ratio(r.median('4', s4_small.GET, SPEC, 'rps'), r.median('4', s4_small.GET, DIST, 'rps'))
    p99 = r.median('4', s4_small.GET, SPEC, 'p99_ms')
    return (f'{_fmt(x, "×", 1)} distribution\'s requests/s, p99 {_fmt(p99, " ms")}',
            None if x is None or p99 is None else x >= 5 and p99 <= 5)


def parallel(r: Results):
    case = f'{max(s3_parallel.WIDTHS)} parallel pushes'
    disk = r.maximum('3', case, SPEC, 'disk_x')
    failed = r.maximum('3', case, SPEC, 'failed')
    rss = r.maximum('3', case, SPEC, 'peak_rss_mb')
    if disk is None or rss is None:
        return 'n/a', None
    return (f'disk {disk:.3f}× the image, {failed:.0f} failed, peak RSS {rss:.1f} MB',
            disk <= 1.02 and not failed and rss <= 64)


def ready(r: Results):
    ms = r.median('6', 'start until /v2/ answers', SPEC, 'ms')
    return f'{_fmt(ms, " ms", 1)}', None if ms is None else ms <= 50


def promote(r: Results):
    case = 'promote, 1 GB image'
    n, mb = r.median('7', case, SPEC, 'requests'), r.median('7', case, SPEC, 'MB_in')
    if n is None or mb is None:
        return 'n/a', None
    return f'{n:.0f} requests, {mb * 1e6:.0f} bytes received', n <= 10 and mb < 0.01


def copy(r: Results):
    cold, warm = 'cold copy, 3-layer image', 'warm copy, 3-layer image'
    x = ratio(r.median('7', cold, 'skopeo', 'seconds'), r.median('7', cold, SPEC, 'seconds'))
    mb = r.median('7', warm, SPEC, 'MB_in')
    if x is None or mb is None:
        return 'n/a', None
    return (f'cold: {x:.2f}× as fast as skopeo; warm: {mb * 1e6:.0f} bytes received',
            x >= 2 and mb < 0.01)


GOALS = [
    ('200 MB PUT ≤ 0.35× distribution\'s time', put_time),
    ('plain-HTTP blob GET ≥ distribution\'s throughput', http_get),
    ('blob GET over TLS ≥ 1.5 GB/s', tls_get),
    ('server CPU per push ≤ 0.5× distribution\'s', push_cpu),
    ('manifest GET ≥ 5× distribution\'s requests/s with p99 ≤ 5 ms', manifest_get),
    ('16 parallel pushes: each blob stored once, peak RSS ≤ 64 MB', parallel),
    ('buildset registry ready ≤ 50 ms', ready),
    ('promote: a few requests (≤ 10) and no layer bytes', promote),
    ('speculum copy ≥ 2× skopeo cold, near-zero bytes moved warm', copy),
]


def evaluate(r: Results) -> list[tuple[str, str, bool | None]]:
    out = []
    for goal, check in GOALS:
        measured, met = check(r)
        out.append((goal, measured, met))
    return out
