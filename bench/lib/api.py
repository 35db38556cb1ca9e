"""Just enough of the distribution API from Python: the auth challenge, the
token request, `/metrics`, and the readiness probe. Blob data moves with
curl (lib/blobs.py), never through Python."""

from __future__ import annotations

import base64
import json
import http.client
import re
import socket
import ssl
import urllib.parse
from pathlib import Path

from .proc import BenchError


def ssl_context(ca: Path | None) -> ssl.SSLContext:
    """A context that trusts `ca` (None: verification off, for probes only)."""
    if ca is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(ca))


def request(url: str, ca: Path | None, method: str = 'GET', headers: dict | None = None,
            timeout: float = 30) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request; (status, headers, body) whatever the status."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == 'https':
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout,
                                           context=ssl_context(ca))
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = u.path + (f'?{u.query}' if u.query else '')
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    except OSError as err:
        raise BenchError(f'{method} {url}: {err}') from err
    finally:
        conn.close()


def basic(user: str, password: str) -> str:
    return 'Basic ' + base64.b64encode(f'{user}:{password}'.encode()).decode()


def challenge(base: str, ca: Path | None) -> tuple[str, dict]:
    """The scheme and parameters of `GET /v2/`'s WWW-Authenticate ('' if 200)."""
    status, headers, _ = request(f'{base}/v2/', ca)
    if status == 200:
        return '', {}
    value = headers.get('WWW-Authenticate', '')
    scheme = value.split(' ', 1)[0].lower()
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', value))


def token_url(base: str, ca: Path | None, scope: str) -> str | None:
    """The token endpoint's URL for `scope`, or None if the registry has none."""
    scheme, params = challenge(base, ca)
    if scheme != 'bearer':
        return None
    query = {'scope': scope}
    if params.get('service'):
        query['service'] = params['service']
    return f'{params["realm"]}?{urllib.parse.urlencode(query)}'


def auth_header(base: str, ca: Path | None, user: str, password: str, scope: str) -> str:
    """The Authorization value for `scope`: a bearer token where the registry
    challenges with Bearer (fetched with Basic credentials), else Basic."""
    url = token_url(base, ca, scope)
    if url is None:
        return basic(user, password)
    status, _, body = request(url, ca, headers={'Authorization': basic(user, password)})
    if status != 200:
        raise BenchError(f'token request {url}: {status} {body[:200]!r}')
    doc = json.loads(body)
    return 'Bearer ' + (doc.get('token') or doc['access_token'])


def metrics(base: str, ca: Path | None) -> dict[str, float]:
    """A speculum registry's request count and request body bytes so far."""
    status, _, body = request(f'{base}/metrics', ca)
    if status != 200:
        raise BenchError(f'{base}/metrics: {status}')
    out = {'requests': 0.0, 'bytes_in': 0.0, 'bytes_out': 0.0}
    for line in body.decode().splitlines():
        if line.startswith('speculum_http_requests_total{') and 'route="metrics"' not in line:
            out['requests'] += float(line.rsplit(' ', 1)[1])
        elif line.startswith('speculum_http_request_bytes_total '):
            out['bytes_in'] = float(line.rsplit(' ', 1)[1])
        elif line.startswith('speculum_http_response_bytes_total '):
            out['bytes_out'] = float(line.rsplit(' ', 1)[1])
    return out


def probe(port: int, tls: bool, timeout: float = 0.5) -> bool:
    """True once `GET /v2/` on 127.0.0.1:port gets an HTTP status line back
    (any status; TLS without verification)."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=timeout) as raw:
            sock = ssl_context(None).wrap_socket(raw) if tls else raw
            sock.sendall(b'GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
            return sock.recv(12).startswith(b'HTTP/1.')
    except OSError:
        return False
