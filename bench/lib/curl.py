"""Blob transfers with curl: a client that is not the bottleneck.

Every request runs as its own curl process; the time of an operation is the
sum of curl's `time_total` over its requests (connect and TLS handshake
included, process start not). `Expect: 100-continue` is switched off, so no
request waits for a server that does not answer it.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .proc import BenchError, run
from .registries import Registry

TIMEOUT = 300
# After the response headers (-D -), which end with an empty line.
WRITE = '%{http_code} %{time_total} %{size_upload} %{size_download} %{http_version}'


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    seconds: float
    uploaded: int
    downloaded: int
    http_version: str


def request(reg: Registry, auth: str, method: str, url: str, args: list | None = None) -> Reply:
    """One request; the body goes to /dev/null, headers and figures are parsed."""
    cmd = ['curl', '-sS', '-X', method, '-H', f'Authorization: {auth}', '-H', 'Expect:',
           '-D', '-', '-o', '/dev/null', '-w', WRITE, *(args or []), url]
    if reg.tls:
        cmd[1:1] = ['--cacert', str(reg.ca)]
    out = run(cmd, TIMEOUT).stdout
    head, _, figures = out.rstrip('\n').rpartition('\n')
    code, seconds, up, down, version = figures.split()
    headers = {}
    for line in head.splitlines():
        name, sep, value = line.partition(':')
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Reply(int(code), headers, float(seconds), int(float(up)), int(float(down)), version)


def expect(reply: Reply, status: int, what: str) -> Reply:
    if reply.status != status:
        raise BenchError(f'{what}: HTTP {reply.status}, wanted {status}')
    return reply


def with_digest(location: str, digest: str) -> str:
    sep = '&' if '?' in location else '?'
    return f'{location}{sep}digest={urllib.parse.quote(digest)}'


def start_upload(reg: Registry, auth: str, repo: str) -> tuple[str, float]:
    r = expect(request(reg, auth, 'POST', f'{reg.base}/v2/{repo}/blobs/uploads/',
                       ['--data-binary', '']), 202, 'POST upload')
    return urllib.parse.urljoin(reg.base, r.headers['location']), r.seconds


def monolithic_put(reg: Registry, auth: str, repo: str, path: Path, digest: str) -> tuple[float, str]:
    """POST, then PUT ?digest= with the whole body: (seconds, HTTP version)."""
    location, t_post = start_upload(reg, auth, repo)
    r = expect(request(reg, auth, 'PUT', with_digest(location, digest),
                       ['-T', path, '-H', 'Content-Type: application/octet-stream']), 201, 'PUT blob')
    return t_post + r.seconds, r.http_version


def chunked_upload(reg: Registry, auth: str, repo: str, chunks: list[Path], digest: str) -> float:
    """POST, one PATCH with Content-Range per chunk, then an empty PUT ?digest=."""
    location, total = start_upload(reg, auth, repo)
    offset = 0
    for chunk in chunks:
        size = chunk.stat().st_size
        r = expect(request(reg, auth, 'PATCH', location,
                           ['-T', chunk, '-H', 'Content-Type: application/octet-stream',
                            '-H', f'Content-Range: {offset}-{offset + size - 1}']), 202, 'PATCH chunk')
        total += r.seconds
        offset += size
        location = urllib.parse.urljoin(reg.base, r.headers['location'])
    r = expect(request(reg, auth, 'PUT', with_digest(location, digest),
                       ['--data-binary', '', '-H', 'Content-Type: application/octet-stream']),
               201, 'PUT after chunks')
    return total + r.seconds


def get_blob(reg: Registry, auth: str, repo: str, digest: str, size: int) -> float:
    """GET the blob into /dev/null (following redirects): seconds."""
    r = expect(request(reg, auth, 'GET', f'{reg.base}/v2/{repo}/blobs/{digest}', ['-L']),
               200, 'GET blob')
    if r.downloaded != size:
        raise BenchError(f'GET blob: {r.downloaded} bytes, wanted {size}')
    return r.seconds
